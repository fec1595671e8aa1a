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
/// Datagrams queued towards one relay before new ones are dropped (as a congested link would).
const SEND_QUEUE: usize = 1024;

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
    ) -> (ServerConn, mpsc::UnboundedSender<Vec<u8>>) {
        let (tx, incoming) = mpsc::unbounded_channel();
        let conn = ServerConn {
            local: socket.local_addr(),
            server,
            incoming: tokio::sync::Mutex::new(incoming),
            outbound: Outbound::Udp(Arc::downgrade(socket)),
        };
        (conn, tx)
    }

    /// Over a TCP connection to the relay (TURN over TCP).
    async fn tcp(server: SocketAddr) -> io::Result<ServerConn> {
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
        })
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
    let (conn, from_server) = match relay.transport {
        TurnTransport::Udp => {
            let (conn, from_server) = ServerConn::udp(socket, relay.addr);
            (conn, Some(from_server))
        }
        TurnTransport::Tcp => {
            let conn = ServerConn::tcp(relay.addr)
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
    let relay_conn = match tokio::time::timeout(ALLOCATE_TIMEOUT, client.allocate()).await {
        Ok(Ok(conn)) => Arc::new(conn),
        Ok(Err(e)) => {
            let _ = client.close().await;
            return Err(detach(refused(e.to_string())));
        }
        Err(_) => {
            let _ = client.close().await;
            return Err(detach(RelayError::Timeout(relay.addr)));
        }
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
    let recv_pump = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((len, peer)) = relay_conn.recv_from(&mut buf).await {
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
}
