//! `PunchLayer`: authenticated connectivity checks over every candidate pair; the first pair
//! that answers becomes the path, and a better one found later takes over.
//!
//! Both sides check at once, so the outgoing checks of each open the way for the other's (the
//! seed of hole punching). The peer's candidates that trickle in join the rounds as they come.
//! After the first answer the checks go on for a while in the background: when a pair on the
//! LAN or with a clearly lower round trip answers ([`PathChoice`]), the socket's route to the
//! peer moves there and the connection follows without noticing. The schedule and the choice
//! are plain code; the layer only sends what they say and waits for replies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use fog_core::attempt::{is_local_only, public_ip};
use fog_core::trickle::gathered;
use fog_core::{
    Attempt, BoxError, Candidate, CandidateKind, CandidateList, CheckEvent, CheckReply,
    ConnectError, Connection, Event, EventBus, LifelineWatch, PathKind, PathSocket, PeerId, Prober,
    RelayHandle, RemoteTrickle, SelectedPath, SessionKeys, Strategy,
};
use tokio::sync::mpsc;
use tracing::Instrument;

mod choice;
mod schedule;

pub use choice::PathChoice;
pub use schedule::{
    select_targets, PunchAction, PunchSchedule, TargetFilter, MAX_REMOTE_CANDIDATES,
};

use crate::relay::RELAY_GATHERING;
use crate::spray::{peer_public_ip, Spray, SprayRole, WAVE_INTERVAL};

use crate::strategy::NatClass;
use tower::{Service, ServiceExt};
use tower_layer::Layer;

use crate::future::{take_inner, ResponseFuture};

/// Pace and patience of the checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PunchConfig {
    /// Gap after the first round; it doubles each round up to `max_interval`.
    pub first_interval: Duration,
    /// Largest gap between rounds.
    pub max_interval: Duration,
    /// Give up after this long.
    pub timeout: Duration,
    /// How long a relay pair that answers first is held while a direct pair may still answer
    /// (the strategy says one can exist): the connection then starts direct instead of moving
    /// there later. Spraying holds it for two waves at least, since a sprayed path cannot
    /// take over once the connection runs.
    pub relay_grace: Duration,
}

impl Default for PunchConfig {
    fn default() -> Self {
        PunchConfig {
            first_interval: Duration::from_millis(20),
            max_interval: Duration::from_millis(250),
            timeout: Duration::from_secs(5),
            relay_grace: Duration::from_millis(300),
        }
    }
}

/// Runs connectivity checks through `prober` and selects the first pair that answers.
#[derive(Clone)]
pub struct PunchLayer {
    prober: Arc<dyn Prober>,
    config: PunchConfig,
}

impl PunchLayer {
    /// Checks through `prober` (the node's socket) with the default pace.
    pub fn new(prober: Arc<dyn Prober>) -> Self {
        PunchLayer {
            prober,
            config: PunchConfig::default(),
        }
    }

    /// Uses `config` instead of the default pace.
    pub fn with_config(mut self, config: PunchConfig) -> Self {
        self.config = config;
        self
    }
}

impl<S> Layer<S> for PunchLayer {
    type Service = Punch<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Punch {
            inner,
            prober: self.prober.clone(),
            config: self.config,
        }
    }
}

/// The service of [`PunchLayer`].
#[derive(Clone)]
pub struct Punch<S> {
    inner: S,
    prober: Arc<dyn Prober>,
    config: PunchConfig,
}

/// The local address that the route towards `remote` leaves from, with the socket's port. No
/// packet is sent: connecting a UDP socket only looks up the route.
fn local_address_towards(bound: SocketAddr, remote: SocketAddr) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let any: SocketAddr = if remote.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid address")
    } else {
        "[::]:0".parse().expect("valid address")
    };
    std::net::UdpSocket::bind(any)
        .and_then(|s| s.connect(remote).and_then(|_| s.local_addr()))
        .map(|a| SocketAddr::new(a.ip(), bound.port()))
        .unwrap_or(bound)
}

/// The spray role of this side, when the strategy is to spray.
fn spray_role(attempt: &Attempt) -> Option<SprayRole> {
    if attempt.strategy != Some(Strategy::Spray) {
        return None;
    }
    match NatClass::of(attempt.local_nat.as_ref()) {
        NatClass::SymmetricRandom => Some(SprayRole::Sockets),
        _ => peer_public_ip(attempt).map(SprayRole::Ports),
    }
}

/// How long checks go on after the first pair answered, for a better one (the LAN, a lower
/// round trip) to take over.
pub const REFINE_FOR: Duration = Duration::from_secs(3);
/// How often the pair in use is checked once the connection runs.
pub const MONITOR_INTERVAL: Duration = Duration::from_secs(1);
/// A pair that has not answered for this long is dead.
pub const DEAD_AFTER: Duration = Duration::from_millis(3500);
/// After our relay allocations were made again (or taken for lost), how long before a dead
/// relay path takes them for lost again: the peer needs the time to learn the new relayed
/// addresses and check them.
pub const RENEWAL_GRACE: Duration = Duration::from_secs(10);
/// Longest wait for the rest of the peer's candidates when a side must know them all before
/// its first check.
const TRICKLE_WAIT: Duration = Duration::from_secs(2);

/// Whether this side must know every candidate, its own and the peer's, before its first
/// check. Behind a sequential NAT every check to a new address takes the next port, so checks
/// to addresses that later turn out useless would shift the ports the peer predicted; spraying
/// needs the cone's public address.
fn needs_all_candidates(attempt: &Attempt) -> bool {
    NatClass::of(attempt.local_nat.as_ref()) == NatClass::SymmetricSequential
        || attempt.strategy == Some(Strategy::Spray)
}

/// Whether the peer's direct candidates are in: its predictions behind a sequential NAT, its
/// server-reflexive address behind any other. (Its relay candidate may come later; it costs no
/// port.)
fn direct_candidates_in(remote_nat: NatClass, list: &CandidateList) -> bool {
    let has = |kind| list.candidates.iter().any(|c| c.kind == kind);
    match remote_nat {
        NatClass::SymmetricSequential => has(CandidateKind::Predicted),
        NatClass::Open | NatClass::UdpBlocked | NatClass::Unknown => true,
        _ => has(CandidateKind::Srflx),
    }
}

/// The checks of one attempt on the node's socket: the schedule, what came back, and the
/// peer's candidates as they trickle in.
struct Checks {
    prober: Arc<dyn Prober>,
    session: SessionKeys,
    local: SocketAddr,
    schedule: PunchSchedule,
    filter: TargetFilter,
    replies: mpsc::UnboundedReceiver<CheckEvent>,
    trickle: Option<RemoteTrickle>,
    /// The peer said it has no more candidates for the punch.
    trickle_done: bool,
    /// Every candidate of the peer so far, to name the kind of the pair that answers.
    known: Vec<Candidate>,
    /// Targets that go through a relay (ours or the peer's).
    relayed: std::collections::HashSet<SocketAddr>,
    /// Our relay allocations, once made.
    relays: Vec<Arc<dyn RelayHandle>>,
    /// The peer's IPs that have a path through our relays (and so a permission on them).
    permitted: std::collections::HashSet<std::net::IpAddr>,
    /// Our socket cannot send UDP (a UDP-blocking firewall): the peer's relayed addresses are
    /// reached through our relays too, allocation to allocation.
    udp_blocked: bool,
    /// The paths through our allocations: the relayed address of the allocation, and the
    /// stand-in, so that an allocation made again takes its paths with it.
    our_paths: Vec<(SocketAddr, SocketAddr)>,
    /// Pairs gone for good since the path choice last heard (relayed addresses made again).
    retired: Vec<SocketAddr>,
    /// When relayed addresses (ours or the peer's) were last made again, and when ours were
    /// last taken for lost.
    renewed_at: Option<tokio::time::Instant>,
    marked_lost_at: Option<tokio::time::Instant>,
    /// Until our relay gathering is done; then its allocations come from `relay_slot`. Kept
    /// past the punch: a direct pair often answers first, and the relay pairs made later are
    /// what the connection falls back on.
    relay_ready: Option<RelayReady>,
    relay_slot: fog_core::attempt::RelaySlot,
    /// When each pair last answered.
    last_answer: std::collections::HashMap<SocketAddr, tokio::time::Instant>,
    events: EventBus,
    probes: u32,
}

impl Checks {
    /// Whether `addr` goes through a relay: a relay candidate or path we know, or one the
    /// socket knows (a path through our allocation that the peer's checks came in on).
    fn is_relayed(&mut self, addr: SocketAddr) -> bool {
        if self.relayed.contains(&addr) {
            return true;
        }
        let relayed = self.prober.is_relayed(addr);
        if relayed {
            self.relayed.insert(addr);
        }
        relayed
    }

    /// The pair in use may have turned out to be the peer's relay (its check came in through
    /// it before its relay candidate did): a direct pair then takes over when it answers.
    fn recheck_current(&mut self, choice: &mut PathChoice) {
        if !choice.relayed() && self.is_relayed(choice.current()) {
            tracing::debug!(current = %choice.current(), "the pair in use is relayed");
            choice.mark_relayed();
        }
    }

    /// Tells the path choice of the pairs gone for good; when the one in use is among them,
    /// the next pair to answer carries the connection.
    fn retire(&mut self, choice: &mut PathChoice) {
        for addr in self.retired.drain(..) {
            choice.retire(addr);
        }
    }

    /// A learned target (the source of the peer's check), checked at once when new.
    fn learned(&mut self, from: SocketAddr) {
        self.is_relayed(from);
        if self.schedule.add_target(from) {
            self.check(from);
        }
    }

    fn check(&mut self, target: SocketAddr) {
        match self.prober.send_check(&self.session, target) {
            Ok(()) => {
                self.probes += 1;
                self.events.emit(Event::CheckSent { remote: target });
            }
            Err(e) => tracing::debug!(%target, error = %e, "check not sent"),
        }
    }

    /// Takes the peer's late candidates into the rounds and checks the new ones at once.
    fn take_trickled(&mut self, list: &CandidateList) {
        // A path update replaced the peer's relayed addresses: the old ones go.
        let listed_relays: Vec<SocketAddr> = list
            .candidates
            .iter()
            .filter(|c| c.kind == CandidateKind::Relay)
            .map(|c| c.addr)
            .collect();
        if !listed_relays.is_empty() {
            let replaced: Vec<SocketAddr> = self
                .known
                .iter()
                .filter(|c| c.kind == CandidateKind::Relay && !listed_relays.contains(&c.addr))
                .map(|c| c.addr)
                .collect();
            for addr in replaced {
                tracing::debug!(%addr, "the peer's relayed address was replaced");
                self.schedule.forget(addr);
                self.known.retain(|c| c.addr != addr);
                self.last_answer.remove(&addr);
                self.retired.push(addr);
                // The peer's new address gets its time before ours are taken for lost.
                self.renewed_at = Some(tokio::time::Instant::now());
            }
        }
        let fresh: Vec<Candidate> = list
            .candidates
            .iter()
            .copied()
            .filter(|c| !self.known.iter().any(|k| k.addr == c.addr))
            .collect();
        self.known.extend(&fresh);
        for c in fresh.iter().filter(|c| c.kind == CandidateKind::Relay) {
            self.relayed.insert(c.addr);
            self.prober.note_peer_relay(c.addr);
        }
        let wanted: Vec<Candidate> = fresh
            .iter()
            .copied()
            .filter(|c| self.filter.accepts(c))
            .collect();
        for target in self.schedule.add_candidates(&wanted, self.local) {
            self.check(target);
        }
        self.add_relay_paths(&fresh);
    }

    /// Our relay allocations are in: the peer's public candidates get a path through each.
    fn relays_ready(&mut self) {
        self.relay_ready = None;
        self.relays = self.relay_slot.all();
        let known = self.known.clone();
        self.add_relay_paths(&known);
    }

    /// Our allocations changed while the connection is up (one was made again): the paths
    /// through the old ones go, the new ones get paths to every public candidate of the peer
    /// (and its permissions at the relay).
    fn relays_renewed(&mut self) {
        let now: Vec<Arc<dyn RelayHandle>> = self.relay_slot.all();
        let live: std::collections::HashSet<SocketAddr> =
            now.iter().map(|r| r.relayed_addr()).collect();
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.our_paths)
            .into_iter()
            .partition(|(allocation, _)| !live.contains(allocation));
        let before: std::collections::HashSet<SocketAddr> =
            self.relays.iter().map(|r| r.relayed_addr()).collect();
        if before == live {
            self.our_paths = kept;
            self.our_paths.extend(gone);
            return;
        }
        for (_, path) in &gone {
            self.schedule.forget(*path);
            self.last_answer.remove(path);
            self.retired.push(*path);
        }
        tracing::debug!(relays = ?live, "relay allocations made again");
        self.renewed_at = Some(tokio::time::Instant::now());
        self.our_paths = kept;
        self.relays = now;
        self.permitted.clear();
        let known = self.known.clone();
        self.add_relay_paths(&known);
    }

    /// Checks through our relays to the peer's public candidates. Besides being paths, they
    /// open the relay's permission for the peer's IP, so that the peer's checks to our relayed
    /// address get through. Of the predicted ports only one per IP is taken, for that
    /// permission (a side behind a sequential NAT has no other public candidate): the peer's
    /// NAT opens them only towards our own public ports, never towards the relay, and eight of
    /// them would use up the cap on relay paths. The peer's relayed addresses are reached
    /// directly, through its relay, unless our UDP is blocked: then through ours as well.
    fn add_relay_paths(&mut self, remote: &[Candidate]) {
        if self.relays.is_empty() {
            return;
        }
        let mut paths = Vec::new();
        for c in remote {
            if is_local_only(c.addr.ip()) || (c.kind == CandidateKind::Relay && !self.udp_blocked) {
                continue;
            }
            let new_ip = self.permitted.insert(c.addr.ip());
            if c.kind == CandidateKind::Predicted && !new_ip {
                continue;
            }
            for relay in &self.relays {
                let path = relay.path_to(c.addr);
                self.relayed.insert(path);
                self.our_paths.push((relay.relayed_addr(), path));
                paths.push(Candidate {
                    addr: path,
                    kind: CandidateKind::Relay,
                    priority: c.priority / 256,
                });
            }
        }
        for target in self.schedule.add_relay_paths(&paths) {
            self.check(target);
        }
    }

    /// After the punch: what the trickle brought, also once it is complete (a path update),
    /// until the signalling side is gone.
    fn on_update(&mut self, list: Option<CandidateList>) {
        match list {
            Some(list) => self.take_trickled(&list),
            None => self.trickle = None,
        }
    }

    /// Takes what the trickle brought: new candidates, or the end of it (the trickle is kept:
    /// after the punch it brings the peer's path updates).
    fn on_trickle(&mut self, list: Option<CandidateList>) {
        match list {
            Some(list) => self.take_trickled(&list),
            None => self.trickle_done = true,
        }
    }

    fn path_to(&mut self, remote: SocketAddr, local: SocketAddr, rtt: Duration) -> SelectedPath {
        let candidate = self
            .known
            .iter()
            .copied()
            .filter(|c| c.addr == remote)
            .max_by_key(|c| c.priority)
            .unwrap_or(Candidate {
                addr: remote,
                kind: CandidateKind::Prflx,
                priority: 0,
            });
        let relayed = self.is_relayed(remote);
        SelectedPath {
            remote: Candidate {
                kind: if relayed {
                    CandidateKind::Relay
                } else {
                    candidate.kind
                },
                ..candidate
            },
            local: local_address_towards(local, remote),
            kind: if relayed {
                PathKind::Relay
            } else {
                PathKind::Direct
            },
            rtt,
        }
    }

    /// A check to `addr` was answered: moves the route there when [`PathChoice`] says so.
    fn on_answer(&mut self, peer: &PeerId, choice: &mut PathChoice, reply: CheckReply) {
        self.last_answer
            .insert(reply.remote, tokio::time::Instant::now());
        let from = choice.current();
        let relayed = self.is_relayed(reply.remote);
        if choice.answered(reply.remote, reply.rtt, relayed) {
            self.move_route(peer, from, reply.remote, relayed, reply.rtt);
        }
    }

    fn move_route(
        &self,
        peer: &PeerId,
        from: SocketAddr,
        to: SocketAddr,
        relayed: bool,
        rtt: Duration,
    ) {
        if self.prober.route_to(peer, to).is_some() {
            tracing::debug!(%from, %to, ?rtt, relayed, "path moved");
            self.events.emit(Event::PathChanged {
                from,
                to,
                kind: if relayed {
                    PathKind::Relay
                } else {
                    PathKind::Direct
                },
                rtt,
            });
        }
    }

    /// Tends the connection's path for as long as `lifeline` lives: first checks every pair
    /// for [`REFINE_FOR`] (the punch time when on a relay) and moves to better ones, then
    /// checks the pair in use every [`MONITOR_INTERVAL`], with a relay pair on the side. When
    /// the pair in use stops answering for [`DEAD_AFTER`], the route falls back to the relay
    /// (or any pair still answering); on a relay, the direct pairs keep being tried, and the
    /// first that answers takes over again.
    async fn tend(mut self, peer: PeerId, mut choice: PathChoice, lifeline: LifelineWatch) {
        // tokio's clock, so that tests with a paused clock run the schedule without waiting.
        let now = || tokio::time::Instant::now().into_std();
        let until = if choice.relayed() {
            self.schedule.deadline().max(now() + REFINE_FOR)
        } else {
            now() + REFINE_FOR
        };
        self.last_answer
            .insert(choice.current(), tokio::time::Instant::now());
        self.recheck_current(&mut choice);
        let mut renewed = self.relay_slot.subscribe();
        renewed.mark_unchanged();
        while now() < until {
            if !lifeline.alive() {
                return;
            }
            let at = match self.schedule.poll(now()) {
                PunchAction::Send(targets) => {
                    for target in targets {
                        self.check(target);
                    }
                    continue;
                }
                PunchAction::GiveUp => break,
                PunchAction::WaitUntil(at) => at.min(until),
            };
            tokio::select! {
                event = self.replies.recv() => match event {
                    None => return,
                    Some(CheckEvent::Answered(reply)) => self.on_answer(&peer, &mut choice, reply),
                    Some(CheckEvent::Received { from }) => self.learned(from),
                },
                list = next_update(&mut self.trickle), if self.trickle.is_some() => {
                    self.on_update(list);
                    self.recheck_current(&mut choice);
                    self.retire(&mut choice);
                }
                _ = relay_done(&mut self.relay_ready), if self.relay_ready.is_some() => self.relays_ready(),
                Ok(()) = renewed.changed(), if self.relay_ready.is_none() => {
                    self.relays_renewed();
                    self.retire(&mut choice);
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
            }
        }
        let mut tick = tokio::time::interval(MONITOR_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while lifeline.alive() {
            tokio::select! {
                event = self.replies.recv() => match event {
                    None => return,
                    Some(CheckEvent::Answered(reply)) => self.on_answer(&peer, &mut choice, reply),
                    Some(CheckEvent::Received { from }) => {
                        self.is_relayed(from);
                    }
                },
                list = next_update(&mut self.trickle), if self.trickle.is_some() => {
                    self.on_update(list);
                    self.recheck_current(&mut choice);
                    self.retire(&mut choice);
                }
                _ = relay_done(&mut self.relay_ready), if self.relay_ready.is_some() => self.relays_ready(),
                Ok(()) = renewed.changed(), if self.relay_ready.is_none() => {
                    self.relays_renewed();
                    self.retire(&mut choice);
                }
                _ = tick.tick() => self.monitor_round(&peer, &mut choice),
            }
        }
    }

    /// Whether nothing at all came from `peer` for [`DEAD_AFTER`], over any path (its packets
    /// may come back another way than ours go: the pair in use can lose its checks in a full
    /// queue while the connection lives).
    fn peer_silent(&self, peer: &PeerId, now: tokio::time::Instant) -> bool {
        self.prober
            .last_heard_from(peer)
            .map(tokio::time::Instant::from_std)
            .is_none_or(|at| now.duration_since(at) > DEAD_AFTER)
    }

    /// One round of watching: keep-alive checks, and a fall-back when the pair in use died.
    fn monitor_round(&mut self, peer: &PeerId, choice: &mut PathChoice) {
        let now = tokio::time::Instant::now();
        let current = choice.current();
        // A check answered, or any packet of the connection: under a full queue checks get
        // lost while the path works.
        let heard = |addr: &SocketAddr| {
            let packets = self
                .prober
                .last_heard(*addr)
                .map(tokio::time::Instant::from_std);
            self.last_answer.get(addr).copied().max(packets)
        };
        let dead = choice.retired()
            || heard(&current).is_none_or(|at| now.duration_since(at) > DEAD_AFTER);
        if dead {
            // The freshest pair still answering, a direct one first.
            let fallback = self
                .last_answer
                .iter()
                .filter(|(addr, at)| **addr != current && now.duration_since(**at) <= DEAD_AFTER)
                .max_by_key(|(addr, at)| (!self.relayed.contains(addr), **at))
                .map(|(addr, _)| *addr);
            if let Some(to) = fallback {
                let relayed = self.relayed.contains(&to);
                choice.fall_back(to, relayed);
                self.move_route(peer, current, to, relayed, Duration::ZERO);
            } else if choice.relayed()
                && self.peer_silent(peer, now)
                && [self.renewed_at, self.marked_lost_at]
                    .iter()
                    .all(|at| at.is_none_or(|at| now.duration_since(at) >= RENEWAL_GRACE))
            {
                // The relay path died and nothing else answers: the relay may have restarted
                // and forgotten our allocations. They are made again (the peer does the same
                // with its own), and the new relayed addresses go to the peer. New ones get
                // their time to be learned and checked.
                self.marked_lost_at = Some(now);
                for relay in &self.relays {
                    relay.mark_lost();
                }
            }
        }
        let mut targets = vec![choice.current()];
        if dead {
            // Every pair, relayed ones too: whichever answers first carries the connection
            // again (a relayed address made again is new to the schedule's rounds).
            targets.extend(
                self.schedule
                    .targets()
                    .iter()
                    .filter(|t| **t != choice.current())
                    .copied(),
            );
        } else if choice.relayed() {
            // Try the direct pairs again: the path that broke may be back.
            targets.extend(
                self.schedule
                    .targets()
                    .iter()
                    .filter(|t| !self.relayed.contains(t))
                    .copied(),
            );
        } else {
            // Keep a relay pair warm, to fall back on: the one heard last, or all of them until
            // one answers.
            match self
                .relayed
                .iter()
                .filter(|r| heard(r).is_some())
                .max_by_key(|r| heard(r))
            {
                Some(relay) => targets.push(*relay),
                None => targets.extend(self.relayed.iter().copied()),
            }
        }
        for target in targets {
            if self.prober.send_check(&self.session, target).is_ok() {
                self.probes += 1;
            }
        }
    }
}

/// The peer's next list, also after it is done (path updates); `None` once the signalling
/// side is gone.
async fn next_update(trickle: &mut Option<RemoteTrickle>) -> Option<CandidateList> {
    trickle.as_mut()?.updated().await
}

/// The peer's next trickled list; `None` once it is done.
async fn next_trickle(trickle: &mut Option<RemoteTrickle>) -> Option<CandidateList> {
    trickle.as_mut()?.changed().await
}

/// Our relay gathering, pending.
type RelayReady = std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Candidate>> + Send>>;

/// Waits for our relay gathering to end.
async fn relay_done(ready: &mut Option<RelayReady>) {
    if let Some(ready) = ready.as_mut() {
        ready.await;
    }
}

/// What the punch found.
struct Punched {
    path: SelectedPath,
    socket: Option<PathSocket>,
}

async fn punch(
    prober: Arc<dyn Prober>,
    config: PunchConfig,
    attempt: &mut Attempt,
) -> Result<Punched, ConnectError> {
    let remote = attempt.remote.as_ref().ok_or(ConnectError::MissingInput {
        layer: "PunchLayer",
        needs: "the peer's candidates (SignalLayer)",
    })?;
    let mut remote_candidates = remote.candidates.clone();
    let mut local_candidates = attempt.local_candidates.clone();
    let mut trickle = attempt.remote_trickle.clone();
    if needs_all_candidates(attempt) {
        let direct: Vec<_> = attempt
            .local_gathering
            .iter()
            .filter(|g| g.what != RELAY_GATHERING)
            .cloned()
            .collect();
        local_candidates.extend(gathered(&direct).await);
        if let Some(t) = trickle.as_mut() {
            let remote_nat = NatClass::of(remote.nat.as_ref());
            let list = t
                .wait_for(TRICKLE_WAIT, |l| direct_candidates_in(remote_nat, l))
                .await;
            remote_candidates.extend(list.candidates);
        }
    } else if let Some(t) = &trickle {
        remote_candidates.extend(t.current().candidates);
    }
    let local_public = public_ip(&local_candidates).or_else(|| attempt.local_public_ip());
    let filter = TargetFilter::new(
        local_public,
        attempt.remote_public_ip(),
        &local_candidates,
        &remote_candidates,
    );
    let filter = TargetFilter {
        only_relayed: attempt.strategy == Some(Strategy::RelayOnly),
        ..filter
    };
    let targets: Vec<Candidate> = remote_candidates
        .iter()
        .copied()
        .filter(|c| filter.accepts(c))
        .collect();
    let relay_ready = attempt
        .local_gathering
        .iter()
        .find(|g| g.what == RELAY_GATHERING)
        .map(|g| g.result());
    let local = prober.local_addr();
    // tokio's clock, so that tests with a paused clock run the schedule without waiting.
    let now = || tokio::time::Instant::now().into_std();
    let replies = prober.watch(&attempt.session);
    // A route hides the real source of the peer's packets from the transport. Spraying must
    // not have one: many of the random side's sockets pass checks, and only its QUIC packets
    // show which one it chose.
    let peer = attempt
        .remote_peer()
        .filter(|_| attempt.strategy != Some(Strategy::Spray));
    if let Some(peer) = &peer {
        prober.expect_peer(&attempt.session, peer);
    }
    let mut checks = Checks {
        replies,
        prober: prober.clone(),
        session: attempt.session,
        local,
        schedule: PunchSchedule::new(&targets, local, now(), config),
        filter,
        trickle: trickle.take(),
        trickle_done: false,
        relayed: remote_candidates
            .iter()
            .filter(|c| c.kind == CandidateKind::Relay)
            .map(|c| c.addr)
            .collect(),
        known: remote_candidates,
        relays: Vec::new(),
        permitted: std::collections::HashSet::new(),
        udp_blocked: NatClass::of(attempt.local_nat.as_ref()) == NatClass::UdpBlocked,
        our_paths: Vec::new(),
        retired: Vec::new(),
        renewed_at: None,
        marked_lost_at: None,
        relay_ready: relay_ready.map(|f| Box::pin(f) as _),
        relay_slot: attempt.relays.clone(),
        last_answer: std::collections::HashMap::new(),
        events: attempt.events.clone(),
        probes: 0,
    };
    for addr in &checks.relayed {
        prober.note_peer_relay(*addr);
    }
    // Even with no target yet, the peer's own checks may bring one (a peer-reflexive
    // candidate), as may its trickle: wait for them until the deadline.
    checks.schedule.expect_more(true);
    let (spray_tx, mut spray_events) = mpsc::unbounded_channel();
    let mut spray = spray_role(attempt).map(|role| Spray::new(role, attempt.session, spray_tx));
    let mut next_wave = spray.as_ref().map(|_| tokio::time::Instant::now());
    // A relay pair that answers first is held for a short grace while a direct pair may still
    // answer (see `PunchConfig::relay_grace`).
    let direct_possible = attempt.strategy != Some(Strategy::RelayOnly);
    let grace = if spray.is_some() {
        config.relay_grace.max(2 * WAVE_INTERVAL)
    } else {
        config.relay_grace
    };
    let mut held: Option<(SelectedPath, Option<PathSocket>, tokio::time::Instant)> = None;
    let result = loop {
        match checks.schedule.poll(now()) {
            PunchAction::Send(targets) => {
                for target in targets {
                    checks.check(target);
                }
            }
            PunchAction::WaitUntil(at) => {
                let mut wave_due = false;
                let mut found: Option<(SelectedPath, Option<PathSocket>)> = None;
                let held_until = held.as_ref().map(|(_, _, until)| *until);
                tokio::select! {
                    event = checks.replies.recv() => match event {
                        None => break Err(ConnectError::Shutdown),
                        Some(CheckEvent::Answered(reply)) => {
                            attempt.emit(Event::CheckSucceeded { remote: reply.remote, rtt: reply.rtt });
                            checks.last_answer.insert(reply.remote, tokio::time::Instant::now());
                            found = Some((checks.path_to(reply.remote, local, reply.rtt), None));
                        }
                        // The peer reached us from an address we did not know (its NAT's mapping
                        // towards us): check it at once, a "triggered check".
                        Some(CheckEvent::Received { from }) => checks.learned(from),
                    },
                    list = next_trickle(&mut checks.trickle), if checks.trickle.is_some() && !checks.trickle_done => checks.on_trickle(list),
                    _ = relay_done(&mut checks.relay_ready), if checks.relay_ready.is_some() => checks.relays_ready(),
                    Some((index, event)) = spray_events.recv() => {
                        let Some(socket) = spray.as_ref().and_then(|s| s.sockets.get(index)).cloned() else {
                            continue;
                        };
                        match event {
                            CheckEvent::Answered(reply) => {
                                attempt.emit(Event::CheckSucceeded { remote: reply.remote, rtt: reply.rtt });
                                let path = checks.path_to(reply.remote, socket.local_addr(), reply.rtt);
                                found = Some((path, Some(PathSocket(socket))));
                            }
                            CheckEvent::Received { from } => {
                                if socket.send_check(&attempt.session, from).is_ok() {
                                    checks.probes += 1;
                                    attempt.emit(Event::CheckSent { remote: from });
                                }
                            }
                        }
                    }
                    _ = tokio::time::sleep_until(next_wave.unwrap_or_else(tokio::time::Instant::now)), if next_wave.is_some() => {
                        wave_due = true;
                    }
                    _ = tokio::time::sleep_until(held_until.unwrap_or_else(tokio::time::Instant::now)), if held_until.is_some() => {
                        tracing::debug!("no direct pair answered within the relay grace");
                        if let Some((path, socket, _)) = held.take() {
                            break Ok((path, socket));
                        }
                    }
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                }
                if let Some((path, socket)) = found {
                    if path.kind == PathKind::Direct || !direct_possible || grace.is_zero() {
                        break Ok((path, socket));
                    }
                    if held.is_none() {
                        tracing::debug!(remote = %path.remote.addr, ?grace, "relay pair held while direct pairs may answer");
                        held = Some((path, socket, tokio::time::Instant::now() + grace));
                    }
                }
                if wave_due {
                    if let Some(spray) = spray.as_mut() {
                        // Only direct targets: a relay pair needs no spraying.
                        let direct: Vec<SocketAddr> = checks
                            .schedule
                            .targets()
                            .iter()
                            .copied()
                            .filter(|t| !checks.relayed.contains(t))
                            .collect();
                        let sent = spray.wave(&prober, &direct).await;
                        checks.probes += sent;
                        next_wave = Some(tokio::time::Instant::now() + WAVE_INTERVAL);
                    }
                }
            }
            PunchAction::GiveUp => {
                if let Some((path, socket, _)) = held.take() {
                    break Ok((path, socket));
                }
                let targets = checks.schedule.targets().len();
                break Err(ConnectError::NoPath(if targets == 0 {
                    "the peer sent no candidate this socket can reach".into()
                } else {
                    format!(
                        "no answer from {targets} candidate(s) within {:?}{}",
                        config.timeout,
                        if spray.is_some() {
                            ", spraying included"
                        } else {
                            ""
                        }
                    )
                }));
            }
        }
    };
    attempt.probes_sent += checks.probes;
    checks.probes = 0;
    let (path, socket) = result?;
    // On the node's socket the connection runs over a route that a better pair can take over
    // while the checks go on in the background.
    if socket.is_none() {
        if let Some(peer) = peer {
            if prober.route_to(&peer, path.remote.addr).is_some() {
                let choice =
                    PathChoice::new(path.remote.addr, path.rtt, path.kind == PathKind::Relay);
                let span = tracing::debug_span!("tend", session = %attempt.session.id_hex());
                let lifeline = attempt.lifeline.watch();
                tokio::spawn(checks.tend(peer, choice, lifeline).instrument(span));
            }
        }
    }
    Ok(Punched { path, socket })
}

impl<S> Service<Attempt> for Punch<S>
where
    S: Service<Attempt, Response = Connection> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    type Response = Connection;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut attempt: Attempt) -> Self::Future {
        let inner = take_inner(&mut self.inner);
        let prober = self.prober.clone();
        let config = self.config;
        ResponseFuture::new(async move {
            let span = tracing::debug_span!("punch", session = %attempt.session.id_hex());
            let Punched { path, socket } =
                punch(prober, config, &mut attempt).instrument(span).await?;
            attempt.emit(Event::PathSelected {
                remote: path.remote.addr,
                kind: path.kind,
            });
            attempt.path = Some(path);
            attempt.path_socket = socket;
            inner.oneshot(attempt).await.map_err(Into::into)
        })
    }
}
