//! Raw UDP as a fog transport: unreliable datagrams sent as they are, one UDP datagram each,
//! with no retransmission, no ordering and no congestion control (for media, games and
//! anything that would rather lose a packet than wait for it).
//!
//! The connection's streams and its keys come from a QUIC handshake on the same path, so the
//! peer's key is pinned exactly as for QUIC. Both sides export keying material from that TLS
//! session: one ChaCha20-Poly1305 key per direction and an 8-byte tag that names the
//! connection on the socket. Each datagram is `tag ‖ counter ‖ sealed payload`; the counter is
//! the nonce, and a sliding window ([`ReplayWindow`]) drops replays. Datagrams ride the
//! peer's route on the node's socket (tagged for this transport), so they follow the path the
//! punch layer keeps, direct or relayed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use fog_core::{
    Attempt, BoxError, Connection, ConnectionError, Protocol, RecvHalf, SendHalf,
    TransportConnection, TransportCounters,
};
use futures_util::future::BoxFuture;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use tokio::sync::mpsc;
use tower_service::Service;

use crate::mux::check_attempt;
use crate::quic::{Established, QuicConnection, QuicTransport};
use crate::sessions::Sessions;
use crate::socket::FogSocket;

/// The protocol byte of raw UDP datagrams on the socket.
pub const UDP_PROTOCOL: u8 = 4;
/// The largest datagram on the wire after fog's tag: within a 1280-byte path with IP and UDP
/// headers, also through a relay.
const WIRE_MAX: usize = 1200;
/// The connection tag and the counter before the sealed payload.
const HEADER: usize = 16;
/// ChaCha20-Poly1305's tag.
const SEAL: usize = 16;
/// The largest payload of one datagram.
pub const MAX_UDP_DATAGRAM: usize = WIRE_MAX - HEADER - SEAL;
/// Datagrams queued for a connection before new ones are dropped.
const INBOUND_QUEUE: usize = 1024;
/// The exporter label both sides derive the datagram keys with.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-fog-udp-datagrams";

/// Which counters of the peer's datagrams were seen: the highest, and a bitmap of the 128
/// below it. Older ones and repeats are refused.
#[derive(Debug, Default)]
pub struct ReplayWindow {
    highest: Option<u64>,
    seen: u128,
}

impl ReplayWindow {
    /// Whether a datagram with `counter` is new; if so, it is marked seen. Call only for
    /// datagrams whose seal verified, so that forgeries cannot move the window.
    pub fn accept(&mut self, counter: u64) -> bool {
        let Some(highest) = self.highest else {
            self.highest = Some(counter);
            self.seen = 1;
            return true;
        };
        if counter > highest {
            let shift = counter - highest;
            self.seen = if shift >= 128 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = Some(counter);
            return true;
        }
        let age = highest - counter;
        if age >= 128 || self.seen & (1u128 << age) != 0 {
            return false;
        }
        self.seen |= 1u128 << age;
        true
    }
}

/// A connection's session key on the socket: the first four bytes of its tag.
fn tag_key(tag: &[u8]) -> u32 {
    u32::from_be_bytes([tag[0], tag[1], tag[2], tag[3]])
}

/// Takes the socket's raw UDP datagrams for the connections on it.
fn udp_sessions(socket: &FogSocket) -> Sessions<Vec<u8>> {
    Sessions::route(socket, UDP_PROTOCOL, |datagram| {
        // The peer may send as soon as its side is up, a moment before ours is.
        (datagram.len() >= HEADER + SEAL).then(|| (tag_key(&datagram), datagram, true))
    })
}

/// The raw UDP transport service: a QUIC handshake (streams, keys) plus raw datagrams.
#[derive(Clone)]
pub struct UdpTransport {
    quic: QuicTransport,
    socket: Arc<FogSocket>,
    sessions: Sessions<Vec<u8>>,
}

impl UdpTransport {
    /// Raw UDP connections on `socket`, whose handshakes and streams run over `quic` (on the
    /// same socket). Must be called inside a tokio runtime.
    pub fn new(socket: Arc<FogSocket>, quic: QuicTransport) -> Self {
        UdpTransport {
            sessions: udp_sessions(&socket),
            socket,
            quic,
        }
    }
}

impl Service<Attempt> for UdpTransport {
    type Response = Connection;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Connection, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, attempt: Attempt) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            // Datagrams go on the node's socket: a path on a spraying socket cannot carry them.
            check_attempt(&attempt, Protocol::Udp, "UdpTransport", &this.socket)?;
            let Established {
                quic,
                path,
                peer,
                client,
            } = this
                .quic
                .establish(&attempt, Protocol::Udp, "UdpTransport")
                .await?;
            let udp = UdpConnection::new(quic, client, &this.sessions)?;
            Ok(crate::connected(
                &attempt,
                peer,
                path.kind,
                Box::new(udp),
                Protocol::Udp,
            ))
        })
    }
}

/// A QUIC connection for streams, and raw sealed datagrams beside it.
struct UdpConnection {
    quic: QuicConnection,
    tag: [u8; 8],
    seal: LessSafeKey,
    open: LessSafeKey,
    next_counter: AtomicU64,
    window: Mutex<ReplayWindow>,
    inbox: tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>,
    sessions: Sessions<Vec<u8>>,
}

impl UdpConnection {
    fn new(
        quic: QuicConnection,
        client: bool,
        sessions: &Sessions<Vec<u8>>,
    ) -> Result<Self, BoxError> {
        let mut material = [0u8; 72];
        quic.conn
            .export_keying_material(&mut material, EXPORTER_LABEL, b"")
            .map_err(|_| "the QUIC session exports no keying material")?;
        let key = |bytes: &[u8]| -> Result<LessSafeKey, BoxError> {
            Ok(LessSafeKey::new(
                UnboundKey::new(&CHACHA20_POLY1305, bytes).map_err(|_| "bad datagram key")?,
            ))
        };
        let (client_key, server_key) = (&material[..32], &material[32..64]);
        let (seal, open) = if client {
            (key(client_key)?, key(server_key)?)
        } else {
            (key(server_key)?, key(client_key)?)
        };
        let tag: [u8; 8] = material[64..72].try_into().expect("8 bytes");
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        sessions.lock().open(tag_key(&tag), tx);
        Ok(UdpConnection {
            quic,
            tag,
            seal,
            open,
            next_counter: AtomicU64::new(0),
            window: Mutex::new(ReplayWindow::default()),
            inbox: tokio::sync::Mutex::new(rx),
            sessions: sessions.clone(),
        })
    }

    fn nonce(counter: u64) -> Nonce {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counter.to_be_bytes());
        Nonce::assume_unique_for_key(nonce)
    }

    /// The payload of a datagram from the peer, or `None` when it is not one (wrong tag,
    /// failed seal, replay).
    fn open_datagram(&self, mut datagram: Vec<u8>) -> Option<Vec<u8>> {
        if datagram.len() < HEADER + SEAL || datagram[..8] != self.tag {
            return None;
        }
        let counter = u64::from_be_bytes(datagram[8..16].try_into().expect("8 bytes"));
        let header: [u8; HEADER] = datagram[..HEADER].try_into().expect("16 bytes");
        let plain_len = {
            let sealed = &mut datagram[HEADER..];
            self.open
                .open_in_place(Self::nonce(counter), Aad::from(header), sealed)
                .ok()?
                .len()
        };
        if !self
            .window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .accept(counter)
        {
            return None;
        }
        datagram.copy_within(HEADER..HEADER + plain_len, 0);
        datagram.truncate(plain_len);
        Some(datagram)
    }
}

impl Drop for UdpConnection {
    fn drop(&mut self) {
        self.sessions.lock().close(tag_key(&self.tag));
    }
}

impl TransportConnection for UdpConnection {
    fn open_bi(&self) -> BoxFuture<'_, Result<(SendHalf, RecvHalf), ConnectionError>> {
        self.quic.open_bi()
    }

    fn accept_bi(&self) -> BoxFuture<'_, Result<(SendHalf, RecvHalf), ConnectionError>> {
        self.quic.accept_bi()
    }

    fn counters(&self) -> TransportCounters {
        self.quic.counters()
    }

    fn remote_addr(&self) -> SocketAddr {
        self.quic.remote_addr()
    }

    fn relay_addr(&self) -> Option<SocketAddr> {
        self.quic.relay_addr()
    }

    fn local_addr(&self) -> SocketAddr {
        self.quic.local_addr()
    }

    fn close(&self, reason: &str) {
        self.quic.close(reason)
    }

    fn closed(&self) -> BoxFuture<'_, String> {
        self.quic.closed()
    }

    fn send_datagram(&self, payload: &[u8]) -> Result<(), ConnectionError> {
        if payload.len() > MAX_UDP_DATAGRAM {
            return Err(ConnectionError::TooLarge {
                size: payload.len(),
                max: MAX_UDP_DATAGRAM,
            });
        }
        if let Some(reason) = self.quic.conn.close_reason() {
            return Err(ConnectionError::Closed(reason.to_string()));
        }
        let counter = self.next_counter.fetch_add(1, Ordering::Relaxed);
        let mut datagram = Vec::with_capacity(HEADER + payload.len() + SEAL);
        datagram.extend_from_slice(&self.tag);
        datagram.extend_from_slice(&counter.to_be_bytes());
        datagram.extend_from_slice(payload);
        let header: [u8; HEADER] = datagram[..HEADER].try_into().expect("16 bytes");
        let seal = self
            .seal
            .seal_in_place_separate_tag(
                Self::nonce(counter),
                Aad::from(header),
                &mut datagram[HEADER..],
            )
            .map_err(|_| ConnectionError::Closed("the datagram key is spent".into()))?;
        datagram.extend_from_slice(seal.as_ref());
        // Like a UDP socket: a full send buffer loses the datagram, it does not wait.
        let to = self.quic.conn.remote_address();
        match self
            .quic
            .socket
            .send_transport_datagram(to, UDP_PROTOCOL, &datagram)
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(ConnectionError::Closed(format!("the socket failed: {e}"))),
        }
    }

    fn recv_datagram(&self) -> BoxFuture<'_, Result<Vec<u8>, ConnectionError>> {
        Box::pin(async move {
            let mut inbox = self.inbox.lock().await;
            let closed = self.quic.closed();
            tokio::pin!(closed);
            loop {
                tokio::select! {
                    datagram = inbox.recv() => match datagram {
                        Some(datagram) => {
                            if let Some(payload) = self.open_datagram(datagram) {
                                return Ok(payload);
                            }
                        }
                        None => return Err(ConnectionError::Closed("the socket is gone".into())),
                    },
                    reason = &mut closed => return Err(ConnectionError::Closed(reason)),
                }
            }
        })
    }

    fn max_datagram_size(&self) -> Option<usize> {
        Some(MAX_UDP_DATAGRAM)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_takes_new_counters_once() {
        let mut window = ReplayWindow::default();
        assert!(window.accept(5));
        assert!(!window.accept(5), "a repeat");
        assert!(window.accept(3), "late but new");
        assert!(!window.accept(3));
        assert!(window.accept(200));
        assert!(!window.accept(72), "older than the window");
        assert!(window.accept(73), "the oldest the window holds");
        assert!(window.accept(199));
        assert!(!window.accept(200));
        assert!(window.accept(1000), "a jump clears the window");
        assert!(!window.accept(1000));
        assert!(window.accept(999));
    }
}
