//! The front door: a [`Node`] registers at a signal server, dials peers by id or name, and
//! accepts the peers that dial it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use fog_core::{
    Attempt, BoxError, ConnectError, Connection, Event, EventBus, Identity, PeerId, PeerRef,
    Protocol, RemoteInfo, Signaller,
};
use fog_layers::nat_probe::{NatReport, ProbeConfig};
use fog_layers::{NatCache, PunchConfig};
use fog_transports::rtc::IceServers;
use fog_transports::{
    FogSocket, KcpTransport, QuicTransport, RtcTransport, SctpTransport, UdpTransport, UtpTransport,
};
use futures_util::future::BoxFuture;
use futures_util::Stream;
use tokio::sync::{broadcast, mpsc, Mutex};
use tower::ServiceExt;

use crate::known_peers::{KnownPeers, Verdict};
use crate::preset::{default_stack, Stack, StackParts};
use crate::signal_client::{IncomingOffer, SignalClient};

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No signal server URL was given.
    #[error("no signal server: call .signal(\"ws://HOST:7600/ws\")")]
    NoSignal,
    /// The key file could not be used.
    #[error(transparent)]
    Identity(#[from] fog_core::IdentityError),
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The transport could not start.
    #[error("transport: {0}")]
    Transport(BoxError),
    /// The signal server refused or could not be reached.
    #[error("{0}")]
    Signal(#[from] ConnectError),
    /// A setting is malformed.
    #[error("{0}")]
    Config(String),
    /// The known-peers file could not be read.
    #[error("known peers {path}: {source}")]
    KnownPeers {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

type StackFactory = Arc<dyn Fn(&StackParts) -> Stack + Send + Sync>;

/// Builds a [`Node`].
pub struct NodeBuilder {
    signal: Vec<String>,
    name: Option<String>,
    identity: Option<Identity>,
    key_file: Option<PathBuf>,
    bind: SocketAddr,
    protocols: Vec<Protocol>,
    punch: PunchConfig,
    connect_timeout: Duration,
    stack: StackFactory,
    events: EventBus,
    stun: Option<Vec<SocketAddr>>,
    nat_refresh: Duration,
    turn: Vec<fog_core::signal::RelayGrant>,
    known_peers: Option<PathBuf>,
    accept_new_keys: bool,
}

impl Default for NodeBuilder {
    fn default() -> Self {
        NodeBuilder {
            signal: Vec::new(),
            name: None,
            identity: None,
            key_file: None,
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            protocols: vec![
                Protocol::Quic,
                Protocol::Kcp,
                Protocol::Utp,
                Protocol::Sctp,
                Protocol::Udp,
                Protocol::Rtc,
            ],
            punch: PunchConfig::default(),
            connect_timeout: Duration::from_secs(20),
            stack: Arc::new(default_stack),
            events: EventBus::new(),
            stun: None,
            nat_refresh: Duration::from_secs(300),
            turn: Vec::new(),
            known_peers: None,
            accept_new_keys: false,
        }
    }
}

impl NodeBuilder {
    /// The signal server, for example `ws://127.0.0.1:7600/ws`. Call it again for more
    /// servers: the node registers at the first that accepts, and when its connection breaks
    /// it registers again at the next (see [`SignalClient`]).
    pub fn signal(mut self, url: impl Into<String>) -> Self {
        self.signal.push(url.into());
        self
    }

    /// A name to register, like `1e:34:a1:44:2c:1c`; refused when another key holds it.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Loads the node key from `path`, creating it (mode 0600) on first use. Without a key file
    /// or [`identity`](Self::identity), the node uses a fresh key for this run.
    pub fn key(mut self, path: impl Into<PathBuf>) -> Self {
        self.key_file = Some(path.into());
        self
    }

    /// Remembers the key behind every name this node connects to in `path` (one `NAME
    /// PEER_ID` per line), and refuses a name that later answers with another key. With a
    /// [`key`](Self::key) file and no path of its own, the node keeps `known_peers` beside the
    /// key.
    pub fn known_peers(mut self, path: impl Into<PathBuf>) -> Self {
        self.known_peers = Some(path.into());
        self
    }

    /// Takes a new key for a known name (and records it) instead of refusing the connection.
    pub fn accept_new_keys(mut self, accept: bool) -> Self {
        self.accept_new_keys = accept;
        self
    }

    /// Uses `identity` as the node key.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// The local UDP address (default `0.0.0.0:0`).
    pub fn bind_addr(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Protocols this node asks for and accepts, preferred first (default QUIC, KCP, uTP). A
    /// dial uses the first of its list that the peer accepts.
    pub fn protocols(mut self, protocols: impl IntoIterator<Item = Protocol>) -> Self {
        self.protocols = protocols.into_iter().collect();
        self
    }

    /// Pace and patience of connectivity checks.
    pub fn punch(mut self, config: PunchConfig) -> Self {
        self.punch = config;
        self
    }

    /// Upper bound of one `connect` (default 20 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Replaces the default preset with a stack of your own, built from the node's parts; the
    /// node uses it for both the connections it dials and those it answers.
    pub fn stack(mut self, make: impl Fn(&StackParts) -> Stack + Send + Sync + 'static) -> Self {
        self.stack = Arc::new(make);
        self
    }

    /// STUN servers for NAT detection, instead of those the signal server announces; an empty
    /// list turns NAT detection off.
    pub fn stun(mut self, servers: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.stun = Some(servers.into_iter().collect());
        self
    }

    /// A TURN server of your own (coturn, for example) with long-term credentials, used beside
    /// the relays the signal server grants: `url` is `turn:HOST:PORT?transport=udp|tcp`.
    /// Fails on a malformed URL.
    pub fn turn(
        mut self,
        url: &str,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Result<Self, NodeError> {
        let parsed: fog_core::TurnUrl = url
            .parse()
            .map_err(|e: String| NodeError::Config(format!("--turn: {e}")))?;
        self.turn.push(fog_core::signal::RelayGrant {
            url: parsed.to_string(),
            username: username.into(),
            password: password.into(),
            expires: u64::MAX,
        });
        Ok(self)
    }

    /// How long a NAT verdict is trusted before it is probed again (default 5 min; a change of
    /// the host's addresses re-probes at once).
    pub fn nat_refresh(mut self, max_age: Duration) -> Self {
        self.nat_refresh = max_age;
        self
    }

    /// A receiver of the node's events from before it binds, so the registration is seen too.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Binds the socket, registers at the signal server and starts answering offers.
    pub async fn bind(self) -> Result<Node, NodeError> {
        if self.signal.is_empty() {
            return Err(NodeError::NoSignal);
        }
        let identity = match (&self.identity, &self.key_file) {
            (Some(identity), _) => identity.clone(),
            (None, Some(path)) => Identity::load_or_generate(path)?,
            (None, None) => Identity::generate(),
        };
        let known_path = self.known_peers.clone().or_else(|| {
            self.key_file
                .as_ref()
                .map(|key| key.with_file_name("known_peers"))
        });
        let known = known_path
            .map(|path| {
                KnownPeers::open(&path).map_err(|source| NodeError::KnownPeers { path, source })
            })
            .transpose()?;
        let events = self.events.clone();
        let socket = FogSocket::bind(self.bind)
            .await
            .map_err(|source| NodeError::Bind {
                addr: self.bind,
                source,
            })?;
        let transport =
            QuicTransport::new(socket.clone(), identity.clone()).map_err(NodeError::Transport)?;
        let kcp = KcpTransport::new(socket.clone(), identity.clone());
        let utp =
            UtpTransport::new(socket.clone(), identity.clone()).map_err(NodeError::Transport)?;
        let sctp = SctpTransport::new(socket.clone(), identity.clone());
        let udp = UdpTransport::new(socket.clone(), transport.clone());
        let (signal_client, offers) =
            SignalClient::connect_any(&self.signal, &identity, self.name.clone(), events.clone())
                .await?;
        let stun = match self.stun.clone() {
            Some(servers) => servers,
            None => {
                let registration = signal_client.registration();
                announced_stun(&registration.url, &registration.stun).await
            }
        };
        let nat = (!stun.is_empty())
            .then(|| NatCache::new(ProbeConfig::new(stun), self.nat_refresh, events.clone()));
        let nat_refresher = nat
            .as_ref()
            .map(|cache| AbortOnDrop(cache.spawn_refresher(ADDRESS_WATCH)));
        let parts = StackParts {
            socket: socket.clone(),
            signaller: Arc::new(signal_client.clone()),
            transport: transport.clone(),
            kcp,
            utp,
            sctp,
            udp,
            punch: self.punch,
            nat,
            relays: signal_client.registration().relays.clone(),
            turn: self.turn.clone(),
        };
        let stack = (self.stack)(&parts);
        let (incoming_tx, incoming_rx) = mpsc::channel(64);
        let inner = Arc::new(Inner {
            rtc: RtcTransport::new(identity.clone()),
            identity,
            name: signal_client.registration().name.clone(),
            events,
            signal: signal_client,
            socket,
            transport,
            parts,
            stack,
            protocols: self.protocols,
            connect_timeout: self.connect_timeout,
            known,
            accept_new_keys: self.accept_new_keys,
            incoming: Arc::new(Mutex::new(incoming_rx)),
            _nat_refresher: nat_refresher,
        });
        let responder = tokio::spawn(answer_offers(Arc::downgrade(&inner), offers, incoming_tx));
        Ok(Node {
            inner,
            responder: Arc::new(AbortOnDrop(responder)),
        })
    }
}

struct Inner {
    identity: Identity,
    /// WebRTC, which brings its own ICE and so runs beside the stack.
    rtc: RtcTransport,
    name: Option<String>,
    events: EventBus,
    signal: SignalClient,
    socket: Arc<FogSocket>,
    transport: QuicTransport,
    parts: StackParts,
    stack: Stack,
    protocols: Vec<Protocol>,
    connect_timeout: Duration,
    known: Option<KnownPeers>,
    accept_new_keys: bool,
    incoming: Arc<Mutex<mpsc::Receiver<Connection>>>,
    _nat_refresher: Option<AbortOnDrop>,
}

impl Inner {
    /// The ICE servers for WebRTC with `peer`: the node's STUN servers, its own TURN servers
    /// and the relays the signal server grants for this peer.
    async fn ice_servers(&self, peer: &PeerRef) -> IceServers {
        let mut turn = self.parts.turn.clone();
        if !self.parts.relays.is_empty() {
            match self.signal.relay_credentials(peer.clone()).await {
                Ok(grants) => turn.extend(grants),
                Err(e) => tracing::debug!(error = %e, "no relay credentials for WebRTC"),
            }
        }
        IceServers {
            stun: self.parts.stun(),
            turn,
        }
    }
}

/// How often the host's addresses are compared, to re-probe the NAT when they change.
const ADDRESS_WATCH: Duration = Duration::from_secs(5);

/// The STUN servers the signal server announced, resolved. A wildcard address means "the signal
/// server's own host".
async fn announced_stun(signal_url: &str, announced: &[String]) -> Vec<SocketAddr> {
    let signal_host = signal_url
        .parse::<tokio_tungstenite::tungstenite::http::Uri>()
        .ok()
        .and_then(|uri| uri.host().map(|h| h.trim_matches(['[', ']']).to_string()));
    let signal_ip = match &signal_host {
        Some(host) => tokio::net::lookup_host((host.as_str(), 0))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .map(|a| a.ip()),
        None => None,
    };
    let mut servers = Vec::new();
    for entry in announced {
        let Ok(mut addrs) = tokio::net::lookup_host(entry.as_str()).await else {
            tracing::warn!(%entry, "cannot resolve announced STUN server");
            continue;
        };
        if let Some(mut addr) = addrs.next() {
            if addr.ip().is_unspecified() {
                match signal_ip {
                    Some(ip) => addr.set_ip(ip),
                    None => continue,
                }
            }
            servers.push(addr);
        }
    }
    servers
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A fog node. Cheap to clone; stops when the last clone is dropped or on
/// [`shutdown`](Node::shutdown).
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
    responder: Arc<AbortOnDrop>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.peer_id())
            .field("name", &self.inner.name)
            .finish()
    }
}

impl Node {
    /// A builder; `signal` is required.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.identity.peer_id()
    }

    /// The name registered at the signal server.
    pub fn name(&self) -> Option<&str> {
        self.inner.name.as_deref()
    }

    /// The local UDP socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.socket.local_addr()
    }

    /// STUN servers and relays the signal server announced.
    pub fn registration(&self) -> &crate::signal_client::Registration {
        self.inner.signal.registration()
    }

    /// The last NAT verdict, if the node has one yet.
    pub fn nat(&self) -> Option<NatReport> {
        self.inner
            .parts
            .nat
            .as_ref()
            .and_then(|cache| cache.current())
    }

    /// A NAT verdict, probing now when there is none yet; `None` without STUN servers.
    pub async fn nat_profile(&self) -> Option<NatReport> {
        self.inner.parts.nat.as_ref()?.get().await.ok()
    }

    /// The node's host candidates: every usable interface address with the node's port.
    pub fn host_candidates(&self) -> Vec<fog_core::Candidate> {
        fog_layers::gather::host_candidates(
            &fog_layers::gather::interface_addresses(self.local_addr()),
            self.local_addr().port(),
        )
    }

    /// A receiver of every event from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// The parts a custom stack is built from.
    pub fn parts(&self) -> &StackParts {
        &self.inner.parts
    }

    /// A new dialling attempt to `peer`, as `connect` makes it, for running a custom stack.
    pub fn attempt(&self, peer: PeerRef) -> Attempt {
        let mut attempt = Attempt::dial(self.peer_id(), peer, self.inner.events.clone());
        attempt.protocols = self.inner.protocols.clone();
        attempt
    }

    /// Connects to `peer` (a peer id or a registered name) through the node's stack.
    pub async fn connect(&self, peer: impl AsRef<str>) -> Result<Connection, BoxError> {
        let peer: PeerRef = peer
            .as_ref()
            .parse()
            .map_err(|e: String| ConnectError::PeerUnknown(e))?;
        self.connect_to(peer).await
    }

    /// Connects to `peer` through the node's stack, or over WebRTC when that is the node's
    /// first protocol (WebRTC brings its own ICE, so it needs only the signal server).
    pub async fn connect_to(&self, peer: PeerRef) -> Result<Connection, BoxError> {
        let rtc = self.inner.protocols.first() == Some(&Protocol::Rtc);
        let timeout = if rtc {
            self.inner.connect_timeout.max(RTC_CONNECT_TIMEOUT)
        } else {
            self.inner.connect_timeout
        };
        let dial: BoxFuture<'_, Result<Connection, BoxError>> = if rtc {
            let inner = self.inner.clone();
            let target = peer.clone();
            Box::pin(async move {
                let ice = inner.ice_servers(&target).await;
                Ok(inner
                    .rtc
                    .dial(&inner.signal, target, &ice, inner.events.clone())
                    .await?)
            })
        } else {
            let attempt = self.attempt(peer.clone());
            Box::pin(self.inner.stack.clone().oneshot(attempt))
        };
        let result = match tokio::time::timeout(timeout, dial).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout(format!(
                "connect to {peer} took over {timeout:?}"
            ))
            .into()),
        };
        let result = result.and_then(|conn| self.check_known(&peer, conn));
        if let Err(e) = &result {
            self.inner.events.emit(Event::Error {
                peer: match &peer {
                    PeerRef::Id(id) => Some(*id),
                    PeerRef::Name(_) => None,
                },
                message: e.to_string(),
            });
        }
        result
    }

    /// Checks the key that answered for a name against the known peers (and records a new
    /// one); a changed key closes the connection unless the node accepts new keys.
    fn check_known(&self, peer: &PeerRef, conn: Connection) -> Result<Connection, BoxError> {
        let (PeerRef::Name(name), Some(known)) = (peer, &self.inner.known) else {
            return Ok(conn);
        };
        match known.check(name, conn.peer_id(), self.inner.accept_new_keys) {
            Ok(Verdict::Changed { was }) if !self.inner.accept_new_keys => {
                conn.close("the name belongs to another key");
                Err(ConnectError::NameKeyChanged(format!(
                    "name {name} now belongs to another key: {} (it was {was}, as {} records); \
                     accept it with --accept-new-key",
                    conn.peer_id(),
                    known.path().display()
                ))
                .into())
            }
            Ok(_) => Ok(conn),
            Err(e) => {
                tracing::warn!(error = %e, path = %known.path().display(), "cannot record a known peer");
                Ok(conn)
            }
        }
    }

    /// The connections peers dial to this node. Several `Incoming` handles share one queue.
    pub fn incoming(&self) -> Incoming {
        Incoming {
            queue: self.inner.incoming.clone(),
            next: None,
        }
    }

    /// Closes every connection, the endpoint and the signal session.
    pub async fn shutdown(self) {
        self.responder.0.abort();
        self.inner.transport.shutdown().await;
    }
}

/// The least time a WebRTC connect gets: its handshakes retransmit slowly (DTLS after 1 s,
/// doubling; SCTP's INIT after 3 s), and a dial tries again when they stall, so on a lossy
/// path it needs longer than fog's own.
const RTC_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Most offers answered at once; more are refused as busy, so a flood of offers cannot make
/// the node run unbounded attempts.
const MAX_ANSWERING: usize = 64;

async fn answer_offers(
    node: std::sync::Weak<Inner>,
    mut offers: mpsc::Receiver<IncomingOffer>,
    incoming: mpsc::Sender<Connection>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ANSWERING));
    while let Some(offer) = offers.recv().await {
        let Some(inner) = node.upgrade() else { return };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            inner.signal.reject(
                offer.from,
                &offer.session,
                "busy: too many connections being set up",
            );
            continue;
        };
        inner.events.emit(Event::OfferReceived { peer: offer.from });
        if let Some(description) = offer.body.rtc.clone() {
            if !inner.protocols.contains(&Protocol::Rtc) {
                inner
                    .signal
                    .reject(offer.from, &offer.session, "this node does not accept rtc");
                continue;
            }
            let incoming = incoming.clone();
            let timeout = inner.connect_timeout.max(RTC_CONNECT_TIMEOUT);
            tokio::spawn(async move {
                let _slot = slot;
                let peer = offer.from;
                let answering = async {
                    let ice = inner.ice_servers(&PeerRef::Id(peer)).await;
                    inner
                        .rtc
                        .answer(
                            &inner.signal,
                            peer,
                            offer.from_name,
                            offer.session,
                            &description,
                            &ice,
                            inner.events.clone(),
                        )
                        .await
                };
                match tokio::time::timeout(timeout, answering).await {
                    Ok(Ok(connection)) => {
                        let _ = incoming.send(connection).await;
                    }
                    Ok(Err(e)) => {
                        inner.signal.reject(peer, &offer.session, &e.to_string());
                        inner.events.emit(Event::Error {
                            peer: Some(peer),
                            message: e.to_string(),
                        });
                    }
                    Err(_) => inner.events.emit(Event::Error {
                        peer: Some(peer),
                        message: "answering the WebRTC offer timed out".into(),
                    }),
                }
            });
            continue;
        }
        let remote = RemoteInfo {
            peer_id: offer.from,
            name: offer.from_name,
            candidates: offer.body.candidates,
            nat: offer.body.nat,
            protocols: offer.body.protocols,
            trickle: offer.body.trickle,
        };
        let mut attempt = Attempt::respond(
            inner.identity.peer_id(),
            offer.session,
            remote,
            inner.events.clone(),
        );
        attempt.protocols = inner.protocols.clone();
        let stack = inner.stack.clone();
        let signal = inner.signal.clone();
        let events = inner.events.clone();
        let timeout = inner.connect_timeout;
        let incoming = incoming.clone();
        drop(inner);
        tokio::spawn(async move {
            let _slot = slot;
            let peer = offer.from;
            let session = attempt.session;
            match tokio::time::timeout(timeout, stack.oneshot(attempt)).await {
                Ok(Ok(connection)) => {
                    let _ = incoming.send(connection).await;
                }
                Ok(Err(e)) => {
                    signal.reject(peer, &session, &e.to_string());
                    events.emit(Event::Error {
                        peer: Some(peer),
                        message: e.to_string(),
                    });
                }
                Err(_) => events.emit(Event::Error {
                    peer: Some(peer),
                    message: "answering the offer timed out".into(),
                }),
            }
        });
    }
}

/// A stream of connections from peers that dialled this node.
pub struct Incoming {
    queue: Arc<Mutex<mpsc::Receiver<Connection>>>,
    next: Option<futures_util::future::BoxFuture<'static, Option<Connection>>>,
}

impl Stream for Incoming {
    type Item = Connection;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Connection>> {
        if self.next.is_none() {
            let queue = self.queue.clone();
            self.next = Some(Box::pin(async move { queue.lock().await.recv().await }));
        }
        let polled = self.next.as_mut().expect("set above").as_mut().poll(cx);
        if polled.is_ready() {
            self.next = None;
        }
        polled
    }
}
