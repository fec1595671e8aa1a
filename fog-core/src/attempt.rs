//! The request that flows down the connection stack: one attempt to connect to one peer.
//!
//! Every layer takes an [`Attempt`] and passes it on with what it learned filled in, so layers
//! can be left out or reordered and later layers (NAT probe, port prediction, strategy, relay)
//! have a field waiting for them.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventBus};
use crate::identity::PeerId;

/// Longest peer name the signal server accepts.
pub const MAX_NAME_LEN: usize = 64;

/// Checks that `name` is a usable peer name: 1 to 64 characters of letters, digits, `:`, `.`,
/// `_` and `-` (the original FogConnect used names like `1e:34:a1:44:2c:1c`).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "a peer name has 1 to {MAX_NAME_LEN} characters, got {}",
            name.len()
        ));
    }
    if name.parse::<PeerId>().is_ok() {
        return Err("a peer name may not have the form of a peer id".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '_' | '-')))
    {
        return Err(format!(
            "a peer name may hold letters, digits, ':', '.', '_' and '-', not {c:?}"
        ));
    }
    Ok(())
}

/// Whom to connect to: a peer id, or a name registered at the signal server.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PeerRef {
    /// A peer id: the remote key is known before dialling.
    Id(PeerId),
    /// A name the signal server resolves to a peer id.
    Name(String),
}

impl FromStr for PeerRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(id) = s.parse::<PeerId>() {
            return Ok(PeerRef::Id(id));
        }
        validate_name(s)?;
        Ok(PeerRef::Name(s.to_string()))
    }
}

impl From<PeerId> for PeerRef {
    fn from(id: PeerId) -> Self {
        PeerRef::Id(id)
    }
}

impl fmt::Display for PeerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerRef::Id(id) => write!(f, "{id}"),
            PeerRef::Name(name) => f.write_str(name),
        }
    }
}

/// Which side of the attempt this node plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// This node asked for the connection.
    Dialer,
    /// The remote peer asked; this node answers an offer.
    Responder,
}

/// The kind of a candidate address, as in ICE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CandidateKind {
    /// An address of one of the node's own interfaces.
    Host,
    /// The node's address as a STUN server sees it (the NAT's public side).
    Srflx,
    /// A port the NAT is predicted to open next.
    Predicted,
    /// The peer's address as our socket saw it in one of its checks.
    Prflx,
    /// An address allocated on a relay.
    Relay,
}

impl fmt::Display for CandidateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CandidateKind::Host => "host",
            CandidateKind::Srflx => "srflx",
            CandidateKind::Predicted => "predicted",
            CandidateKind::Prflx => "prflx",
            CandidateKind::Relay => "relay",
        })
    }
}

/// An address a peer may be reached on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Candidate {
    /// The address.
    pub addr: SocketAddr,
    /// Where it came from.
    pub kind: CandidateKind,
    /// Higher is tried first.
    pub priority: u32,
}

impl Candidate {
    /// A server-reflexive candidate: below host candidates, so a shared LAN wins.
    pub fn srflx(addr: SocketAddr) -> Self {
        Candidate {
            addr,
            kind: CandidateKind::Srflx,
            priority: 60 << 8,
        }
    }

    /// An address allocated on a relay: the last resort.
    pub fn relay(addr: SocketAddr) -> Self {
        Candidate {
            addr,
            kind: CandidateKind::Relay,
            priority: 5 << 8,
        }
    }

    /// A host candidate; private LAN addresses rank above public ones, loopback last.
    pub fn host(addr: SocketAddr) -> Self {
        let ip = addr.ip();
        let rank = if ip.is_loopback() {
            10
        } else if is_private(&ip) {
            120
        } else {
            100
        };
        let family = if addr.is_ipv4() { 1 } else { 0 };
        Candidate {
            addr,
            kind: CandidateKind::Host,
            priority: (rank << 8) | family,
        }
    }
}

/// The public IP among `candidates`: that of the first server-reflexive one.
pub fn public_ip(candidates: &[Candidate]) -> Option<std::net::IpAddr> {
    candidates
        .iter()
        .find(|c| c.kind == CandidateKind::Srflx)
        .map(|c| c.addr.ip())
}

/// Addresses a peer can only reach on this host or its LAN: loopback, private, link-local.
pub fn is_local_only(ip: std::net::IpAddr) -> bool {
    ip.is_loopback() || is_private(&ip)
}

fn is_private(ip: &std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_private() || v4.is_link_local(),
        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// The transport protocols fog can carry a connection over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// QUIC (quinn), the default.
    Quic,
    /// WebRTC data channels.
    Rtc,
    /// KCP.
    Kcp,
    /// uTP.
    Utp,
    /// SCTP.
    Sctp,
    /// Raw UDP datagrams.
    Udp,
}

impl Protocol {
    /// All protocols in fog's order of preference.
    pub const ALL: [Protocol; 6] = [
        Protocol::Quic,
        Protocol::Rtc,
        Protocol::Kcp,
        Protocol::Utp,
        Protocol::Sctp,
        Protocol::Udp,
    ];

    /// The lowercase name used on the command line and in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Quic => "quic",
            Protocol::Rtc => "rtc",
            Protocol::Kcp => "kcp",
            Protocol::Utp => "utp",
            Protocol::Sctp => "sctp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown protocol {s:?} (quic, rtc, kcp, utp, sctp, udp)"))
    }
}

pub use crate::nat::NatProfile;

/// The plan for reaching the peer, chosen from the pair of NAT profiles by a strategy layer.
/// Without one, the punch layer probes every candidate pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// One side takes unsolicited packets (open or full cone): checks from both sides find the
    /// path, the open side learning the other's address from its checks.
    Direct,
    /// Both behind cone NATs: simultaneous checks to each other's public addresses.
    Punch,
    /// A sequential symmetric NAT: checks also go to the ports it is predicted to open next.
    Predict,
    /// A random symmetric NAT against a port-restricted cone: many sockets against many ports
    /// (birthday spraying).
    Spray,
    /// No direct path can exist (both symmetric with a random one, or UDP blocked): relay.
    RelayOnly,
}

impl Strategy {
    /// The name used in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Direct => "direct",
            Strategy::Punch => "punch",
            Strategy::Predict => "predict",
            Strategy::Spray => "spray",
            Strategy::RelayOnly => "relay-only",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the chosen path is direct or through a relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Peer to peer.
    Direct,
    /// Through a relay server.
    Relay,
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathKind::Direct => "direct",
            PathKind::Relay => "relay",
        })
    }
}

/// The network path a connection runs over, chosen by a connectivity check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelectedPath {
    /// The remote address packets go to.
    pub remote: Candidate,
    /// The local socket's address.
    pub local: SocketAddr,
    /// Direct or relayed.
    pub kind: PathKind,
    /// Round trip of the check that chose it.
    pub rtt: Duration,
}

/// The socket a path leaves from, when it is not the node's main socket.
#[derive(Clone)]
pub struct PathSocket(pub std::sync::Arc<dyn crate::probe::Prober>);

impl fmt::Debug for PathSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PathSocket({})", self.0.local_addr())
    }
}

/// The relay allocations of an attempt, filled in the background by a relay layer, and made
/// again while its connection lives. Clones share the list.
#[derive(Clone)]
pub struct RelaySlot(std::sync::Arc<tokio::sync::watch::Sender<RelayList>>);

type RelayList = Vec<std::sync::Arc<dyn crate::probe::RelayHandle>>;

impl Default for RelaySlot {
    fn default() -> Self {
        RelaySlot(std::sync::Arc::new(tokio::sync::watch::Sender::new(
            Vec::new(),
        )))
    }
}

impl RelaySlot {
    /// Adds an allocation.
    pub fn push(&self, relay: std::sync::Arc<dyn crate::probe::RelayHandle>) {
        self.0.send_modify(|list| list.push(relay));
    }

    /// Puts `relay` in the place of the allocation on the same relay server (or adds it).
    pub fn replace(&self, relay: std::sync::Arc<dyn crate::probe::RelayHandle>) {
        self.0.send_modify(|list| {
            list.retain(|r| r.server() != relay.server());
            list.push(relay);
        });
    }

    /// The allocations so far.
    pub fn all(&self) -> Vec<std::sync::Arc<dyn crate::probe::RelayHandle>> {
        self.0.borrow().clone()
    }

    /// A watch that wakes when the allocations change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<RelayList> {
        self.0.subscribe()
    }
}

impl fmt::Debug for RelaySlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let relays: Vec<SocketAddr> = self.all().iter().map(|r| r.relayed_addr()).collect();
        write!(f, "RelaySlot({relays:?})")
    }
}

/// Held by an attempt and by the connection it becomes; [`Lifeline::alive`] says whether any
/// holder is left. Clones held for watching count too, so watchers keep a [`LifelineWatch`].
#[derive(Clone, Debug, Default)]
pub struct Lifeline(std::sync::Arc<()>);

impl Lifeline {
    /// A handle that does not keep the attempt alive.
    pub fn watch(&self) -> LifelineWatch {
        LifelineWatch(std::sync::Arc::downgrade(&self.0))
    }
}

/// Watches a [`Lifeline`] without holding it.
#[derive(Clone, Debug)]
pub struct LifelineWatch(std::sync::Weak<()>);

impl LifelineWatch {
    /// Whether the attempt or its connection still lives.
    pub fn alive(&self) -> bool {
        self.0.strong_count() > 0
    }
}

/// A path through a relay (filled by a relay layer when present).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayPath {
    /// The relay server.
    pub relay: SocketAddr,
    /// The address allocated for this node.
    pub allocated: SocketAddr,
}

/// What the remote peer told us in its offer or answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteInfo {
    /// Its key, as the signal server verified at registration.
    pub peer_id: PeerId,
    /// Its registered name, when it has one.
    pub name: Option<String>,
    /// Its candidates.
    pub candidates: Vec<Candidate>,
    /// Its NAT profile, when it knows one.
    pub nat: Option<NatProfile>,
    /// The protocols it accepts.
    pub protocols: Vec<Protocol>,
    /// It trickles more candidates after its offer or answer.
    pub trickle: bool,
}

/// Session keys of one attempt: an id and a secret that both peers learn through the signal
/// server, so that connectivity checks from anyone else are ignored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKeys {
    /// Names the attempt on both sides.
    pub id: [u8; 16],
    /// Authenticates connectivity checks of the attempt.
    pub secret: [u8; 32],
}

impl SessionKeys {
    /// Fresh random keys.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut keys = SessionKeys {
            id: [0; 16],
            secret: [0; 32],
        };
        rand::rngs::OsRng.fill_bytes(&mut keys.id);
        rand::rngs::OsRng.fill_bytes(&mut keys.secret);
        keys
    }

    /// Keys from the hex forms the signal protocol carries; `None` when either is malformed.
    pub fn from_hex(id: &str, secret: &str) -> Option<Self> {
        Some(SessionKeys {
            id: crate::hex::decode_array(id)?,
            secret: crate::hex::decode_array(secret)?,
        })
    }

    /// The id as 32 hex characters.
    pub fn id_hex(&self) -> String {
        crate::hex::encode(&self.id)
    }
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKeys({})", self.id_hex())
    }
}

/// One attempt to connect to one peer: the request type of every layer in the stack.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// Dialer or responder.
    pub role: Role,
    /// Whom the user asked for (dialer) or who offered (responder).
    pub target: PeerRef,
    /// This node's peer id.
    pub local_peer: PeerId,
    /// Session id and check secret.
    pub session: SessionKeys,
    /// Local candidates (gather layer, NAT probe, port prediction and relay layers add to it).
    pub local_candidates: Vec<Candidate>,
    /// The local NAT profile (NAT probe layer).
    pub local_nat: Option<NatProfile>,
    /// Protocols this side accepts, in order of preference.
    pub protocols: Vec<Protocol>,
    /// What the remote peer sent (signal layer; set from the offer for a responder).
    pub remote: Option<RemoteInfo>,
    /// The NAT-pair plan (strategy layer).
    pub strategy: Option<Strategy>,
    /// Relay paths (relay layer).
    pub relay_paths: Vec<RelayPath>,
    /// Local candidates still being looked up (trickle): the signal layer sends each one's
    /// result to the peer when it is in.
    pub local_gathering: Vec<crate::trickle::Gathering>,
    /// The peer's candidates that arrive after its offer or answer (signal layer).
    pub remote_trickle: Option<crate::trickle::RemoteTrickle>,
    /// Relay allocations made for this attempt (relay layer); the connection keeps them.
    pub relays: RelaySlot,
    /// Alive while the attempt or the connection it became is: background work for the
    /// connection (watching its path) stops when it dies.
    pub lifeline: Lifeline,
    /// The chosen path (punch layer or relay layer).
    pub path: Option<SelectedPath>,
    /// The socket the path leaves from, when it is not the node's main socket (birthday
    /// spraying found it on one of its extra sockets).
    pub path_socket: Option<PathSocket>,
    /// The negotiated protocol (protocol select layer).
    pub protocol: Option<Protocol>,
    /// Connectivity probes sent so far.
    pub probes_sent: u32,
    /// When the attempt began.
    pub started: Instant,
    /// Where layers report what they do.
    pub events: EventBus,
}

impl Attempt {
    /// A new attempt by this node (`local_peer`) to reach `target`.
    pub fn dial(local_peer: PeerId, target: PeerRef, events: EventBus) -> Self {
        Attempt {
            role: Role::Dialer,
            target,
            local_peer,
            session: SessionKeys::generate(),
            local_candidates: Vec::new(),
            local_nat: None,
            protocols: vec![Protocol::Quic],
            remote: None,
            strategy: None,
            relay_paths: Vec::new(),
            local_gathering: Vec::new(),
            remote_trickle: None,
            relays: RelaySlot::default(),
            lifeline: Lifeline::default(),
            path: None,
            path_socket: None,
            protocol: None,
            probes_sent: 0,
            started: Instant::now(),
            events,
        }
    }

    /// An attempt that answers `remote`'s offer for `session`.
    pub fn respond(
        local_peer: PeerId,
        session: SessionKeys,
        remote: RemoteInfo,
        events: EventBus,
    ) -> Self {
        let mut attempt = Attempt::dial(local_peer, PeerRef::Id(remote.peer_id), events);
        attempt.role = Role::Responder;
        attempt.session = session;
        attempt.remote = Some(remote);
        attempt
    }

    /// The remote peer id, when it is known (always for responders; for dialers by id, or after
    /// the signal layer resolved a name).
    pub fn remote_peer(&self) -> Option<PeerId> {
        match (&self.remote, &self.target) {
            (Some(remote), _) => Some(remote.peer_id),
            (None, PeerRef::Id(id)) => Some(*id),
            (None, PeerRef::Name(_)) => None,
        }
    }

    /// This side's public IP: from a server-reflexive candidate, else from the NAT probe.
    pub fn local_public_ip(&self) -> Option<std::net::IpAddr> {
        public_ip(&self.local_candidates)
            .or_else(|| self.local_nat.as_ref()?.public.map(|a| a.ip()))
    }

    /// The peer's public IP: from its server-reflexive candidates (offered or trickled), else
    /// from the NAT profile it sent.
    pub fn remote_public_ip(&self) -> Option<std::net::IpAddr> {
        let remote = self.remote.as_ref()?;
        public_ip(&remote.candidates)
            .or_else(|| {
                let trickled = self.remote_trickle.as_ref()?.current();
                public_ip(&trickled.candidates)
            })
            .or_else(|| remote.nat.as_ref()?.public.map(|a| a.ip()))
    }

    /// Reports `event` to subscribers.
    pub fn emit(&self, event: Event) {
        self.events.emit(event);
    }

    /// Time since the attempt began.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_refs_parse_ids_and_names() {
        let id = crate::Identity::generate().peer_id();
        assert_eq!(id.to_string().parse::<PeerRef>().unwrap(), PeerRef::Id(id));
        assert_eq!(
            "1e:34:a1:44:2c:1c".parse::<PeerRef>().unwrap(),
            PeerRef::Name("1e:34:a1:44:2c:1c".into())
        );
        assert!("".parse::<PeerRef>().is_err());
        assert!("a b".parse::<PeerRef>().is_err());
        assert!("x".repeat(65).parse::<PeerRef>().is_err());
        assert!(
            validate_name(&id.to_string()).is_err(),
            "a name may not shadow an id"
        );
    }

    #[test]
    fn lan_host_candidates_rank_above_public_and_loopback() {
        let lan = Candidate::host("10.1.0.2:5000".parse().unwrap());
        let public = Candidate::host("203.0.113.1:5000".parse().unwrap());
        let lo = Candidate::host("127.0.0.1:5000".parse().unwrap());
        assert!(lan.priority > public.priority);
        assert!(public.priority > lo.priority);
    }

    #[test]
    fn protocols_parse_case_insensitively() {
        assert_eq!("QUIC".parse::<Protocol>().unwrap(), Protocol::Quic);
        assert!("tcp".parse::<Protocol>().is_err());
    }
}
