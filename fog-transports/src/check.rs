//! Connectivity-check packets: the wire format, sans IO.
//!
//! A check is 52 bytes: a 4-byte magic (`02 'f' 'o' 'g'`), a kind byte, a flags byte, two zero
//! bytes, the 16-byte session id, a 12-byte transaction id, and a 16-byte HMAC-SHA256 tag over the first 36
//! bytes keyed with the session secret. Only peers that learned the secret through the signal
//! server can make a valid one, and a reply is exactly as large as its request, so checks cannot
//! be used to amplify traffic.

use ring::hmac;

/// Size of every check packet.
pub const CHECK_LEN: usize = 52;
const MAGIC: [u8; 4] = [0x02, b'f', b'o', b'g'];
const SIGNED_LEN: usize = 36;
/// Flag: the request left through the sender's relay allocation, so the address it comes from
/// is a relayed one. The receiver may not have the sender's relay candidate yet (it trickles
/// in, or the allocation was made after the connect), and would take that address for a
/// direct pair.
const FLAG_RELAYED: u8 = 1;

/// Request or reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// "Can you hear me?"
    Request,
    /// "Yes."
    Reply,
}

/// A check packet before its tag is verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckPacket {
    /// Request or reply.
    pub kind: CheckKind,
    /// The session it belongs to.
    pub session: [u8; 16],
    /// Pairs a reply with its request.
    pub txid: [u8; 12],
    /// Sent through the sender's relay allocation (see [`encode_relayed`]).
    pub relayed: bool,
    tag: [u8; 16],
    signed: [u8; SIGNED_LEN],
}

/// True when `datagram` has the shape of a check (magic and length), so the socket should not
/// hand it to QUIC.
pub fn looks_like_check(datagram: &[u8]) -> bool {
    datagram.len() == CHECK_LEN && datagram[..4] == MAGIC
}

fn tag(secret: &[u8; 32], signed: &[u8]) -> [u8; 16] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let full = hmac::sign(&key, signed);
    full.as_ref()[..16]
        .try_into()
        .expect("HMAC-SHA256 is 32 bytes")
}

/// Builds a check packet.
pub fn encode(
    kind: CheckKind,
    session: &[u8; 16],
    txid: &[u8; 12],
    secret: &[u8; 32],
) -> [u8; CHECK_LEN] {
    encode_with(kind, 0, session, txid, secret)
}

/// Builds a check packet that goes out through the sender's relay allocation: the flag is
/// under the tag, so only the session's peer can set it.
pub fn encode_relayed(
    kind: CheckKind,
    session: &[u8; 16],
    txid: &[u8; 12],
    secret: &[u8; 32],
) -> [u8; CHECK_LEN] {
    encode_with(kind, FLAG_RELAYED, session, txid, secret)
}

fn encode_with(
    kind: CheckKind,
    flags: u8,
    session: &[u8; 16],
    txid: &[u8; 12],
    secret: &[u8; 32],
) -> [u8; CHECK_LEN] {
    let mut packet = [0u8; CHECK_LEN];
    packet[..4].copy_from_slice(&MAGIC);
    packet[4] = match kind {
        CheckKind::Request => 1,
        CheckKind::Reply => 2,
    };
    packet[5] = flags;
    packet[8..24].copy_from_slice(session);
    packet[24..36].copy_from_slice(txid);
    let tag = tag(secret, &packet[..SIGNED_LEN]);
    packet[SIGNED_LEN..].copy_from_slice(&tag);
    packet
}

/// Parses a check packet; `None` when it is not one.
pub fn decode(datagram: &[u8]) -> Option<CheckPacket> {
    if !looks_like_check(datagram) || datagram[5] & !FLAG_RELAYED != 0 || datagram[6..8] != [0, 0] {
        return None;
    }
    let kind = match datagram[4] {
        1 => CheckKind::Request,
        2 => CheckKind::Reply,
        _ => return None,
    };
    Some(CheckPacket {
        kind,
        session: datagram[8..24].try_into().ok()?,
        txid: datagram[24..36].try_into().ok()?,
        relayed: datagram[5] & FLAG_RELAYED != 0,
        tag: datagram[SIGNED_LEN..].try_into().ok()?,
        signed: datagram[..SIGNED_LEN].try_into().ok()?,
    })
}

impl CheckPacket {
    /// True when the tag was made with `secret` (constant-time comparison).
    pub fn verify(&self, secret: &[u8; 32]) -> bool {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let full = hmac::sign(&key, &self.signed);
        ring_constant_time_eq(&full.as_ref()[..16], &self.tag)
    }
}

fn ring_constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: [u8; 16] = [7; 16];
    const SECRET: [u8; 32] = [9; 32];

    #[test]
    fn a_check_round_trips_and_verifies() {
        let packet = encode(CheckKind::Request, &SESSION, &[1; 12], &SECRET);
        let parsed = decode(&packet).unwrap();
        assert_eq!(parsed.kind, CheckKind::Request);
        assert_eq!(parsed.session, SESSION);
        assert_eq!(parsed.txid, [1; 12]);
        assert!(parsed.verify(&SECRET));
        assert!(!parsed.verify(&[8; 32]));
    }

    #[test]
    fn a_tampered_check_does_not_verify() {
        let mut packet = encode(CheckKind::Reply, &SESSION, &[1; 12], &SECRET);
        packet[30] ^= 1;
        assert!(!decode(&packet).unwrap().verify(&SECRET));
        let mut packet = encode(CheckKind::Reply, &SESSION, &[1; 12], &SECRET);
        packet[4] = 1;
        assert!(!decode(&packet).unwrap().verify(&SECRET));
    }

    #[test]
    fn other_datagrams_are_not_checks() {
        assert!(decode(&[0x40; CHECK_LEN]).is_none());
        assert!(decode(&[]).is_none());
        let packet = encode(CheckKind::Request, &SESSION, &[1; 12], &SECRET);
        assert!(decode(&packet[..CHECK_LEN - 1]).is_none());
        let mut bad_kind = packet;
        bad_kind[4] = 3;
        assert!(decode(&bad_kind).is_none());
    }

    #[test]
    fn the_relayed_flag_is_read_and_signed() {
        let packet = encode_relayed(CheckKind::Request, &SESSION, &[1; 12], &SECRET);
        let parsed = decode(&packet).unwrap();
        assert!(parsed.relayed);
        assert!(parsed.verify(&SECRET));
        assert!(
            !decode(&encode(CheckKind::Request, &SESSION, &[1; 12], &SECRET))
                .unwrap()
                .relayed
        );
        // Cleared on the way (a third party hiding the relay): the tag no longer matches.
        let mut stripped = packet;
        stripped[5] = 0;
        assert!(!decode(&stripped).unwrap().verify(&SECRET));
        // Unknown flags are not checks.
        let mut unknown = packet;
        unknown[5] = 2;
        assert!(decode(&unknown).is_none());
    }

    #[test]
    fn replies_are_no_larger_than_requests() {
        let request = encode(CheckKind::Request, &SESSION, &[1; 12], &SECRET);
        let reply = encode(CheckKind::Reply, &SESSION, &[1; 12], &SECRET);
        assert_eq!(request.len(), reply.len());
    }
}
