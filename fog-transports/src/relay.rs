//! Relay paths through a TURN server (RFC 8656), made from the node's own socket.
//!
//! The allocation is requested from the node's [`FogSocket`], so the relay sees the same NAT
//! mapping the checks use, and everything above the socket keeps talking in addresses: a peer
//! reached through the relay gets a stand-in address (from 250.0.0.0/8, never routed), and the
//! socket wraps what is sent to it in TURN and unwraps what the relay forwards from the peer.
//! Checks, routes and QUIC then work over a relay path exactly as over a direct one, which is
//! what lets a connection start on the relay and move to a direct pair without breaking.
//!
//! The TURN exchanges themselves (long-term credentials, permissions, channel bindings,
//! refreshes) are the `turn` crate's client, fed by the socket through a small adapter.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use webrtc_util::Conn;

use fog_core::turn::{frame, read_frame};
use fog_core::TurnTransport;
use tokio::io::AsyncWriteExt;

use crate::socket::FogSocket;

/// How long the TCP connection to a relay may take.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an allocation may take: two round trips to the relay, with retransmissions.
const ALLOCATE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an allocation that timed out is still waited for, to release it at the relay.
const LATE_ALLOCATION: Duration = Duration::from_secs(30);
/// Datagrams queued towards one relay before new ones are dropped (as a congested link would).
const SEND_QUEUE: usize = 1024;
/// An allocation is made again this long before the relay ends it (its lifetime runs out and
/// a refresh gives no more: the relay's maximum lifetime, or credentials that expire).
pub const RENEW_BEFORE: Duration = Duration::from_secs(5);

/// What the node knows of an allocation's health, from the relay's answers and the traffic.
#[derive(Debug)]
struct Health {
    /// When the relay will end the allocation unless a refresh extends it: from the LIFETIME
    /// of its last Allocate or Refresh answer.
    expires: Option<std::time::Instant>,
    /// The relay refused a refresh (the allocation is gone, or the credentials expired), or
    /// the connections through it found it lost.
    refused: bool,
}

type SharedHealth = Arc<std::sync::Mutex<Health>>;

fn lock(h: &SharedHealth) -> std::sync::MutexGuard<'_, Health> {
    h.lock().unwrap_or_else(|e| e.into_inner())
}

/// STUN message types (RFC 8489 §5) of the answers that tell about the allocation.
const ALLOCATE_SUCCESS: u16 = 0x0103;
const REFRESH_SUCCESS: u16 = 0x0104;
const REFRESH_ERROR: u16 = 0x0114;
const ATTR_LIFETIME: u16 = 0x000d;
const ATTR_ERROR_CODE: u16 = 0x0009;
/// Stale nonce: the TURN client retries with the new one.
const STALE_NONCE: u16 = 438;

/// What one message from the relay says about the allocation.
#[derive(Debug, PartialEq, Eq)]
enum Told {
    /// Allocated or refreshed for this long.
    Lifetime(Duration),
    /// A refresh was refused with this code.
    Refused(u16),
}

/// Reads the allocation's fate from a message of the relay (sans IO): the LIFETIME of an
/// Allocate or Refresh success, or the code of a refused refresh. `None` for anything else
/// (data, other answers, garbage).
fn told(message: &[u8]) -> Option<Told> {
    if message.len() < 20 || message[4..8] != [0x21, 0x12, 0xa4, 0x42] {
        return None;
    }
    let kind = u16::from_be_bytes([message[0], message[1]]);
    let len = usize::from(u16::from_be_bytes([message[2], message[3]]));
    let body = message.get(20..20 + len)?;
    let attribute = |wanted: u16| {
        let mut at = 0;
        while at + 4 <= body.len() {
            let typ = u16::from_be_bytes([body[at], body[at + 1]]);
            let alen = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
            let value = body.get(at + 4..at + 4 + alen)?;
            if typ == wanted {
                return Some(value);
            }
            at += 4 + alen.div_ceil(4) * 4;
        }
        None
    };
    match kind {
        ALLOCATE_SUCCESS | REFRESH_SUCCESS => {
            let v = attribute(ATTR_LIFETIME)?;
            let secs = u32::from_be_bytes(v.get(..4)?.try_into().ok()?);
            Some(Told::Lifetime(Duration::from_secs(u64::from(secs))))
        }
        REFRESH_ERROR => {
            let v = attribute(ATTR_ERROR_CODE)?;
            let code = u16::from(*v.get(2)? & 0x07) * 100 + u16::from(*v.get(3)?);
            Some(Told::Refused(code))
        }
        _ => None,
    }
}

/// Why a relay allocation failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The relay refused or failed the allocation (bad credentials, quota, …).
    #[error("the relay {server} refused the allocation: {reason}")]
    Refused {
        /// The relay.
        server: SocketAddr,
        /// What it said.
        reason: String,
    },
    /// No answer in time.
    #[error("no allocation from the relay {0} within {ALLOCATE_TIMEOUT:?}")]
    Timeout(SocketAddr),
    /// The node's socket is gone.
    #[error("the node's socket is closed")]
    SocketClosed,
}

/// Where to allocate and with which credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayServer {
    /// The relay's address.
    pub addr: SocketAddr,
    /// TURN over UDP from the node's socket, or over a TCP connection of its own (for networks
    /// that block UDP; the relayed side stays UDP).
    pub transport: TurnTransport,
    /// TURN username.
    pub username: String,
    /// TURN password.
    pub password: String,
}

/// An allocation on a relay, made from a node's socket. Dropping it ends the allocation.
pub struct RelayAllocation {
    pub(crate) id: u32,
    server: SocketAddr,
    relayed: SocketAddr,
    /// Weak: the socket keeps its allocations, not the other way round.
    socket: Weak<FogSocket>,
    client: Option<turn::client::Client>,
    /// The relayed side, to end the allocation at the relay (a Refresh of lifetime 0).
    relay_conn: Arc<dyn Conn + Send + Sync>,
    health: SharedHealth,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for RelayAllocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayAllocation")
            .field("server", &self.server)
            .field("relayed", &self.relayed)
            .finish()
    }
}

impl RelayAllocation {
    /// The relay.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The address the relay allocated for this node: peers send here to reach it.
    pub fn relayed_addr(&self) -> SocketAddr {
        self.relayed
    }

    /// The stand-in address for `peer` reached through this relay: send to it (checks or
    /// QUIC) and the relay forwards to `peer`.
    pub fn path_to(&self, peer: SocketAddr) -> SocketAddr {
        match self.socket.upgrade() {
            Some(socket) => socket.relay_stand_in(self.id, peer),
            // The node is gone: nothing will be sent anyway.
            None => peer,
        }
    }

    /// Whether the allocation must be made again: the relay refused a refresh, it ends
    /// within [`RENEW_BEFORE`], or it was found lost (see `RelayHandle::mark_lost`). Silence
    /// alone says nothing: a peer that has not learned a new relayed address yet is silent
    /// too.
    pub fn needs_renewal(&self) -> bool {
        needs_renewal(&lock(&self.health), std::time::Instant::now())
    }

    /// Ends the allocation at the relay now (so that a new one can be made from the same
    /// address) and stops using it.
    pub async fn close(&self) {
        lock(&self.health).refused = true;
        let _ = self.relay_conn.close().await;
        if let Some(client) = &self.client {
            let _ = client.close().await;
        }
    }
}

fn needs_renewal(h: &Health, now: std::time::Instant) -> bool {
    let expiring = h
        .expires
        .is_some_and(|at| at.saturating_duration_since(now) <= RENEW_BEFORE);
    h.refused || expiring
}

impl Drop for RelayAllocation {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(socket) = self.socket.upgrade() {
            socket.detach_relay(self.id, self.server);
        }
        if let Some(client) = self.client.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = client.close().await;
                });
            }
        }
    }
}

/// How the TURN client's messages reach the relay.
enum Outbound {
    /// From the node's socket; the socket sets the relay's answers aside for us.
    Udp(Weak<FogSocket>),
    /// Framed on a TCP connection of our own, read by `reader`.
    Tcp {
        writer: tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>,
        reader: tokio::task::JoinHandle<()>,
    },
}

/// The TURN client's view of its way to the relay: datagrams to and from the relay, over the
/// node's UDP socket or over TCP.
struct ServerConn {
    local: SocketAddr,
    server: SocketAddr,
    incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<Vec<u8>>>,
    outbound: Outbound,
    /// What the relay's answers tell about the allocation.
    health: SharedHealth,
}

impl Drop for ServerConn {
    fn drop(&mut self) {
        if let Outbound::Tcp { reader, .. } = &self.outbound {
            reader.abort();
        }
    }
}

fn closed() -> webrtc_util::Error {
    webrtc_util::Error::Io(io::Error::from(io::ErrorKind::NotConnected).into())
}

impl ServerConn {
    /// Over the node's socket: the relay's datagrams arrive on the returned sender.
    fn udp(
        socket: &Arc<FogSocket>,
        server: SocketAddr,
        health: SharedHealth,
    ) -> (ServerConn, mpsc::UnboundedSender<Vec<u8>>) {
        let (tx, incoming) = mpsc::unbounded_channel();
        let conn = ServerConn {
            local: socket.local_addr(),
            server,
            incoming: tokio::sync::Mutex::new(incoming),
            outbound: Outbound::Udp(Arc::downgrade(socket)),
            health,
        };
        (conn, tx)
    }

    /// Over a TCP connection to the relay (TURN over TCP).
    async fn tcp(server: SocketAddr, health: SharedHealth) -> io::Result<ServerConn> {
        let stream =
            tokio::time::timeout(TCP_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(server))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "TCP connect to the relay")
                })??;
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr()?;
        let (mut read, write) = stream.into_split();
        let (tx, incoming) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Ok(message) = read_frame(&mut read).await {
                if tx.send(message).is_err() {
                    return;
                }
            }
        });
        Ok(ServerConn {
            local,
            server,
            incoming: tokio::sync::Mutex::new(incoming),
            outbound: Outbound::Tcp {
                writer: tokio::sync::Mutex::new(write),
                reader,
            },
            health,
        })
    }

    /// Notes what a message of the relay says about the allocation.
    fn observe(&self, message: &[u8]) {
        match told(message) {
            // A lifetime of 0 answers our own release.
            Some(Told::Lifetime(lifetime)) if !lifetime.is_zero() => {
                lock(&self.health).expires = Some(std::time::Instant::now() + lifetime);
            }
            Some(Told::Refused(code)) if code != STALE_NONCE => {
                tracing::debug!(server = %self.server, code, "the relay refused a refresh");
                lock(&self.health).refused = true;
            }
            _ => {}
        }
    }
}

#[async_trait]
impl Conn for ServerConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other("not applicable".into()))
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.recv_from(buf).await.map(|(n, _)| n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let message = self.incoming.lock().await.recv().await.ok_or_else(closed)?;
        self.observe(&message);
        let len = message.len().min(buf.len());
        buf[..len].copy_from_slice(&message[..len]);
        Ok((len, self.server))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.send_to(buf, self.server).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        match &self.outbound {
            Outbound::Udp(socket) => {
                let socket = socket.upgrade().ok_or_else(closed)?;
                match socket.send_now(buf, target) {
                    Ok(n) => Ok(n),
                    // A full buffer loses the datagram; the TURN client retransmits.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(buf.len()),
                    Err(e) => Err(webrtc_util::Error::Io(e.into())),
                }
            }
            Outbound::Tcp { writer, .. } => {
                writer
                    .lock()
                    .await
                    .write_all(&frame(buf))
                    .await
                    .map_err(|e| webrtc_util::Error::Io(e.into()))?;
                Ok(buf.len())
            }
        }
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.server)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// Allocates on `relay` from `socket`.
pub(crate) async fn allocate(
    socket: &Arc<FogSocket>,
    relay: &RelayServer,
) -> Result<RelayAllocation, RelayError> {
    let refused = |reason: String| RelayError::Refused {
        server: relay.addr,
        reason,
    };
    let health: SharedHealth = Arc::new(std::sync::Mutex::new(Health {
        expires: None,
        refused: false,
    }));
    let (conn, from_server) = match relay.transport {
        TurnTransport::Udp => {
            let (conn, from_server) = ServerConn::udp(socket, relay.addr, health.clone());
            (conn, Some(from_server))
        }
        TurnTransport::Tcp => {
            let conn = ServerConn::tcp(relay.addr, health.clone())
                .await
                .map_err(|e| refused(e.to_string()))?;
            (conn, None)
        }
    };
    let (id, mut to_send) = socket.attach_relay(relay.addr, from_server);
    let conn: Arc<dyn Conn + Send + Sync> = Arc::new(conn);
    let detach = |e| {
        socket.detach_relay(id, relay.addr);
        e
    };
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: String::new(),
        turn_serv_addr: relay.addr.to_string(),
        username: relay.username.clone(),
        password: relay.password.clone(),
        realm: String::new(),
        software: "fog".into(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .map_err(|e| detach(refused(e.to_string())))?;
    client
        .listen()
        .await
        .map_err(|e| detach(refused(e.to_string())))?;
    // The allocation runs on a task of its own that outlives a timeout: an answer that comes
    // late (a loaded relay) is an allocation the relay keeps for this 5-tuple, and would
    // refuse the next one (437) until it expires; the task releases it.
    let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
    let late = {
        let socket = Arc::downgrade(socket);
        let server = relay.addr;
        move |client: turn::client::Client, result: Result<Arc<dyn Conn + Send + Sync>, _>| async move {
            if let Ok(conn) = result {
                tracing::debug!(%server, "late relay allocation released");
                let _ = conn.close().await;
            }
            let _ = client.close().await;
            if let Some(socket) = socket.upgrade() {
                socket.detach_relay(id, server);
            }
        }
    };
    tokio::spawn(async move {
        let result = tokio::time::timeout(LATE_ALLOCATION, client.allocate())
            .await
            .map_err(|_| turn::Error::Other("no answer".into()))
            .and_then(|r| r)
            .map(|conn| Arc::new(conn) as Arc<dyn Conn + Send + Sync>);
        if let Err((client, result)) = answer_tx.send((client, result)) {
            late(client, result).await;
        }
    });
    let (client, relay_conn) = match tokio::time::timeout(ALLOCATE_TIMEOUT, answer_rx).await {
        Ok(Ok((client, Ok(conn)))) => (client, conn),
        Ok(Ok((client, Err(e)))) => {
            let _ = client.close().await;
            return Err(detach(refused(e.to_string())));
        }
        Ok(Err(_)) => return Err(detach(RelayError::SocketClosed)),
        // The task goes on, and releases what comes late.
        Err(_) => return Err(RelayError::Timeout(relay.addr)),
    };
    let relayed = relay_conn
        .local_addr()
        .map_err(|e| detach(refused(e.to_string())))?;
    let sender = relay_conn.clone();
    let send_pump = tokio::spawn(async move {
        while let Some((datagram, peer)) = to_send.recv().await {
            if let Err(e) = sender.send_to(&datagram, peer).await {
                tracing::debug!(%peer, error = %e, "relay send failed");
            }
        }
    });
    let weak = Arc::downgrade(socket);
    let receiver = relay_conn.clone();
    let recv_pump = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((len, peer)) = receiver.recv_from(&mut buf).await {
            let Some(socket) = weak.upgrade() else {
                return;
            };
            socket.inject_from_relay(id, peer, buf[..len].to_vec());
        }
    });
    tracing::debug!(server = %relay.addr, %relayed, "relay allocated");
    Ok(RelayAllocation {
        id,
        server: relay.addr,
        relayed,
        socket: Arc::downgrade(socket),
        client: Some(client),
        relay_conn,
        health,
        tasks: vec![send_pump, recv_pump],
    })
}

/// A datagram for a peer behind a relay.
pub(crate) type Relayed = (Vec<u8>, SocketAddr);

/// The queue towards one allocation's send pump.
pub(crate) fn send_queue() -> (mpsc::Sender<Relayed>, mpsc::Receiver<Relayed>) {
    mpsc::channel(SEND_QUEUE)
}

impl fog_core::RelayHandle for RelayAllocation {
    fn server(&self) -> SocketAddr {
        self.server
    }

    fn relayed_addr(&self) -> SocketAddr {
        self.relayed
    }

    fn path_to(&self, peer: SocketAddr) -> SocketAddr {
        RelayAllocation::path_to(self, peer)
    }

    fn needs_renewal(&self) -> bool {
        RelayAllocation::needs_renewal(self)
    }

    fn mark_lost(&self) {
        tracing::debug!(server = %self.server, relayed = %self.relayed, "relay allocation taken for lost");
        lock(&self.health).refused = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A STUN message of `kind` with one attribute.
    fn message(kind: u16, attr: u16, value: &[u8]) -> Vec<u8> {
        let padded = value.len().div_ceil(4) * 4;
        let mut m = Vec::new();
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&((4 + padded) as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attr.to_be_bytes());
        m.extend_from_slice(&(value.len() as u16).to_be_bytes());
        m.extend_from_slice(value);
        m.resize(20 + 4 + padded, 0);
        m
    }

    #[test]
    fn the_relays_answers_tell_the_lifetime_and_refusals() {
        let lifetime = |secs: u32| secs.to_be_bytes();
        assert_eq!(
            told(&message(ALLOCATE_SUCCESS, ATTR_LIFETIME, &lifetime(20))),
            Some(Told::Lifetime(Duration::from_secs(20)))
        );
        assert_eq!(
            told(&message(REFRESH_SUCCESS, ATTR_LIFETIME, &lifetime(7))),
            Some(Told::Lifetime(Duration::from_secs(7)))
        );
        // 437 Allocation Mismatch: class 4, number 37.
        assert_eq!(
            told(&message(
                REFRESH_ERROR,
                ATTR_ERROR_CODE,
                &[0, 0, 4, 37, b'x']
            )),
            Some(Told::Refused(437))
        );
        // Other messages, and cut or foreign bytes, say nothing.
        assert_eq!(told(&message(0x0101, ATTR_LIFETIME, &lifetime(9))), None);
        let cut = message(REFRESH_SUCCESS, ATTR_LIFETIME, &lifetime(7));
        assert_eq!(told(&cut[..cut.len() - 2]), None);
        assert_eq!(told(&[0x40; 64]), None);
        assert_eq!(told(&[]), None);
    }

    #[test]
    fn an_allocation_is_renewed_when_refused_or_near_its_end() {
        let now = Instant::now();
        let fresh = Health {
            expires: Some(now + Duration::from_secs(60)),
            refused: false,
        };
        assert!(!needs_renewal(&fresh, now));
        assert!(!needs_renewal(
            &Health {
                expires: None,
                refused: false
            },
            now
        ));
        let ending = Health {
            expires: Some(now + RENEW_BEFORE),
            ..fresh
        };
        assert!(needs_renewal(&ending, now));
        assert!(needs_renewal(&fresh, now + Duration::from_secs(56)));
        let refused = Health {
            refused: true,
            ..fresh
        };
        assert!(needs_renewal(&refused, now));
    }
}
