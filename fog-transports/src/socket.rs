//! The node's one UDP socket, shared by connectivity checks and QUIC.
//!
//! Checks must leave from the very port the connection will use, or the NAT mapping they open is
//! worthless; so QUIC runs on this socket through quinn's `AsyncUdpSocket`, and the socket takes
//! the check packets out of the stream before quinn sees them. It also keeps a route per peer,
//! so that the path under a QUIC connection can change while the connection stays up.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use fog_core::stun::Binding;
use fog_core::{CheckEvent, CheckReply, PeerId, Prober, SessionKeys};
use futures_util::future::BoxFuture;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand::RngCore;
use tokio::io::ReadBuf;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::check::{self, CheckKind};

/// How long a session keeps answering checks from when it was first watched, once nobody
/// watches it any more (a watched session answers for as long as it is watched).
const ANSWER_TTL: Duration = Duration::from_secs(60);
/// First retransmission of a STUN request, and when to give up. The lookup runs beside the
/// signalling (its result is trickled), so a busy STUN server is given time rather than
/// leaving the peer without our public address.
const STUN_FIRST_RTO: Duration = Duration::from_millis(50);
const STUN_DEADLINE: Duration = Duration::from_millis(2500);
/// Unanswered checks are forgotten after this long.
const PENDING_TTL: Duration = Duration::from_secs(30);

struct Session {
    secret: [u8; 32],
    answer_until: Instant,
    events: Option<mpsc::UnboundedSender<CheckEvent>>,
    /// Where each request was first seen from: the same request from elsewhere is a replay.
    first_seen: HashMap<[u8; 12], SocketAddr>,
    /// The peer on the other side, once known: addresses that pass checks join its route.
    peer: Option<PeerId>,
}

/// Requests remembered per session for replay detection (a punch sends far fewer).
const REMEMBERED_REQUESTS: usize = 4096;

struct Pending {
    session: [u8; 16],
    remote: SocketAddr,
    sent: Instant,
}

#[derive(Default)]
struct Checks {
    sessions: HashMap<[u8; 16], Session>,
    pending: HashMap<[u8; 12], Pending>,
    /// STUN transactions of this socket, by transaction id.
    stun: HashMap<[u8; 12], oneshot::Sender<SocketAddr>>,
}

impl Checks {
    fn expire(&mut self, now: Instant) {
        self.sessions.retain(|_, s| {
            s.answer_until > now || s.events.as_ref().is_some_and(|r| !r.is_closed())
        });
        self.pending
            .retain(|_, p| now.duration_since(p.sent) < PENDING_TTL);
    }
}

/// The peers' routes: QUIC talks to a stable stand-in address per peer, and the socket sends
/// to whichever real address the route points at now. A better pair, or a relay, then takes
/// over a connection without QUIC noticing; packets from any address the route ever used are
/// handed to QUIC as coming from the stand-in.
#[derive(Default)]
struct Routes {
    by_peer: HashMap<PeerId, SocketAddr>,
    /// Stand-in address to the real address packets go to now.
    current: HashMap<SocketAddr, SocketAddr>,
    /// Every real address a route used, to its stand-in.
    by_real: HashMap<SocketAddr, Routed>,
    allocated: u32,
}

/// A real address a route used.
struct Routed {
    stand_in: SocketAddr,
    /// When a datagram last came from it: a path that carries the connection's packets is
    /// alive, even when a check on it is lost in a queue.
    heard: Option<Instant>,
}

/// Most real addresses remembered across all routes.
const MAX_ROUTED_ADDRESSES: usize = 4096;

impl Routes {
    /// A fresh stand-in from 240.0.0.0/4, which is reserved and never routed, so it cannot be
    /// confused with a real peer.
    fn stand_in(&mut self) -> SocketAddr {
        self.allocated += 1;
        let n = self.allocated;
        let ip = std::net::Ipv4Addr::new(
            240 | ((n >> 24) as u8 & 0x0f),
            (n >> 16) as u8,
            (n >> 8) as u8,
            n as u8,
        );
        SocketAddr::from((ip, 1))
    }

    /// `real` passed a check of `peer`'s: packets from it are the peer's. The route's current
    /// address is set only when there is none yet (or it is a relay path and `real` is not).
    fn learn(&mut self, peer: &PeerId, real: SocketAddr) {
        let real = canonical(real);
        let stand_in = self.stand_in_of(peer);
        self.remember(real, stand_in);
        // Until the punch layer picks, a direct pair beats one through our relay: a relay
        // path can wait a round trip on its first permission.
        match self.current.get(&stand_in) {
            None => {
                self.current.insert(stand_in, real);
            }
            Some(now) if is_relay_stand_in(*now) && !is_relay_stand_in(real) => {
                self.current.insert(stand_in, real);
            }
            Some(_) => {}
        }
    }

    fn stand_in_of(&mut self, peer: &PeerId) -> SocketAddr {
        match self.by_peer.get(peer) {
            Some(addr) => *addr,
            None => {
                let addr = self.stand_in();
                self.by_peer.insert(*peer, addr);
                addr
            }
        }
    }

    fn remember(&mut self, real: SocketAddr, stand_in: SocketAddr) {
        if self.by_real.len() >= MAX_ROUTED_ADDRESSES {
            // Keep the addresses routes use now; forget the old ones.
            let live: std::collections::HashSet<SocketAddr> =
                self.current.values().copied().collect();
            self.by_real.retain(|real, _| live.contains(real));
        }
        self.by_real
            .entry(real)
            .and_modify(|r| r.stand_in = stand_in)
            .or_insert(Routed {
                stand_in,
                heard: None,
            });
    }

    fn route(&mut self, peer: &PeerId, real: SocketAddr) -> SocketAddr {
        let real = canonical(real);
        let stand_in = self.stand_in_of(peer);
        self.remember(real, stand_in);
        self.current.insert(stand_in, real);
        stand_in
    }
}

/// IPv4-mapped IPv6 addresses as plain IPv4, so one peer has one key.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Relay allocations made from this socket, and the stand-in addresses of the peers reached
/// through them (see [`crate::relay`]).
#[derive(Default)]
struct Relays {
    /// Relay servers: what they send goes to their TURN client (of the allocation with this
    /// id), not to QUIC.
    servers: HashMap<SocketAddr, (u32, mpsc::UnboundedSender<Vec<u8>>)>,
    /// Per allocation, the queue of its send pump.
    links: HashMap<u32, mpsc::Sender<(Vec<u8>, SocketAddr)>>,
    /// Per allocation, its relay server.
    link_servers: HashMap<u32, SocketAddr>,
    /// Addresses peers allocated on their relays.
    peer_relays: std::collections::HashSet<SocketAddr>,
    by_stand_in: HashMap<SocketAddr, (u32, SocketAddr)>,
    stand_ins: HashMap<(u32, SocketAddr), SocketAddr>,
    next_allocation: u32,
    next_stand_in: u32,
}

/// First octet of relay-path stand-ins: 250.0.0.0/8 is reserved and never routed.
const RELAY_STAND_IN_OCTET: u8 = 250;
/// Most relay-path stand-ins kept at once.
const MAX_RELAY_STAND_INS: usize = 4096;

fn is_relay_stand_in(addr: SocketAddr) -> bool {
    match canonical(addr) {
        SocketAddr::V4(v4) => v4.ip().octets()[0] == RELAY_STAND_IN_OCTET,
        SocketAddr::V6(_) => false,
    }
}

/// First byte of a datagram of fog's transports other than QUIC (KCP, …), followed by the
/// protocol's byte: below 0x40, so never a QUIC packet (the fixed bit stays set), nor STUN
/// (first byte 0 or 1) nor a check (its own magic).
pub const TRANSPORT_TAG: u8 = 0x3a;
/// Datagrams queued for one transport before new ones are dropped.
const MAX_TRANSPORT_QUEUE: usize = 4096;

/// Where the datagrams of one transport go: (the sender as the transport knows it, payload).
pub type TransportDatagrams = mpsc::Receiver<(SocketAddr, Vec<u8>)>;
type TransportSender = mpsc::Sender<(SocketAddr, Vec<u8>)>;

/// A UDP socket that answers connectivity checks itself, hands tagged datagrams to the other
/// transports, and passes everything else to QUIC.
pub struct FogSocket {
    io: tokio::net::UdpSocket,
    local: SocketAddr,
    checks: Mutex<Checks>,
    routes: Mutex<Routes>,
    /// Set once the first route exists, so sockets without routes skip the lock.
    routing: std::sync::atomic::AtomicBool,
    relays: Mutex<Relays>,
    /// Set once a relay is attached, so sockets without one skip the lock.
    relaying: std::sync::atomic::AtomicBool,
    /// Datagrams that came through a relay, for QUIC and the checks.
    injected: Mutex<std::collections::VecDeque<(SocketAddr, Vec<u8>)>>,
    inject_waker: futures_util::task::AtomicWaker,
    /// The allocation on each relay, shared by every attempt: TURN allows one allocation per
    /// client address and relay. Kept for [`RELAY_LINGER`] after its last user, so that the
    /// next connection finds it ready (and does not race the release of the old one).
    allocations: Arc<tokio::sync::Mutex<HashMap<RelayKey, Arc<crate::relay::RelayAllocation>>>>,
    /// The transports besides QUIC, by protocol byte.
    transports: Mutex<HashMap<u8, TransportSender>>,
    /// Set once a transport registered, so sockets without one skip the lock.
    transporting: std::sync::atomic::AtomicBool,
}

type RelayKey = (SocketAddr, fog_core::TurnTransport);

/// How long a new allocation waits for the relay to handle the release of the one it
/// replaces, when the relay refused it at first.
const RELEASE_WAIT: Duration = Duration::from_millis(300);

/// How long an allocation nobody uses is kept.
const RELAY_LINGER: Duration = Duration::from_secs(60);

/// Datagrams from relays queued for the receive loop before new ones are dropped.
const MAX_INJECTED: usize = 4096;

impl fmt::Debug for FogSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FogSocket")
            .field("local", &self.local)
            .finish()
    }
}

impl FogSocket {
    /// Binds a socket on `addr` (use port 0 for any).
    pub async fn bind(addr: SocketAddr) -> io::Result<Arc<Self>> {
        let io = tokio::net::UdpSocket::bind(addr).await?;
        let local = io.local_addr()?;
        Ok(Arc::new(FogSocket {
            io,
            local,
            checks: Mutex::new(Checks::default()),
            routes: Mutex::new(Routes::default()),
            routing: std::sync::atomic::AtomicBool::new(false),
            relays: Mutex::new(Relays::default()),
            relaying: std::sync::atomic::AtomicBool::new(false),
            injected: Mutex::new(std::collections::VecDeque::new()),
            inject_waker: futures_util::task::AtomicWaker::new(),
            allocations: Arc::new(tokio::sync::Mutex::new(HashMap::new())),
            transports: Mutex::new(HashMap::new()),
            transporting: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The datagrams tagged for `protocol` ([`TRANSPORT_TAG`], then `protocol`), without the
    /// tag, with their sender as routes present it (a peer's stand-in when it has a route).
    /// A new registration replaces the old one. They are read while the QUIC endpoint on this
    /// socket reads, into its buffers of 1472 bytes: a longer datagram arrives cut, so a
    /// transport keeps its datagrams, tag included, within that (1280 bytes leaves room for a
    /// relay's framing as well).
    pub fn transport_datagrams(&self, protocol: u8) -> TransportDatagrams {
        let (tx, rx) = mpsc::channel(MAX_TRANSPORT_QUEUE);
        self.transports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(protocol, tx);
        self.transporting
            .store(true, std::sync::atomic::Ordering::Release);
        rx
    }

    /// Sends `payload` tagged for `protocol` to `to` (a stand-in follows the peer's route, and
    /// a relay-path stand-in goes through the relay). A full send buffer drops it, as a
    /// congested path would.
    pub fn send_transport_datagram(
        &self,
        to: SocketAddr,
        protocol: u8,
        payload: &[u8],
    ) -> io::Result<()> {
        match self.send_tagged(None, to, protocol, &[io::IoSlice::new(payload)]) {
            Poll::Ready(sent) => sent.map(|_| ()),
            Poll::Pending => Ok(()),
        }
    }

    /// [`send_transport_datagram`](Self::send_transport_datagram) of the concatenated
    /// `parts`, that waits (returns `Pending`) while the socket's send buffer is full, for
    /// transports that pace themselves by the socket. The payload's length when sent.
    pub fn poll_send_transport_datagram(
        &self,
        cx: &mut Context<'_>,
        to: SocketAddr,
        protocol: u8,
        parts: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.send_tagged(Some(cx), to, protocol, parts)
    }

    /// Sends the tag and `parts` as one datagram, gathered by the kernel (no copy) on a direct
    /// path. With `cx` it waits while the send buffer is full; without, the datagram is dropped.
    fn send_tagged(
        &self,
        cx: Option<&mut Context<'_>>,
        to: SocketAddr,
        protocol: u8,
        parts: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let tag = [TRANSPORT_TAG, protocol];
        let real = self.real_addr(to);
        if parts.len() > 3 {
            // Rare: gathered into one part first.
            let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
            return self.send_tagged(cx, to, protocol, &[io::IoSlice::new(&joined)]);
        }
        if is_relay_stand_in(real) {
            // The relay wraps an owned datagram anyway.
            let mut datagram = Vec::with_capacity(len + 2);
            datagram.extend_from_slice(&tag);
            for part in parts {
                datagram.extend_from_slice(part);
            }
            return Poll::Ready(self.transmit(&datagram, real).map(|_| len));
        }
        let mut slices = [io::IoSlice::new(&tag); 4];
        slices[1..=parts.len()].copy_from_slice(parts);
        let slices = &slices[..=parts.len()];
        let addr = socket2::SockAddr::from(self.on_wire(real));
        let sock = socket2::SockRef::from(&self.io);
        let Some(cx) = cx else {
            return Poll::Ready(match sock.send_to_vectored(slices, &addr) {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock && !is_transient(&e) => Err(e),
                _ => Ok(len),
            });
        };
        loop {
            ready!(self.io.poll_send_ready(cx))?;
            match self.io.try_io(tokio::io::Interest::WRITABLE, || {
                sock.send_to_vectored(slices, &addr)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if !is_transient(&e) => return Poll::Ready(Err(e)),
                _ => return Poll::Ready(Ok(len)),
            }
        }
    }

    /// `addr` in the socket's own address family.
    fn on_wire(&self, addr: SocketAddr) -> SocketAddr {
        match (addr, self.local) {
            (SocketAddr::V4(v4), SocketAddr::V6(_)) => {
                SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port()))
            }
            (addr, _) => addr,
        }
    }

    /// Hands a tagged datagram to its transport; whether it was one (those are never QUIC's).
    /// One that filled the whole read buffer may have been cut: it is dropped, so that the
    /// transport sees a loss rather than wrong bytes.
    fn take_transport_datagram(&self, datagram: &[u8], from: SocketAddr, filled: bool) -> bool {
        if datagram.first() != Some(&TRANSPORT_TAG) || datagram.len() < 2 {
            return false;
        }
        if filled {
            tracing::debug!(%from, len = datagram.len(), "tagged datagram possibly cut; dropped");
            return true;
        }
        if self.transporting.load(std::sync::atomic::Ordering::Acquire) {
            let transports = self.transports.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(tx) = transports.get(&datagram[1]) {
                let _ = tx.try_send((self.inbound(from), datagram[2..].to_vec()));
            }
        }
        true
    }

    /// The allocation on `relay` from this socket: the one in use, or a new one.
    pub async fn allocate_relay(
        self: &Arc<Self>,
        relay: &crate::relay::RelayServer,
    ) -> Result<Arc<crate::relay::RelayAllocation>, crate::relay::RelayError> {
        let key = (canonical(relay.addr), relay.transport);
        let mut allocations = self.allocations.lock().await;
        let mut released = false;
        if let Some(existing) = allocations.get(&key) {
            if !existing.needs_renewal() {
                return Ok(existing.clone());
            }
            // Ending or lost: released at the relay first, since a new allocation from the
            // same address would be the same TURN 5-tuple. Its users move to the new one.
            tracing::debug!(server = %relay.addr, "relay allocation made again");
            existing.close().await;
            allocations.remove(&key);
            released = true;
        }
        let allocation = match crate::relay::allocate(self, relay).await {
            Ok(allocation) => allocation,
            // The release is not awaited (the TURN client sends it and goes on): a relay that
            // has not handled it yet refuses the same 5-tuple (437). Once more, a moment later.
            Err(crate::relay::RelayError::Refused { reason, .. })
                if released && relay.transport == fog_core::TurnTransport::Udp =>
            {
                tracing::debug!(server = %relay.addr, %reason, "allocated again after the release");
                tokio::time::sleep(RELEASE_WAIT).await;
                crate::relay::allocate(self, relay).await?
            }
            Err(e) => return Err(e),
        };
        let allocation = Arc::new(allocation);
        allocations.insert(key, allocation.clone());
        let id = allocation.id;
        // Released once nobody but this cache has used it for a whole linger period.
        let cache = Arc::downgrade(&self.allocations);
        tokio::spawn(async move {
            let mut idle_rounds = 0;
            loop {
                tokio::time::sleep(RELAY_LINGER / 2).await;
                let Some(cache) = cache.upgrade() else {
                    return;
                };
                let mut allocations = cache.lock().await;
                let Some(allocation) = allocations.get(&key) else {
                    return;
                };
                if allocation.id != id {
                    // Made again since: the new one has its own watch.
                    return;
                }
                idle_rounds = if Arc::strong_count(allocation) == 1 {
                    idle_rounds + 1
                } else {
                    0
                };
                if idle_rounds >= 2 {
                    allocations.remove(&key);
                    return;
                }
            }
        });
        Ok(allocation)
    }

    fn relays(&self) -> std::sync::MutexGuard<'_, Relays> {
        self.relays.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets `server`'s datagrams aside for its TURN client and opens a send queue for a new
    /// allocation.
    pub(crate) fn attach_relay(
        &self,
        server: SocketAddr,
        from_server: Option<mpsc::UnboundedSender<Vec<u8>>>,
    ) -> (u32, mpsc::Receiver<(Vec<u8>, SocketAddr)>) {
        let (tx, rx) = crate::relay::send_queue();
        let mut relays = self.relays();
        relays.next_allocation += 1;
        let id = relays.next_allocation;
        if let Some(from_server) = from_server {
            relays.servers.insert(canonical(server), (id, from_server));
        }
        relays.links.insert(id, tx);
        relays.link_servers.insert(id, server);
        self.relaying
            .store(true, std::sync::atomic::Ordering::Release);
        (id, rx)
    }

    pub(crate) fn detach_relay(&self, id: u32, server: SocketAddr) {
        let mut relays = self.relays();
        // Only its own: a newer allocation on the same relay may have taken the server over.
        if relays
            .servers
            .get(&canonical(server))
            .is_some_and(|(owner, _)| *owner == id)
        {
            relays.servers.remove(&canonical(server));
        }
        relays.links.remove(&id);
        relays.link_servers.remove(&id);
        relays.stand_ins.retain(|(a, _), _| *a != id);
        relays.by_stand_in.retain(|_, (a, _)| *a != id);
    }

    /// The stand-in address of `peer` reached through allocation `id`.
    pub(crate) fn relay_stand_in(&self, id: u32, peer: SocketAddr) -> SocketAddr {
        let peer = canonical(peer);
        let mut relays = self.relays();
        if let Some(addr) = relays.stand_ins.get(&(id, peer)) {
            return self.presented(*addr);
        }
        if relays.by_stand_in.len() >= MAX_RELAY_STAND_INS {
            relays.by_stand_in.clear();
            relays.stand_ins.clear();
        }
        relays.next_stand_in += 1;
        let n = relays.next_stand_in;
        let addr = SocketAddr::from((
            std::net::Ipv4Addr::new(
                RELAY_STAND_IN_OCTET,
                (n >> 16) as u8,
                (n >> 8) as u8,
                n as u8,
            ),
            1,
        ));
        relays.stand_ins.insert((id, peer), addr);
        relays.by_stand_in.insert(addr, (id, peer));
        self.presented(addr)
    }

    /// A datagram the relay of allocation `id` forwarded from `peer`: handled as if it came
    /// from the peer's stand-in address.
    pub(crate) fn inject_from_relay(&self, id: u32, peer: SocketAddr, datagram: Vec<u8>) {
        let from = self.relay_stand_in(id, peer);
        {
            let mut queue = self.injected.lock().unwrap_or_else(|e| e.into_inner());
            if queue.len() >= MAX_INJECTED {
                return;
            }
            queue.push_back((from, datagram));
        }
        self.inject_waker.wake();
    }

    /// Sends `datagram` to `to`: through its relay when `to` is a relay-path stand-in.
    fn transmit(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        if is_relay_stand_in(to) {
            let relays = self.relays();
            if let Some((id, peer)) = relays.by_stand_in.get(&canonical(to)) {
                if let Some(link) = relays.links.get(id) {
                    // A full queue drops the datagram, as a congested path would.
                    let _ = link.try_send((datagram.to_vec(), *peer));
                }
            }
            return Ok(datagram.len());
        }
        self.send_now(datagram, to)
    }

    /// For a relay-path stand-in: the relay server and the peer's address behind it. For an
    /// address a peer allocated on its relay: that address twice.
    pub fn relay_behind(&self, addr: SocketAddr) -> Option<(SocketAddr, SocketAddr)> {
        if !is_relay_stand_in(addr) {
            if !self.relaying.load(std::sync::atomic::Ordering::Acquire) {
                return None;
            }
            let addr = canonical(addr);
            return self
                .relays()
                .peer_relays
                .contains(&addr)
                .then_some((addr, addr));
        }
        let relays = self.relays();
        let (id, peer) = *relays.by_stand_in.get(&canonical(addr))?;
        let server = relays.link_servers.get(&id).copied()?;
        Some((server, peer))
    }

    /// Whether a datagram from `from` belongs to a relay's TURN client; hands it over if so.
    fn take_relay_datagram(&self, datagram: &[u8], from: SocketAddr) -> bool {
        if !self.relaying.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let relays = self.relays();
        match relays.servers.get(&canonical(from)) {
            Some((_, tx)) => {
                let _ = tx.send(datagram.to_vec());
                true
            }
            None => false,
        }
    }

    fn next_injected(&self) -> Option<(SocketAddr, Vec<u8>)> {
        self.injected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    fn learn_route(&self, peer: &PeerId, from: SocketAddr) {
        self.routes().learn(peer, from);
        self.routing
            .store(true, std::sync::atomic::Ordering::Release);
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn routing(&self) -> bool {
        self.routing.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The stand-in address a transport on this socket uses for `peer`, once a route exists.
    pub fn route_of(&self, peer: &PeerId) -> Option<SocketAddr> {
        if !self.routing() {
            return None;
        }
        let stand_in = *self.routes().by_peer.get(peer)?;
        Some(self.presented(stand_in))
    }

    /// Where the peer behind `addr` (a stand-in or a real address) is reached now: its address,
    /// and the relay in between when the path is relayed.
    pub fn peer_behind(&self, addr: SocketAddr) -> (SocketAddr, Option<SocketAddr>) {
        let real = self.real_addr(addr);
        match self.relay_behind(real) {
            Some((server, peer)) => (peer, Some(server)),
            None => (real, None),
        }
    }

    /// The real address behind `addr` now: the route's current address for a stand-in, else
    /// `addr` itself.
    pub fn real_addr(&self, addr: SocketAddr) -> SocketAddr {
        if !self.routing() {
            return addr;
        }
        self.routes()
            .current
            .get(&canonical(addr))
            .copied()
            .unwrap_or(addr)
    }

    /// A stand-in in the address family quinn expects on this socket.
    fn presented(&self, stand_in: SocketAddr) -> SocketAddr {
        match (stand_in, self.local) {
            (SocketAddr::V4(v4), SocketAddr::V6(_)) => {
                SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port()))
            }
            _ => stand_in,
        }
    }

    /// What QUIC should see as the source of a datagram from `from`.
    fn inbound(&self, from: SocketAddr) -> SocketAddr {
        if !self.routing() {
            return from;
        }
        let real = canonical(from);
        let mut routes = self.routes();
        match routes.by_real.get_mut(&real) {
            Some(routed) => {
                routed.heard = Some(Instant::now());
                let stand_in = routed.stand_in;
                drop(routes);
                self.presented(stand_in)
            }
            None => from,
        }
    }

    /// The bound address (a wildcard address when bound to one).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends one datagram with a direct system call. tokio's `try_send_to` refuses until the
    /// reactor has seen the socket writable, which drops the first check of a fresh socket.
    pub(crate) fn send_now(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        socket2::SockRef::from(&self.io).send_to(datagram, &to.into())
    }

    fn checks(&self) -> std::sync::MutexGuard<'_, Checks> {
        self.checks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handles a datagram that looks like a check: answers requests of known sessions and
    /// delivers replies to their watchers. Everything that does not verify is dropped.
    fn handle_check(&self, datagram: &[u8], from: SocketAddr) {
        let Some(packet) = check::decode(datagram) else {
            return;
        };
        let mut checks = self.checks();
        match packet.kind {
            CheckKind::Request => {
                let Some(session) = checks.sessions.get_mut(&packet.session) else {
                    return;
                };
                // Answered while the connection watches the session (its path is checked
                // for as long as it lives), and for ANSWER_TTL from the first watch otherwise.
                let watched = session.events.as_ref().is_some_and(|e| !e.is_closed());
                if (!watched && session.answer_until < Instant::now())
                    || !packet.verify(&session.secret)
                {
                    return;
                }
                // A copy of a genuine request sent from another address (a third party that
                // captured it) gets nothing: no answer, no new target.
                match session.first_seen.get(&packet.txid) {
                    Some(first) if *first != from => return,
                    Some(_) => {}
                    None if session.first_seen.len() < REMEMBERED_REQUESTS => {
                        session.first_seen.insert(packet.txid, from);
                    }
                    None => {}
                }
                let peer = session.peer;
                let reply = check::encode(
                    CheckKind::Reply,
                    &packet.session,
                    &packet.txid,
                    &session.secret,
                );
                let events = session.events.clone();
                drop(checks);
                // Best effort: a full send buffer drops the reply, and the peer retries.
                let _ = self.transmit(&reply, from);
                // Known as relayed before the punch hears of it, so that it is never taken for
                // a direct pair.
                if packet.relayed && !is_relay_stand_in(from) {
                    self.note_peer_relay(from);
                }
                if let Some(events) = events {
                    let _ = events.send(CheckEvent::Received { from });
                }
                if let Some(peer) = peer {
                    self.learn_route(&peer, from);
                }
            }
            CheckKind::Reply => {
                let Some(pending) = checks.pending.get(&packet.txid) else {
                    return;
                };
                if pending.session != packet.session || pending.remote != from {
                    return;
                }
                let Some(session) = checks.sessions.get(&packet.session) else {
                    return;
                };
                if !packet.verify(&session.secret) {
                    return;
                }
                let rtt = pending.sent.elapsed();
                if let Some(events) = &session.events {
                    let _ = events.send(CheckEvent::Answered(CheckReply { remote: from, rtt }));
                }
                let peer = session.peer;
                checks.pending.remove(&packet.txid);
                drop(checks);
                if let Some(peer) = peer {
                    self.learn_route(&peer, from);
                }
            }
        }
    }
}

impl Prober for FogSocket {
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn allocate_relay(
        self: Arc<Self>,
        server: SocketAddr,
        transport: fog_core::TurnTransport,
        username: String,
        password: String,
    ) -> BoxFuture<'static, Result<Arc<dyn fog_core::RelayHandle>, String>> {
        Box::pin(async move {
            let relay = crate::relay::RelayServer {
                addr: server,
                transport,
                username,
                password,
            };
            FogSocket::allocate_relay(&self, &relay)
                .await
                .map(|a| a as Arc<dyn fog_core::RelayHandle>)
                .map_err(|e| e.to_string())
        })
    }

    fn is_relayed(&self, addr: SocketAddr) -> bool {
        self.relay_behind(addr).is_some()
    }

    fn last_heard(&self, addr: SocketAddr) -> Option<Instant> {
        self.routes().by_real.get(&canonical(addr))?.heard
    }

    fn last_heard_from(&self, peer: &PeerId) -> Option<Instant> {
        // Over any of the peer's addresses: its route back to us may not be the one we send
        // on. Asked once a second per connection at most, so a scan beats a second table
        // written on every datagram.
        let routes = self.routes();
        let stand_in = *routes.by_peer.get(peer)?;
        routes
            .by_real
            .values()
            .filter(|r| r.stand_in == stand_in)
            .filter_map(|r| r.heard)
            .max()
    }

    fn note_peer_relay(&self, addr: SocketAddr) {
        let mut relays = self.relays();
        if relays.peer_relays.len() >= MAX_RELAY_STAND_INS {
            relays.peer_relays.clear();
        }
        relays.peer_relays.insert(canonical(addr));
        self.relaying
            .store(true, std::sync::atomic::Ordering::Release);
    }

    fn route_to(&self, peer: &PeerId, remote: SocketAddr) -> Option<SocketAddr> {
        let stand_in = self.routes().route(peer, remote);
        self.routing
            .store(true, std::sync::atomic::Ordering::Release);
        Some(self.presented(stand_in))
    }

    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }

    fn spray_sockets(&self, count: usize) -> BoxFuture<'_, Vec<Arc<dyn Prober>>> {
        Box::pin(async move {
            let any = SocketAddr::new(self.local.ip(), 0);
            let mut sockets: Vec<Arc<dyn Prober>> = Vec::with_capacity(count);
            for _ in 0..count {
                match SpraySocket::bind(any).await {
                    Ok(socket) => sockets.push(Arc::new(socket)),
                    Err(e) => {
                        // Out of descriptors or ports: spray with what we have.
                        tracing::debug!(error = %e, "spray socket not opened");
                        break;
                    }
                }
            }
            sockets
        })
    }

    fn watch(&self, session: &SessionKeys) -> mpsc::UnboundedReceiver<CheckEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut checks = self.checks();
        let now = Instant::now();
        checks.expire(now);
        checks.sessions.insert(
            session.id,
            Session {
                secret: session.secret,
                answer_until: now + ANSWER_TTL,
                events: Some(tx),
                first_seen: HashMap::new(),
                peer: None,
            },
        );
        rx
    }

    fn expect_peer(&self, session: &SessionKeys, peer: &PeerId) {
        if let Some(s) = self.checks().sessions.get_mut(&session.id) {
            s.peer = Some(*peer);
        }
    }

    fn server_reflexive(&self, stun: SocketAddr) -> BoxFuture<'_, Option<SocketAddr>> {
        Box::pin(async move {
            let mut id = [0u8; 12];
            rand::thread_rng().fill_bytes(&mut id);
            let (tx, mut rx) = oneshot::channel();
            self.checks().stun.insert(id, tx);
            let request = fog_core::stun::binding_request(&id, None);
            let deadline = tokio::time::Instant::now() + STUN_DEADLINE;
            let mut rto = STUN_FIRST_RTO;
            let mapped = loop {
                let _ = self.send_now(&request, stun);
                let wait = (tokio::time::Instant::now() + rto).min(deadline);
                rto *= 2;
                tokio::select! {
                    mapped = &mut rx => break mapped.ok(),
                    _ = tokio::time::sleep_until(wait) => {
                        if tokio::time::Instant::now() >= deadline {
                            break None;
                        }
                    }
                }
            };
            self.checks().stun.remove(&id);
            mapped
        })
    }

    fn send_check(&self, session: &SessionKeys, remote: SocketAddr) -> io::Result<()> {
        let mut txid = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut txid);
        let packet = if is_relay_stand_in(remote) {
            check::encode_relayed(CheckKind::Request, &session.id, &txid, &session.secret)
        } else {
            check::encode(CheckKind::Request, &session.id, &txid, &session.secret)
        };
        self.checks().pending.insert(
            txid,
            Pending {
                session: session.id,
                remote,
                sent: Instant::now(),
            },
        );
        match self.transmit(&packet, remote) {
            Ok(_) => Ok(()),
            // A full buffer loses this check like the network could; the schedule retries.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl FogSocket {
    /// Reads the socket and handles connectivity checks until the task is aborted: what a
    /// socket without a QUIC endpoint on it needs to take part in checks. Anything else is
    /// dropped.
    async fn check_loop(self: Arc<Self>) {
        let mut buf = [0u8; 1500];
        loop {
            match self.io.recv_from(&mut buf).await {
                Ok((len, from)) if check::looks_like_check(&buf[..len]) => {
                    self.handle_check(&buf[..len], from)
                }
                Ok(_) => {}
                Err(e) if is_transient(&e) => {}
                Err(_) => return,
            }
        }
    }
}

/// One of the extra sockets of birthday spraying: a [`FogSocket`] whose checks are handled by
/// its own task until a transport takes the socket over with [`SpraySocket::adopt`]. Dropping it
/// stops the task and closes the socket.
pub struct SpraySocket {
    socket: Arc<FogSocket>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl fmt::Debug for SpraySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpraySocket")
            .field("local", &self.socket.local)
            .finish()
    }
}

impl Drop for SpraySocket {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

impl SpraySocket {
    /// Binds a socket on `addr` and starts handling its checks.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = FogSocket::bind(addr).await?;
        let task = tokio::spawn(socket.clone().check_loop());
        Ok(SpraySocket {
            socket,
            task: Mutex::new(Some(task)),
        })
    }

    /// Stops the check task and hands out the socket, for a QUIC endpoint to run on.
    pub fn adopt(&self) -> Arc<FogSocket> {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        self.socket.clone()
    }
}

impl Prober for SpraySocket {
    fn local_addr(&self) -> SocketAddr {
        self.socket.local
    }

    fn watch(&self, session: &SessionKeys) -> mpsc::UnboundedReceiver<CheckEvent> {
        self.socket.watch(session)
    }

    fn send_check(&self, session: &SessionKeys, remote: SocketAddr) -> io::Result<()> {
        self.socket.send_check(session, remote)
    }

    fn server_reflexive(&self, stun: SocketAddr) -> BoxFuture<'_, Option<SocketAddr>> {
        self.socket.server_reflexive(stun)
    }

    fn route_to(&self, peer: &PeerId, remote: SocketAddr) -> Option<SocketAddr> {
        self.socket.route_to(peer, remote)
    }

    fn expect_peer(&self, session: &SessionKeys, peer: &PeerId) {
        self.socket.expect_peer(session, peer)
    }

    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

/// Errors that an unconnected UDP socket reports for an earlier send (ICMP unreachable); they
/// say nothing about the next datagram and must not stop the receive loop.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

impl AsyncUdpSocket for FogSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(WritablePoller { socket: self })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let real = self.real_addr(transmit.destination);
        if is_relay_stand_in(real) {
            return self.transmit(transmit.contents, real).map(|_| ());
        }
        match self.io.try_send_to(transmit.contents, self.on_wire(real)) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            // Like quinn's own socket: a send error is the network losing a packet.
            Err(e) => {
                tracing::trace!(error = %e, to = %transmit.destination, "udp send failed");
                Ok(())
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            // What came through a relay first: it is already out of the kernel's queue.
            if let Some((from, datagram)) = self.next_injected() {
                if check::looks_like_check(&datagram) {
                    self.handle_check(&datagram, from);
                    continue;
                }
                if self.take_transport_datagram(&datagram, from, false) {
                    continue;
                }
                let len = datagram.len().min(bufs[0].len());
                bufs[0][..len].copy_from_slice(&datagram[..len]);
                meta[0] = RecvMeta {
                    addr: self.inbound(from),
                    len,
                    stride: len,
                    ..RecvMeta::default()
                };
                return Poll::Ready(Ok(1));
            }
            self.inject_waker.register(cx.waker());
            if !self
                .injected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            {
                continue;
            }
            let mut read = ReadBuf::new(&mut bufs[0]);
            let from = match ready!(self.io.poll_recv_from(cx, &mut read)) {
                Ok(from) => from,
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Poll::Ready(Err(e)),
            };
            let len = read.filled().len();
            if check::looks_like_check(read.filled()) {
                self.handle_check(read.filled(), from);
                continue;
            }
            let stun = fog_core::stun::looks_like_stun(read.filled());
            if stun {
                if let Some(Binding::Answer { id, mapped, .. }) =
                    fog_core::stun::parse_binding(read.filled())
                {
                    if let Some(tx) = self.checks().stun.remove(&id) {
                        let _ = tx.send(mapped);
                        continue;
                    }
                }
            }
            // TURN messages and channel data from a relay this socket allocated on; other STUN
            // is nobody's.
            if self.take_relay_datagram(read.filled(), from) || stun {
                continue;
            }
            let filled = len == read.capacity();
            if self.take_transport_datagram(read.filled(), from, filled) {
                continue;
            }
            meta[0] = RecvMeta {
                addr: self.inbound(from),
                len,
                stride: len,
                ..RecvMeta::default()
            };
            return Poll::Ready(Ok(1));
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

struct WritablePoller {
    socket: Arc<FogSocket>,
}

impl fmt::Debug for WritablePoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WritablePoller")
    }
}

impl UdpPoller for WritablePoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        self.socket.io.poll_send_ready(cx)
    }
}
