//! The gate: the listening socket as the TURN engine sees it, screening requests before the
//! engine reads them.
//!
//! The `turn` crate's request handler cannot be extended: it answers bad credentials with 400
//! instead of 401, has no allocation quota (RFC 8656 §7.2 step 7 is a comment there) and grants
//! any lifetime up to an hour. It reads every datagram through the `Conn` it is given, one
//! request at a time, so that `Conn` is the one place to stand in front of it. The gate answers
//! itself, and the engine never sees the request, when:
//!
//! * the username is malformed or expired, or MESSAGE-INTEGRITY does not check: 401, with the
//!   realm and the client's nonce;
//! * the 5-tuple's allocation belongs to another node: 441 (Wrong Credentials);
//! * a Refresh, CreatePermission or ChannelBind comes for a 5-tuple without an allocation: 437
//!   (Allocation Mismatch), which the engine never sends (it drops such requests silently);
//! * an Allocate would take the node over its allocation quota: 486 (Allocation Quota Reached);
//! * a CreatePermission or ChannelBind names a peer the relay must not reach (loopback, the
//!   relay's own IP, unspecified, multicast): 403 (Forbidden).
//!
//! It drops unauthenticated requests beyond [`CHALLENGES_PER_SEC`](super::CHALLENGES_PER_SEC):
//! the engine remembers the nonce of every 401 it sends.
//!
//! It rewrites the LIFETIME of an authenticated Allocate or Refresh that asks for more than the
//! allocation has left (re-signing the request with the user's key), so the engine grants and
//! reports the shortened lifetime. It hands an accepted Allocate's quota reservation to the relay
//! address generator through a slot: the engine creates the relayed socket while handling that
//! very request, before it reads the next one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fog_core::PeerId;
use stun::agent::TransactionId;
use stun::attributes::{
    RawAttribute, ATTR_FINGERPRINT, ATTR_LIFETIME, ATTR_MESSAGE_INTEGRITY, ATTR_NONCE, ATTR_REALM,
    ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS,
};
use stun::error_code::{
    ErrorCode, ErrorCodeAttribute, CODE_ALLOC_MISMATCH, CODE_ALLOC_QUOTA_REACHED, CODE_FORBIDDEN,
    CODE_UNAUTHORIZED, CODE_WRONG_CREDENTIALS,
};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    Message, MessageType, Setter, CLASS_ERROR_RESPONSE, CLASS_REQUEST, MAGIC_COOKIE,
    METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH,
};
use stun::textattrs::TextAttribute;
use tokio::sync::watch;
use turn::proto::lifetime::Lifetime;
use webrtc_util::Conn;

use super::credentials::{password_for, unix_now};
use super::quota::{clamp_lifetime, ClientKey, Transport};
use super::Shared;

/// An accepted Allocate's claim on its node's quota, waiting for the relay address generator.
/// Dropped unused (the engine refused the request for another reason), it gives the claim back.
pub(crate) struct Reservation {
    pub shared: Arc<Shared>,
    pub node: PeerId,
    pub key: ClientKey,
    used: bool,
}

impl Reservation {
    /// The claim now belongs to an allocation, which gives it back when it ends.
    pub fn consume(mut self) -> (Arc<Shared>, PeerId, ClientKey) {
        self.used = true;
        (self.shared.clone(), self.node, self.key)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.used {
            self.shared.ledger().release(&self.node);
        }
    }
}

/// The slot through which the gate hands a reservation to the generator of the same listener.
pub(crate) type Slot = Arc<Mutex<Option<Reservation>>>;

pub(crate) fn take(slot: &Slot) -> Option<Reservation> {
    slot.lock().unwrap_or_else(|e| e.into_inner()).take()
}

fn put(slot: &Slot, reservation: Reservation) {
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(reservation);
}

/// The screening listener. `close` does nothing: the engine closes the listener each time an
/// allocation ends; the gate ends when the relay server stops.
pub(crate) struct Gate {
    pub inner: Arc<dyn Conn + Send + Sync>,
    pub transport: Transport,
    pub shared: Arc<Shared>,
    pub slot: Slot,
    pub stop: watch::Receiver<bool>,
}

/// What to do with one datagram.
enum Verdict {
    /// Hand it to the engine (its first `usize` bytes of the buffer, maybe rewritten).
    Pass(usize),
    /// Answer it with these bytes (none: drop it) and read the next.
    Reply(Vec<u8>),
}

/// `ip` without IPv4-mapped IPv6 dressing.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `a` and `b` are one IP (an IPv4-mapped IPv6 address is its IPv4 address).
pub(crate) fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    unmapped(a) == unmapped(b)
}

/// Whether the relay may exchange datagrams with `ip`, by its IP alone (the relay's own live
/// allocations are let through by port, see `Shared::peer_allowed`).
pub(crate) fn peer_allowed(ip: IpAddr, relay_ip: IpAddr, allow_local: bool) -> bool {
    let ip = unmapped(ip);
    if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return false;
    }
    allow_local || !(ip.is_loopback() || ip == relay_ip)
}

/// Decodes an XOR-PEER-ADDRESS value (RFC 8489 §14.2).
pub(crate) fn xor_address(value: &[u8], transaction: &TransactionId) -> Option<SocketAddr> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let family = *value.get(1)?;
    let port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]) ^ (MAGIC_COOKIE >> 16) as u16;
    match family {
        0x01 if value.len() == 8 => {
            let mut ip = [0u8; 4];
            for i in 0..4 {
                ip[i] = value[4 + i] ^ cookie[i];
            }
            Some(SocketAddr::new(Ipv4Addr::from(ip).into(), port))
        }
        0x02 if value.len() == 20 => {
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&cookie);
            mask[4..].copy_from_slice(&transaction.0);
            let mut ip = [0u8; 16];
            for i in 0..16 {
                ip[i] = value[4 + i] ^ mask[i];
            }
            Some(SocketAddr::new(Ipv6Addr::from(ip).into(), port))
        }
        _ => None,
    }
}

fn build(setters: Vec<Box<dyn Setter>>) -> Option<Vec<u8>> {
    let mut m = Message::new();
    m.build(&setters).ok()?;
    Some(m.raw)
}

/// An error response to `request`.
fn error_response(
    request: &Message,
    code: ErrorCode,
    reason: &str,
    extra: Vec<Box<dyn Setter>>,
    key: Option<&[u8]>,
) -> Option<Vec<u8>> {
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(request.transaction_id),
        Box::new(MessageType::new(request.typ.method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code,
            reason: reason.as_bytes().to_vec(),
        }),
    ];
    setters.extend(extra);
    if let Some(key) = key {
        setters.push(Box::new(MessageIntegrity(key.to_vec())));
    }
    setters.push(Box::new(FINGERPRINT));
    build(setters)
}

/// `request` with its LIFETIME replaced by `lifetime`, signed again with `key`.
fn with_lifetime(request: &Message, lifetime: Duration, key: &[u8]) -> Option<Vec<u8>> {
    let mut setters: Vec<Box<dyn Setter>> =
        vec![Box::new(request.transaction_id), Box::new(request.typ)];
    for attribute in &request.attributes.0 {
        if attribute.typ == ATTR_MESSAGE_INTEGRITY {
            break;
        }
        if attribute.typ != ATTR_LIFETIME {
            setters.push(Box::new(RawAttribute {
                typ: attribute.typ,
                length: 0,
                value: attribute.value.clone(),
            }));
        }
    }
    setters.push(Box::new(Lifetime(lifetime)));
    setters.push(Box::new(MessageIntegrity(key.to_vec())));
    if request.contains(ATTR_FINGERPRINT) {
        setters.push(Box::new(FINGERPRINT));
    }
    build(setters)
}

impl Gate {
    /// Decides what happens to the datagram in `buf[..len]` from `from`.
    fn screen(&self, buf: &mut [u8], len: usize, from: SocketAddr) -> Verdict {
        // ChannelData (first two bits 01) and anything too short for STUN go to the engine.
        if len < 20 || buf[0] & 0xc0 != 0 {
            return Verdict::Pass(len);
        }
        let mut m = Message {
            raw: buf[..len].to_vec(),
            ..Default::default()
        };
        if m.decode().is_err() || m.typ.class != CLASS_REQUEST {
            return Verdict::Pass(len);
        }
        let method = m.typ.method;
        if ![
            METHOD_ALLOCATE,
            METHOD_REFRESH,
            METHOD_CREATE_PERMISSION,
            METHOD_CHANNEL_BIND,
        ]
        .contains(&method)
        {
            return Verdict::Pass(len);
        }
        if !m.contains(ATTR_MESSAGE_INTEGRITY) {
            // Unauthenticated: the engine answers 401 with a fresh nonce, within a rate.
            return if self.shared.challenge() {
                Verdict::Pass(len)
            } else {
                Verdict::Reply(Vec::new())
            };
        }
        let (Ok(username), Ok(realm), Ok(nonce)) = (
            TextAttribute::get_from_as(&m, ATTR_USERNAME),
            TextAttribute::get_from_as(&m, ATTR_REALM),
            TextAttribute::get_from_as(&m, ATTR_NONCE),
        ) else {
            // Malformed: the engine answers 400.
            return Verdict::Pass(len);
        };
        let shared = &self.shared;
        let unauthorized = |m: &Message, why: &str| {
            tracing::debug!(%from, username = %username.text, why, "relay request refused");
            error_response(
                m,
                CODE_UNAUTHORIZED,
                "Unauthorized",
                vec![
                    Box::new(TextAttribute::new(ATTR_REALM, shared.realm.clone())),
                    Box::new(TextAttribute::new(ATTR_NONCE, nonce.text.clone())),
                ],
                None,
            )
        };
        let refuse = |reply: Option<Vec<u8>>| match reply {
            Some(bytes) => Verdict::Reply(bytes),
            // Cannot happen for the fixed attributes above; dropping is the safe answer.
            None => Verdict::Reply(Vec::new()),
        };
        if realm.text != shared.realm {
            return refuse(unauthorized(&m, "wrong realm"));
        }
        let (node, password) = match password_for(&shared.secret, &username.text, unix_now()) {
            Ok(found) => found,
            Err(e) => return refuse(unauthorized(&m, &e.to_string())),
        };
        let key = turn::auth::generate_auth_key(&username.text, &realm.text, &password);
        if MessageIntegrity(key.clone()).check(&mut m.clone()).is_err() {
            return refuse(unauthorized(&m, "wrong password"));
        }

        let client = ClientKey {
            transport: self.transport,
            addr: from,
        };
        let now = Instant::now();
        let mut ledger = shared.ledger();
        let existing = ledger.get(&client).map(|a| (a.node, a.deadline));
        if let Some((owner, _)) = existing {
            if owner != node {
                return refuse(error_response(
                    &m,
                    CODE_WRONG_CREDENTIALS,
                    "Wrong Credentials",
                    Vec::new(),
                    Some(&key),
                ));
            }
        }
        if existing.is_none() && method != METHOD_ALLOCATE {
            // The engine drops such requests without an answer, and the client would wait out
            // its retransmissions; RFC 8656 §7.3 and §9.2 want 437.
            return refuse(error_response(
                &m,
                CODE_ALLOC_MISMATCH,
                "Allocation Mismatch",
                Vec::new(),
                Some(&key),
            ));
        }
        let requested = {
            let mut lifetime = Lifetime::default();
            use stun::message::Getter;
            lifetime.get_from(&m).ok().map(|()| lifetime.0)
        };
        let remaining = if method == METHOD_ALLOCATE {
            if existing.is_some() {
                // A second Allocate on the 5-tuple: the engine answers 437.
                return Verdict::Pass(len);
            }
            if let Err(e) = ledger.reserve(node, now) {
                tracing::debug!(%from, %node, error = %e, "relay allocation refused");
                return refuse(error_response(
                    &m,
                    CODE_ALLOC_QUOTA_REACHED,
                    "Allocation Quota Reached",
                    Vec::new(),
                    Some(&key),
                ));
            }
            drop(ledger);
            put(
                &self.slot,
                Reservation {
                    shared: shared.clone(),
                    node,
                    key: client,
                    used: false,
                },
            );
            Some(shared.quota.max_lifetime)
        } else if method == METHOD_REFRESH {
            existing.map(|(_, deadline)| deadline.saturating_duration_since(now))
        } else {
            drop(ledger);
            let denied = m.attributes.0.iter().any(|a| {
                a.typ == ATTR_XOR_PEER_ADDRESS
                    && xor_address(&a.value, &m.transaction_id)
                        .is_some_and(|peer| !shared.peer_allowed(peer))
            });
            if denied {
                return refuse(error_response(
                    &m,
                    CODE_FORBIDDEN,
                    "Forbidden",
                    Vec::new(),
                    Some(&key),
                ));
            }
            None
        };
        if let Some(lifetime) = remaining.and_then(|r| clamp_lifetime(requested, r)) {
            if let Some(rewritten) = with_lifetime(&m, lifetime, &key) {
                if rewritten.len() <= buf.len() {
                    buf[..rewritten.len()].copy_from_slice(&rewritten);
                    return Verdict::Pass(rewritten.len());
                }
            }
        }
        Verdict::Pass(len)
    }
}

fn closed() -> webrtc_util::Error {
    webrtc_util::Error::Io(std::io::Error::from(std::io::ErrorKind::NotConnected).into())
}

#[async_trait]
impl Conn for Gate {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other(
            "the relay listener does not connect".into(),
        ))
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.recv_from(buf).await.map(|(n, _)| n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let mut stop = self.stop.clone();
        loop {
            // The engine handled the previous request completely before asking for this one;
            // a reservation it did not use goes back to the node.
            drop(take(&self.slot));
            if *stop.borrow_and_update() {
                return Err(closed());
            }
            let received = tokio::select! {
                received = self.inner.recv_from(buf) => received,
                _ = stop.changed() => return Err(closed()),
            };
            let (len, from) = match received {
                Ok(received) => received,
                // ICMP errors from earlier sends on UDP say nothing about the next datagram.
                Err(_) if self.transport == Transport::Udp => continue,
                Err(e) => return Err(e),
            };
            match self.screen(buf, len, from) {
                Verdict::Pass(len) => return Ok((len, from)),
                Verdict::Reply(reply) => {
                    if !reply.is_empty() {
                        let _ = self.inner.send_to(&reply, from).await;
                    }
                }
            }
        }
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other(
            "the relay listener sends to an address".into(),
        ))
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.inner.send_to(buf, target).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use turn::proto::peeraddr::PeerAddress;

    async fn gate() -> Gate {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let shared = Arc::new(Shared {
            secret: crate::relay::RelaySecret::new("s").unwrap(),
            realm: "fog".into(),
            relay_ip: "127.0.0.1".parse().unwrap(),
            allow_loopback_peers: false,
            quota: Default::default(),
            ledger: Mutex::new(crate::relay::quota::Ledger::new(Default::default())),
            challenges: Mutex::new(crate::relay::quota::TokenBucket::new(
                1_000_000,
                Instant::now(),
            )),
            own: Mutex::default(),
        });
        Gate {
            inner: Arc::new(socket),
            transport: Transport::Udp,
            shared,
            slot: Slot::default(),
            stop: watch::channel(false).1,
        }
    }

    #[tokio::test]
    async fn garbage_and_cut_requests_never_panic_the_gate() {
        use rand::{Rng, RngCore};
        let gate = gate().await;
        let node = fog_core::Identity::generate().peer_id();
        let c = crate::relay::credentials::issue(
            &gate.shared.secret,
            &node,
            unix_now(),
            Duration::from_secs(60),
        );
        let key = turn::auth::generate_auth_key(&c.username, "fog", &c.password);
        let mut m = Message::new();
        m.build(&[
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            Box::new(TextAttribute::new(ATTR_USERNAME, c.username.clone())),
            Box::new(TextAttribute::new(ATTR_REALM, "fog".into())),
            Box::new(TextAttribute::new(ATTR_NONCE, "n".into())),
            Box::new(Lifetime(Duration::from_secs(3000))),
            Box::new(MessageIntegrity(key)),
            Box::new(FINGERPRINT),
        ])
        .unwrap();
        let from: SocketAddr = "192.0.2.9:5000".parse().unwrap();
        let mut rng = rand::thread_rng();
        let mut buf = vec![0u8; 1500];
        // The whole request passes (shortened lifetime) and reserves the node's quota.
        buf[..m.raw.len()].copy_from_slice(&m.raw);
        assert!(matches!(
            gate.screen(&mut buf, m.raw.len(), from),
            Verdict::Pass(_)
        ));
        assert_eq!(gate.shared.ledger().allocations(&node), 1);
        drop(take(&gate.slot));
        assert_eq!(gate.shared.ledger().allocations(&node), 0);
        for _ in 0..2000 {
            // Cut, bit-flipped copies of the request, and random bytes with a STUN header.
            let mut datagram = m.raw.clone();
            datagram.truncate(rng.gen_range(0..=datagram.len()));
            if !datagram.is_empty() && rng.gen_bool(0.5) {
                let i = rng.gen_range(0..datagram.len());
                datagram[i] ^= 1 << rng.gen_range(0..8);
            }
            if rng.gen_bool(0.2) {
                datagram = vec![0u8; rng.gen_range(0..200)];
                rng.fill_bytes(&mut datagram);
                if datagram.len() >= 8 {
                    datagram[0] &= 0x3f;
                    datagram[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                }
            }
            buf[..datagram.len()].copy_from_slice(&datagram);
            let _ = gate.screen(&mut buf, datagram.len(), from);
            drop(take(&gate.slot));
        }
        assert_eq!(gate.shared.ledger().allocations(&node), 0);
    }

    #[test]
    fn peers_on_this_host_and_odd_addresses_are_refused() {
        let relay: IpAddr = "203.0.113.7".parse().unwrap();
        let ok = |s: &str, local| peer_allowed(s.parse().unwrap(), relay, local);
        assert!(ok("198.51.100.1", false));
        assert!(ok("2001:db8::1", false));
        for bad in [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "203.0.113.7",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
        ] {
            assert!(!ok(bad, false), "{bad} allowed");
        }
        assert!(ok("127.0.0.1", true));
        assert!(ok("203.0.113.7", true));
        assert!(!ok("0.0.0.0", true));
        assert!(!ok("224.0.0.1", true));
    }

    #[test]
    fn xor_peer_addresses_decode_as_the_turn_crate_encodes_them() {
        for addr in ["198.51.100.1:4242", "[2001:db8::1]:65535", "127.0.0.1:1"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut m = Message::new();
            m.build(&[
                Box::new(TransactionId::new()),
                Box::new(MessageType::new(METHOD_CREATE_PERMISSION, CLASS_REQUEST)),
                Box::new(PeerAddress {
                    ip: addr.ip(),
                    port: addr.port(),
                }),
            ])
            .unwrap();
            let value = m.get(ATTR_XOR_PEER_ADDRESS).unwrap();
            assert_eq!(xor_address(&value, &m.transaction_id), Some(addr));
        }
        let tid = TransactionId::new();
        assert_eq!(xor_address(&[], &tid), None);
        assert_eq!(xor_address(&[0, 1, 0, 0], &tid), None);
        assert_eq!(xor_address(&[0, 3, 0, 0, 1, 2, 3, 4], &tid), None);
    }

    #[test]
    fn a_rewritten_lifetime_keeps_the_request_and_its_integrity() {
        let key = turn::auth::generate_auth_key("u", "fog", "p");
        let mut m = Message::new();
        m.build(&[
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            Box::new(TextAttribute::new(ATTR_USERNAME, "u".into())),
            Box::new(Lifetime(Duration::from_secs(3000))),
            Box::new(MessageIntegrity(key.clone())),
            Box::new(FINGERPRINT),
        ])
        .unwrap();
        let raw = with_lifetime(&m, Duration::from_secs(60), &key).unwrap();
        let mut out = Message {
            raw,
            ..Default::default()
        };
        out.decode().unwrap();
        assert_eq!(out.transaction_id, m.transaction_id);
        assert_eq!(out.typ, m.typ);
        let mut lifetime = Lifetime::default();
        use stun::message::Getter;
        lifetime.get_from(&out).unwrap();
        assert_eq!(lifetime.0, Duration::from_secs(60));
        assert_eq!(
            TextAttribute::get_from_as(&out, ATTR_USERNAME)
                .unwrap()
                .text,
            "u"
        );
        MessageIntegrity(key).check(&mut out.clone()).unwrap();
        stun::fingerprint::FINGERPRINT.check(&out).unwrap();
    }
}
