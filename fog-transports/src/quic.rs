//! QUIC over the shared socket: the transport service at the bottom of the stack.
//!
//! The dialer connects to the path the punch layer chose, naming the session in the TLS server
//! name and pinning the peer's key. The responder's endpoint accepts every handshake, reads the
//! session from the server name and hands the connection to the attempt that waits for it, after
//! checking that the client's key is the peer the signal server introduced.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fog_core::{
    Attempt, BoxError, ConnectError, Connection, ConnectionError, Identity, NatType, PathSocket,
    PeerId, Protocol, RecvHalf, Role, SelectedPath, SendHalf, Strategy, TransportConnection,
    TransportCounters,
};
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;
use tower_service::Service;

use crate::socket::{FogSocket, SpraySocket};
use crate::tls;

/// How long a responder waits for the dialer's QUIC handshake after its own checks succeeded.
const RESPONDER_WAIT: Duration = Duration::from_secs(10);
/// Most handshakes kept for attempts that have not reached the transport yet.
const MAX_EARLY_ARRIVALS: usize = 64;
/// How long a handshake that arrived before its attempt is kept for it.
const EARLY_ARRIVAL_TTL: Duration = Duration::from_secs(10);

type Delivery = Result<quinn::Connection, String>;

#[derive(Default)]
struct Rendezvous {
    waiting: HashMap<String, oneshot::Sender<Delivery>>,
    arrived: HashMap<String, (Instant, Delivery)>,
}

impl Rendezvous {
    fn deliver(&mut self, session: String, delivery: Delivery) {
        let now = Instant::now();
        self.arrived
            .retain(|_, (at, _)| now.duration_since(*at) < EARLY_ARRIVAL_TTL);
        match self.waiting.remove(&session) {
            Some(tx) => {
                if let Err(Ok(conn)) = tx.send(delivery) {
                    conn.close(2u32.into(), b"attempt gone");
                }
            }
            // Handshakes that name no waiting attempt are kept briefly (the attempt may be a
            // moment behind), but not without bound: a stranger could send any number.
            None if self.arrived.len() < MAX_EARLY_ARRIVALS => {
                self.arrived.insert(session, (now, delivery));
            }
            None => {
                if let Ok(conn) = delivery {
                    conn.close(2u32.into(), b"no such attempt");
                }
            }
        }
    }
}

struct Shared {
    endpoint: quinn::Endpoint,
    socket: Arc<FogSocket>,
    identity: Identity,
    rendezvous: Arc<Mutex<Rendezvous>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"node shut down");
    }
}

/// The QUIC transport service: turns an [`Attempt`] with a selected path into a [`Connection`].
#[derive(Clone)]
pub struct QuicTransport {
    shared: Arc<Shared>,
}

fn transport_config() -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    config.keep_alive_interval(Some(Duration::from_secs(5)));
    config.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(30)).expect("30 s is a valid timeout"),
    ));
    config
}

/// A QUIC endpoint (client and server) on `socket`, whose incoming handshakes go to
/// `rendezvous`.
fn endpoint_on(
    socket: Arc<FogSocket>,
    identity: &Identity,
    rendezvous: &Arc<Mutex<Rendezvous>>,
) -> Result<quinn::Endpoint, BoxError> {
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(tls::server_config(identity)?)?,
    ));
    server.transport_config(Arc::new(transport_config()));
    let mut endpoint_config = quinn::EndpointConfig::default();
    // Keep the fixed bit set, so QUIC packets never look like connectivity checks.
    endpoint_config.grease_quic_bit(false);
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config,
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    tokio::spawn(accept_loop(endpoint.clone(), rendezvous.clone()));
    Ok(endpoint)
}

/// The SNI that names a session.
fn session_server_name(session_hex: &str) -> String {
    format!("s{session_hex}")
}

fn peer_of(conn: &quinn::Connection) -> Option<PeerId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    tls::peer_id_of_certificate(certs.first()?.as_ref())
}

impl QuicTransport {
    /// A QUIC endpoint on `socket` that presents `identity`. Must be called inside a tokio
    /// runtime; the endpoint lives until the last clone is dropped or [`close`](Self::close).
    pub fn new(socket: Arc<FogSocket>, identity: Identity) -> Result<Self, BoxError> {
        let rendezvous = Arc::new(Mutex::new(Rendezvous::default()));
        let endpoint = endpoint_on(socket.clone(), &identity, &rendezvous)?;
        Ok(QuicTransport {
            shared: Arc::new(Shared {
                endpoint,
                socket,
                identity,
                rendezvous,
            }),
        })
    }

    /// Closes every connection and the endpoint.
    pub fn close(&self) {
        self.shared.endpoint.close(0u32.into(), b"node shut down");
    }

    /// Closes every connection and waits (at most a second) until the peers were told.
    pub async fn shutdown(&self) {
        self.close();
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.shared.endpoint.wait_idle()).await;
    }

    async fn dial(
        shared: Arc<Shared>,
        endpoint: quinn::Endpoint,
        peer: PeerId,
        remote: SocketAddr,
        session_hex: String,
    ) -> Result<quinn::Connection, ConnectError> {
        let crypto = tls::client_config(&shared.identity, peer)
            .map_err(|e| ConnectError::HandshakeRefused(e.to_string()))?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
            .map_err(|e| ConnectError::HandshakeRefused(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config()));
        let connecting = endpoint
            .connect_with(config, remote, &session_server_name(&session_hex))
            .map_err(|e| ConnectError::HandshakeRefused(e.to_string()))?;
        connecting.await.map_err(handshake_error)
    }

    async fn await_dialer(
        shared: Arc<Shared>,
        peer: PeerId,
        session_hex: String,
    ) -> Result<quinn::Connection, ConnectError> {
        let name = session_server_name(&session_hex);
        let rx = {
            let mut rendezvous = shared.rendezvous.lock().unwrap_or_else(|e| e.into_inner());
            match rendezvous.arrived.remove(&name) {
                Some((_, delivery)) => {
                    let (tx, rx) = oneshot::channel();
                    let _ = tx.send(delivery);
                    rx
                }
                None => {
                    let (tx, rx) = oneshot::channel();
                    rendezvous.waiting.insert(name.clone(), tx);
                    rx
                }
            }
        };
        let delivery = match tokio::time::timeout(RESPONDER_WAIT, rx).await {
            Ok(Ok(delivery)) => delivery,
            Ok(Err(_)) => return Err(ConnectError::Shutdown),
            Err(_) => {
                let mut rendezvous = shared.rendezvous.lock().unwrap_or_else(|e| e.into_inner());
                rendezvous.waiting.remove(&name);
                return Err(ConnectError::Timeout(
                    "waiting for the dialer's QUIC handshake".into(),
                ));
            }
        };
        let conn = delivery.map_err(ConnectError::HandshakeRefused)?;
        match peer_of(&conn) {
            Some(id) if id == peer => Ok(conn),
            Some(id) => {
                conn.close(1u32.into(), b"unexpected peer key");
                Err(ConnectError::HandshakeRefused(format!(
                    "the dialer presented key {id}, but the offer came from {peer}"
                )))
            }
            None => {
                conn.close(1u32.into(), b"no peer key");
                Err(ConnectError::HandshakeRefused(
                    "the dialer presented no Ed25519 key".into(),
                ))
            }
        }
    }
}

/// Whether this side opens the QUIC connection. The dialer does, except when spraying: several
/// of the spraying side's sockets may get through, and only that side knows which one it
/// chose, so it opens the connection from there.
fn opens_quic(attempt: &Attempt) -> bool {
    if attempt.strategy == Some(Strategy::Spray) {
        let symmetric = attempt
            .local_nat
            .as_ref()
            .is_some_and(|nat| nat.nat_type == Some(NatType::Symmetric));
        return symmetric;
    }
    attempt.role == Role::Dialer
}

fn handshake_error(e: quinn::ConnectionError) -> ConnectError {
    match e {
        quinn::ConnectionError::TimedOut => ConnectError::Timeout("QUIC handshake".into()),
        other => ConnectError::HandshakeRefused(other.to_string()),
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, rendezvous: Arc<Mutex<Rendezvous>>) {
    while let Some(incoming) = endpoint.accept().await {
        let rendezvous = rendezvous.clone();
        tokio::spawn(async move {
            let Ok(mut connecting) = incoming.accept() else {
                return;
            };
            let Some(name) = connecting.handshake_data().await.ok().and_then(|data| {
                data.downcast::<quinn::crypto::rustls::HandshakeData>()
                    .ok()?
                    .server_name
            }) else {
                return;
            };
            let delivery = connecting.await.map_err(|e| e.to_string());
            rendezvous
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .deliver(name, delivery);
        });
    }
}

impl Service<Attempt> for QuicTransport {
    type Response = Connection;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Connection, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, attempt: Attempt) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let established = this
                .establish(&attempt, Protocol::Quic, "QuicTransport")
                .await?;
            Ok(established.into_connection(&attempt, Protocol::Quic))
        })
    }
}

/// A QUIC connection made for an attempt, before it becomes a fog [`Connection`].
pub(crate) struct Established {
    pub(crate) quic: QuicConnection,
    pub(crate) path: SelectedPath,
    pub(crate) peer: PeerId,
    /// Whether this side opened the QUIC connection (the TLS client).
    pub(crate) client: bool,
}

impl Established {
    fn into_connection(self, attempt: &Attempt, protocol: Protocol) -> Connection {
        crate::connected(
            attempt,
            self.peer,
            self.path.kind,
            Box::new(self.quic),
            protocol,
        )
    }
}

impl QuicTransport {
    /// The QUIC connection of `attempt`, negotiated as `protocol` (QUIC, or a protocol that
    /// runs its streams over QUIC) by the transport named `layer`.
    pub(crate) async fn establish(
        &self,
        attempt: &Attempt,
        protocol: Protocol,
        layer: &'static str,
    ) -> Result<Established, BoxError> {
        let shared = self.shared.clone();
        let (path, peer) = crate::path_and_peer(attempt, protocol, layer)?;
        // A path found on one of the spraying sockets: QUIC runs on that socket.
        let (dedicated, socket) = match &attempt.path_socket {
            Some(PathSocket(prober)) => {
                let spray = prober
                    .clone()
                    .as_any()
                    .downcast::<SpraySocket>()
                    .map_err(|_| ConnectError::MissingInput {
                        layer,
                        needs: "a path socket made by FogSocket::spray_sockets",
                    })?;
                let socket = spray.adopt();
                let endpoint = endpoint_on(socket.clone(), &shared.identity, &shared.rendezvous)?;
                (Some(endpoint), socket)
            }
            None => (None, shared.socket.clone()),
        };
        let session = attempt.session.id_hex();
        let client = opens_quic(attempt);
        let conn = if client {
            let endpoint = dedicated.clone().unwrap_or_else(|| shared.endpoint.clone());
            // The peer's route when the punch layer made one: the path under it may change.
            let remote = socket.route_of(&peer).unwrap_or(path.remote.addr);
            Self::dial(shared, endpoint, peer, remote, session).await?
        } else {
            Self::await_dialer(shared, peer, session).await?
        };
        Ok(Established {
            quic: QuicConnection {
                conn,
                local: path.local,
                socket,
                dedicated,
                _relays: attempt.relays.clone(),
                _lifeline: attempt.lifeline.clone(),
            },
            path,
            peer,
            client,
        })
    }
}

/// A quinn connection as a fog transport connection.
pub(crate) struct QuicConnection {
    pub(crate) conn: quinn::Connection,
    local: SocketAddr,
    /// The socket under the connection, which knows where the peer's route points now.
    pub(crate) socket: Arc<FogSocket>,
    /// The relay allocations the connection may run over: they live as long as it does.
    _relays: fog_core::RelaySlot,
    /// Keeps the watch over the connection's path going.
    _lifeline: fog_core::Lifeline,
    /// The endpoint on the path's own socket (birthday spraying), closed with the connection.
    dedicated: Option<quinn::Endpoint>,
}

impl Drop for QuicConnection {
    fn drop(&mut self) {
        if let Some(endpoint) = &self.dedicated {
            endpoint.close(0u32.into(), b"connection dropped");
        }
    }
}

fn closed(e: quinn::ConnectionError) -> ConnectionError {
    ConnectionError::Closed(e.to_string())
}

impl TransportConnection for QuicConnection {
    fn open_bi(&self) -> BoxFuture<'_, Result<(SendHalf, RecvHalf), ConnectionError>> {
        Box::pin(async move {
            let (send, recv) = self.conn.open_bi().await.map_err(closed)?;
            Ok((Box::new(send) as SendHalf, Box::new(recv) as RecvHalf))
        })
    }

    fn accept_bi(&self) -> BoxFuture<'_, Result<(SendHalf, RecvHalf), ConnectionError>> {
        Box::pin(async move {
            let (send, recv) = self.conn.accept_bi().await.map_err(closed)?;
            Ok((Box::new(send) as SendHalf, Box::new(recv) as RecvHalf))
        })
    }

    fn counters(&self) -> TransportCounters {
        let stats = self.conn.stats();
        TransportCounters {
            bytes_sent: stats.udp_tx.bytes,
            bytes_received: stats.udp_rx.bytes,
            rtt: Some(stats.path.rtt),
        }
    }

    fn remote_addr(&self) -> SocketAddr {
        self.socket.peer_behind(self.conn.remote_address()).0
    }

    fn relay_addr(&self) -> Option<SocketAddr> {
        self.socket.peer_behind(self.conn.remote_address()).1
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn close(&self, reason: &str) {
        self.conn.close(0u32.into(), reason.as_bytes());
    }

    fn send_datagram(&self, datagram: &[u8]) -> Result<(), ConnectionError> {
        use quinn::SendDatagramError as E;
        self.conn
            .send_datagram(bytes::Bytes::copy_from_slice(datagram))
            .map_err(|e| match e {
                E::TooLarge => ConnectionError::TooLarge {
                    size: datagram.len(),
                    max: self.conn.max_datagram_size().unwrap_or(0),
                },
                E::UnsupportedByPeer | E::Disabled => ConnectionError::Unsupported {
                    protocol: "quic",
                    what: "datagrams (the peer turned them off)",
                },
                E::ConnectionLost(e) => closed(e),
            })
    }

    fn recv_datagram(&self) -> BoxFuture<'_, Result<Vec<u8>, ConnectionError>> {
        Box::pin(async move {
            let datagram = self.conn.read_datagram().await.map_err(closed)?;
            Ok(datagram.to_vec())
        })
    }

    fn max_datagram_size(&self) -> Option<usize> {
        self.conn.max_datagram_size()
    }

    fn closed(&self) -> BoxFuture<'_, String> {
        Box::pin(async move { self.conn.closed().await.to_string() })
    }
}
