//! The few STUN messages fog sends and reads (RFC 5389 Binding, RFC 5780 CHANGE-REQUEST), on top
//! of `stun-rs`, shared by the NAT probe and the node's socket.

use std::net::SocketAddr;

use stun_rs::attributes::discovery::{ChangeRequest, ChangeRequestFlags, OtherAddress};
use stun_rs::attributes::stun::{MappedAddress, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{
    MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessageBuilder, TransactionId,
};

/// The magic cookie every RFC 5389 message carries at bytes 4..8.
pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// True when `datagram` has the shape of a STUN message (so it is not QUIC or a check).
pub fn looks_like_stun(datagram: &[u8]) -> bool {
    datagram.len() >= 20 && datagram[0] & 0xc0 == 0 && datagram[4..8] == MAGIC_COOKIE
}

/// A Binding request with transaction id `id`, asking for an answer from the other IP and/or
/// port when `change` is `Some((ip, port))`.
pub fn binding_request(id: &[u8; 12], change: Option<(bool, bool)>) -> Vec<u8> {
    let mut builder = StunMessageBuilder::new(BINDING, MessageClass::Request)
        .with_transaction_id(TransactionId::from(id));
    if let Some((ip, port)) = change {
        let mut flags = enumflags2::BitFlags::empty();
        if ip {
            flags |= ChangeRequestFlags::ChangeIp;
        }
        if port {
            flags |= ChangeRequestFlags::ChangePort;
        }
        builder = builder.with_attribute(ChangeRequest::new(Some(flags)));
    }
    let mut buf = vec![0u8; 64];
    let len = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, &builder.build())
        .expect("a binding request fits in 64 bytes");
    buf.truncate(len);
    buf
}

/// A Binding message as fog reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// A request (ours coming back is hairpinning).
    Request {
        /// Its transaction id.
        id: [u8; 12],
    },
    /// A success answer.
    Answer {
        /// Its transaction id.
        id: [u8; 12],
        /// Our address as the server saw it.
        mapped: SocketAddr,
        /// The server's OTHER-ADDRESS (RFC 5780).
        other: Option<SocketAddr>,
    },
}

/// Reads a Binding request or success answer; `None` for anything else.
pub fn parse_binding(datagram: &[u8]) -> Option<Binding> {
    let (message, _) = MessageDecoderBuilder::default()
        .build()
        .decode(datagram)
        .ok()?;
    if message.method() != BINDING {
        return None;
    }
    let id = *message.transaction_id().as_bytes();
    match message.class() {
        MessageClass::Request => Some(Binding::Request { id }),
        MessageClass::SuccessResponse => {
            let mapped = message
                .get::<XorMappedAddress>()
                .and_then(|a| a.as_xor_mapped_address().ok())
                .map(|a| *a.socket_address())
                .or_else(|| {
                    message
                        .get::<MappedAddress>()
                        .and_then(|a| a.as_mapped_address().ok())
                        .map(|a| *a.socket_address())
                })?;
            let other = message
                .get::<OtherAddress>()
                .and_then(|a| a.as_other_address().ok())
                .map(|a| *a.socket_address());
            Some(Binding::Answer { id, mapped, other })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_looks_like_stun_and_parses_back() {
        let request = binding_request(&[7; 12], Some((true, false)));
        assert!(looks_like_stun(&request));
        assert_eq!(
            parse_binding(&request),
            Some(Binding::Request { id: [7; 12] })
        );
    }

    #[test]
    fn quic_and_checks_do_not_look_like_stun() {
        assert!(!looks_like_stun(&[0x40; 40]));
        assert!(!looks_like_stun(&[0xc0; 40]));
        let mut check = [0u8; 52];
        check[0] = 0x02;
        assert!(!looks_like_stun(&check));
        assert_eq!(parse_binding(&[0xff; 30]), None);
    }
}
