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

use fog_core::{
    Attempt, BoxError, Candidate, ConnectError, Connection, Event, PathKind, Prober, SelectedPath,
};
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

    /// The next action at time `now`.
    pub fn poll(&mut self, now: Instant) -> PunchAction {
        if now >= self.deadline || self.targets.is_empty() {
            return PunchAction::GiveUp;
        }
        if now < self.next_round {
            return PunchAction::WaitUntil(self.next_round.min(self.deadline));
        }
        self.next_round = now + self.interval;
        self.interval = (self.interval * 2).min(self.config.max_interval);
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

async fn punch(
    prober: Arc<dyn Prober>,
    config: PunchConfig,
    attempt: &mut Attempt,
) -> Result<SelectedPath, ConnectError> {
    let remote = attempt.remote.as_ref().ok_or(ConnectError::MissingInput {
        layer: "PunchLayer",
        needs: "the peer's candidates (SignalLayer)",
    })?;
    let candidates = remote.candidates.clone();
    let local = prober.local_addr();
    let mut replies = prober.watch(&attempt.session);
    // tokio's clock, so that tests with a paused clock run the schedule without waiting.
    let now = || tokio::time::Instant::now().into_std();
    let mut schedule = PunchSchedule::new(&candidates, local, now(), config);
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
                tokio::select! {
                    reply = replies.recv() => {
                        let Some(reply) = reply else { return Err(ConnectError::Shutdown) };
                        attempt.emit(Event::CheckSucceeded { remote: reply.remote, rtt: reply.rtt });
                        let candidate = candidates
                            .iter()
                            .copied()
                            .filter(|c| c.addr == reply.remote)
                            .max_by_key(|c| c.priority)
                            .unwrap_or_else(|| Candidate::host(reply.remote));
                        return Ok(SelectedPath {
                            remote: candidate,
                            local: local_address_towards(local, reply.remote),
                            kind: PathKind::Direct,
                            rtt: reply.rtt,
                        });
                    }
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                }
            }
            PunchAction::GiveUp => {
                return Err(ConnectError::NoPath(if schedule.targets().is_empty() {
                    "the peer sent no candidate this socket can reach".into()
                } else {
                    format!(
                        "no answer from {} candidate(s) within {:?}",
                        schedule.targets().len(),
                        config.timeout
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
            let path = punch(prober, config, &mut attempt).instrument(span).await?;
            attempt.emit(Event::PathSelected {
                remote: path.remote.addr,
                kind: path.kind,
            });
            attempt.path = Some(path);
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
        let both = vec![
            "10.0.0.2:1".parse().unwrap(),
            "127.0.0.1:1".parse().unwrap(),
        ];
        assert_eq!(s.poll(t0), PunchAction::Send(both.clone()));
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
