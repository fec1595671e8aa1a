//! `PunchLayer`: authenticated connectivity checks over every candidate pair; the first pair
//! that answers becomes the path.
//!
//! Both sides check at once, so the outgoing checks of each open the way for the other's (the
//! seed of hole punching). The schedule is plain code ([`PunchSchedule`]); the layer only sends
//! what it says and waits for replies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fog_core::attempt::{is_local_only, public_ip};
use fog_core::{
    Attempt, BoxError, Candidate, CandidateKind, CheckEvent, ConnectError, Connection, Event,
    PathKind, PathSocket, Prober, SelectedPath, Strategy,
};
use tokio::sync::mpsc;

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
}

impl Default for PunchConfig {
    fn default() -> Self {
        PunchConfig {
            first_interval: Duration::from_millis(20),
            max_interval: Duration::from_millis(250),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Most remote candidates checked per attempt: a peer cannot make us spray checks at an
/// arbitrary list of addresses.
pub const MAX_REMOTE_CANDIDATES: usize = 16;

/// The remote candidates worth checking, given both sides' candidates.
///
/// - Behind two different NATs (their server-reflexive addresses differ), the peer's private and
///   loopback host addresses cannot be reached, and each check to one would cost a port on a
///   sequential NAT: they are left out.
/// - When both sides offer predicted ports (two sequential NATs), only those are checked: the
///   k-th check of each side then leaves from the port the other predicted as its k-th.
pub fn select_targets(local: &[Candidate], remote: &[Candidate]) -> Vec<Candidate> {
    let different_nats =
        matches!((public_ip(local), public_ip(remote)), (Some(a), Some(b)) if a != b);
    let predicted = |cands: &[Candidate]| cands.iter().any(|c| c.kind == CandidateKind::Predicted);
    let both_predict = predicted(local) && predicted(remote);
    remote
        .iter()
        .copied()
        .filter(|c| {
            if both_predict {
                return c.kind == CandidateKind::Predicted;
            }
            !(different_nats && c.kind == CandidateKind::Host && is_local_only(c.addr.ip()))
        })
        .collect()
}

/// What the punch loop should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PunchAction {
    /// Send one check to each of these now.
    Send(Vec<SocketAddr>),
    /// Nothing to do until then.
    WaitUntil(Instant),
    /// Out of time.
    GiveUp,
}

/// When to check which remote candidates: rounds over all of them, best first, with a gap that
/// starts small (a lost first packet costs little) and grows (a dead pair costs little).
#[derive(Clone, Debug)]
pub struct PunchSchedule {
    targets: Vec<SocketAddr>,
    next_round: Instant,
    interval: Duration,
    deadline: Instant,
    config: PunchConfig,
}

impl PunchSchedule {
    /// A schedule over the `remote` candidates a socket of `local`'s family can reach.
    pub fn new(remote: &[Candidate], local: SocketAddr, now: Instant, config: PunchConfig) -> Self {
        let mut sorted: Vec<Candidate> = remote
            .iter()
            .copied()
            .filter(|c| c.addr.is_ipv4() == local.is_ipv4() && c.addr.port() != 0)
            .collect();
        sorted.sort_by_key(|c| std::cmp::Reverse(c.priority));
        let mut targets: Vec<SocketAddr> = Vec::new();
        for c in sorted {
            if !targets.contains(&c.addr) && targets.len() < MAX_REMOTE_CANDIDATES {
                targets.push(c.addr);
            }
        }
        PunchSchedule {
            targets,
            next_round: now,
            interval: config.first_interval,
            deadline: now + config.timeout,
            config,
        }
    }

    /// The addresses this schedule checks.
    pub fn targets(&self) -> &[SocketAddr] {
        &self.targets
    }

    /// Adds a target learned on the way (the source of the peer's check); true when it is new
    /// and should be checked now. Still bounded by [`MAX_REMOTE_CANDIDATES`] + 1.
    pub fn add_target(&mut self, addr: SocketAddr) -> bool {
        if self.targets.contains(&addr) || self.targets.len() > MAX_REMOTE_CANDIDATES {
            return false;
        }
        self.targets.push(addr);
        true
    }

    /// The next action at time `now`.
    pub fn poll(&mut self, now: Instant) -> PunchAction {
        if now >= self.deadline || self.targets.is_empty() {
            return PunchAction::GiveUp;
        }
        if now < self.next_round {
            return PunchAction::WaitUntil(self.next_round.min(self.deadline));
        }
        let first = self.interval == self.config.first_interval;
        self.next_round = now + self.interval;
        self.interval = (self.interval * 2).min(self.config.max_interval);
        if first {
            // Each check of the first round goes out twice, back to back: on a sequential NAT a
            // lost first check would let the next target take its port, and the predicted ports
            // would no longer meet.
            let doubled = self.targets.iter().flat_map(|t| [*t, *t]).collect();
            return PunchAction::Send(doubled);
        }
        PunchAction::Send(self.targets.clone())
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

async fn punch(
    prober: Arc<dyn Prober>,
    config: PunchConfig,
    attempt: &mut Attempt,
) -> Result<(SelectedPath, Option<PathSocket>), ConnectError> {
    let remote = attempt.remote.as_ref().ok_or(ConnectError::MissingInput {
        layer: "PunchLayer",
        needs: "the peer's candidates (SignalLayer)",
    })?;
    let candidates = remote.candidates.clone();
    let targets = select_targets(&attempt.local_candidates, &candidates);
    let local = prober.local_addr();
    let mut events = prober.watch(&attempt.session);
    // tokio's clock, so that tests with a paused clock run the schedule without waiting.
    let now = || tokio::time::Instant::now().into_std();
    let mut schedule = PunchSchedule::new(&targets, local, now(), config);
    let (spray_tx, mut spray_events) = mpsc::unbounded_channel();
    let mut spray = spray_role(attempt).map(|role| Spray::new(role, attempt.session, spray_tx));
    let mut next_wave = spray.as_ref().map(|_| tokio::time::Instant::now());
    let path_to = |remote: SocketAddr, local: SocketAddr, rtt| {
        let candidate = candidates
            .iter()
            .copied()
            .filter(|c| c.addr == remote)
            .max_by_key(|c| c.priority)
            .unwrap_or(Candidate {
                addr: remote,
                kind: CandidateKind::Prflx,
                priority: 0,
            });
        SelectedPath {
            remote: candidate,
            local: local_address_towards(local, remote),
            kind: PathKind::Direct,
            rtt,
        }
    };
    loop {
        match schedule.poll(now()) {
            PunchAction::Send(targets) => {
                for target in targets {
                    match prober.send_check(&attempt.session, target) {
                        Ok(()) => {
                            attempt.probes_sent += 1;
                            attempt.emit(Event::CheckSent { remote: target });
                        }
                        Err(e) => tracing::debug!(%target, error = %e, "check not sent"),
                    }
                }
            }
            PunchAction::WaitUntil(at) => {
                let mut wave_due = false;
                tokio::select! {
                    event = events.recv() => match event {
                        None => return Err(ConnectError::Shutdown),
                        Some(CheckEvent::Answered(reply)) => {
                            attempt.emit(Event::CheckSucceeded { remote: reply.remote, rtt: reply.rtt });
                            return Ok((path_to(reply.remote, local, reply.rtt), None));
                        }
                        // The peer reached us from an address we did not know (its NAT's mapping
                        // towards us): check it at once, a "triggered check".
                        Some(CheckEvent::Received { from }) => {
                            if schedule.add_target(from) && prober.send_check(&attempt.session, from).is_ok() {
                                attempt.probes_sent += 1;
                                attempt.emit(Event::CheckSent { remote: from });
                            }
                        }
                    },
                    Some((index, event)) = spray_events.recv() => {
                        let Some(socket) = spray.as_ref().and_then(|s| s.sockets.get(index)).cloned() else {
                            continue;
                        };
                        match event {
                            CheckEvent::Answered(reply) => {
                                attempt.emit(Event::CheckSucceeded { remote: reply.remote, rtt: reply.rtt });
                                let path = path_to(reply.remote, socket.local_addr(), reply.rtt);
                                return Ok((path, Some(PathSocket(socket))));
                            }
                            CheckEvent::Received { from } => {
                                if socket.send_check(&attempt.session, from).is_ok() {
                                    attempt.probes_sent += 1;
                                    attempt.emit(Event::CheckSent { remote: from });
                                }
                            }
                        }
                    }
                    _ = tokio::time::sleep_until(next_wave.unwrap_or_else(tokio::time::Instant::now)), if next_wave.is_some() => {
                        wave_due = true;
                    }
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                }
                if wave_due {
                    if let Some(spray) = spray.as_mut() {
                        let sent = spray.wave(&prober, schedule.targets()).await;
                        attempt.probes_sent += sent;
                        next_wave = Some(tokio::time::Instant::now() + WAVE_INTERVAL);
                    }
                }
            }
            PunchAction::GiveUp => {
                return Err(ConnectError::NoPath(if schedule.targets().is_empty() {
                    "the peer sent no candidate this socket can reach".into()
                } else {
                    format!(
                        "no answer from {} candidate(s) within {:?}{}",
                        schedule.targets().len(),
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
    }
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
            use tracing::Instrument;
            let span = tracing::debug_span!("punch", session = %attempt.session.id_hex());
            let (path, socket) = punch(prober, config, &mut attempt).instrument(span).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(s: &str) -> Candidate {
        Candidate::host(s.parse().unwrap())
    }

    fn local() -> SocketAddr {
        "0.0.0.0:4000".parse().unwrap()
    }

    #[test]
    fn rounds_go_best_first_and_back_off() {
        let t0 = Instant::now();
        let config = PunchConfig::default();
        let mut s = PunchSchedule::new(
            &[cand("127.0.0.1:1"), cand("10.0.0.2:1"), cand("10.0.0.2:1")],
            local(),
            t0,
            config,
        );
        let both: Vec<SocketAddr> = vec![
            "10.0.0.2:1".parse().unwrap(),
            "127.0.0.1:1".parse().unwrap(),
        ];
        let doubled = vec![both[0], both[0], both[1], both[1]];
        assert_eq!(s.poll(t0), PunchAction::Send(doubled));
        assert_eq!(
            s.poll(t0),
            PunchAction::WaitUntil(t0 + Duration::from_millis(20))
        );
        let t1 = t0 + Duration::from_millis(20);
        assert_eq!(s.poll(t1), PunchAction::Send(both.clone()));
        assert_eq!(
            s.poll(t1),
            PunchAction::WaitUntil(t1 + Duration::from_millis(40))
        );
        // The gap stops growing at the maximum.
        let mut now = t1;
        for _ in 0..10 {
            now += Duration::from_millis(300);
            assert!(matches!(s.poll(now), PunchAction::Send(_)));
        }
        assert_eq!(
            s.poll(now),
            PunchAction::WaitUntil(now + config.max_interval)
        );
    }

    #[test]
    fn it_gives_up_at_the_deadline() {
        let t0 = Instant::now();
        let mut s = PunchSchedule::new(&[cand("10.0.0.2:1")], local(), t0, PunchConfig::default());
        assert!(matches!(s.poll(t0), PunchAction::Send(_)));
        assert_eq!(s.poll(t0 + Duration::from_secs(5)), PunchAction::GiveUp);
    }

    fn kind(addr: &str, kind: CandidateKind) -> Candidate {
        Candidate {
            addr: addr.parse().unwrap(),
            kind,
            priority: 1,
        }
    }

    #[test]
    fn behind_different_nats_private_hosts_are_not_checked() {
        let local = [
            kind("10.1.0.2:5000", CandidateKind::Host),
            kind("203.0.113.1:6000", CandidateKind::Srflx),
        ];
        let remote = [
            kind("10.2.0.2:5000", CandidateKind::Host),
            kind("127.0.0.1:5000", CandidateKind::Host),
            kind("198.51.100.4:5000", CandidateKind::Host),
            kind("203.0.113.2:7000", CandidateKind::Srflx),
        ];
        let picked: Vec<String> = select_targets(&local, &remote)
            .iter()
            .map(|c| c.addr.to_string())
            .collect();
        assert_eq!(picked, ["198.51.100.4:5000", "203.0.113.2:7000"]);
    }

    #[test]
    fn behind_the_same_nat_the_lan_is_checked() {
        let local = [kind("203.0.113.1:6000", CandidateKind::Srflx)];
        let remote = [
            kind("10.1.0.3:5000", CandidateKind::Host),
            kind("203.0.113.1:7000", CandidateKind::Srflx),
        ];
        assert_eq!(select_targets(&local, &remote).len(), 2);
        // Without server-reflexive addresses nothing is known: everything is checked.
        assert_eq!(select_targets(&[], &remote).len(), 2);
    }

    #[test]
    fn two_predicting_sides_check_only_predictions() {
        let local = [
            kind("203.0.113.1:6000", CandidateKind::Srflx),
            kind("203.0.113.1:6001", CandidateKind::Predicted),
        ];
        let remote = [
            kind("203.0.113.2:7000", CandidateKind::Srflx),
            kind("203.0.113.2:7001", CandidateKind::Predicted),
            kind("203.0.113.2:7002", CandidateKind::Predicted),
        ];
        let picked = select_targets(&local, &remote);
        assert_eq!(picked.len(), 2);
        assert!(picked.iter().all(|c| c.kind == CandidateKind::Predicted));
    }

    #[test]
    fn a_peer_cannot_make_us_check_more_than_the_cap() {
        let many: Vec<Candidate> = (1..=100u16)
            .map(|port| cand(&format!("10.0.0.2:{port}")))
            .collect();
        let s = PunchSchedule::new(&many, local(), Instant::now(), PunchConfig::default());
        assert_eq!(s.targets().len(), MAX_REMOTE_CANDIDATES);
    }

    #[test]
    fn unreachable_families_and_port_zero_are_skipped() {
        let t0 = Instant::now();
        let mut s = PunchSchedule::new(
            &[cand("[2001:db8::1]:1"), cand("10.0.0.2:0")],
            local(),
            t0,
            PunchConfig::default(),
        );
        assert!(s.targets().is_empty());
        assert_eq!(s.poll(t0), PunchAction::GiveUp);
    }
}
