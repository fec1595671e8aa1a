//! What to check and when: the sans-IO half of the punch layer.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use fog_core::attempt::is_local_only;
use fog_core::{Candidate, CandidateKind};

use super::PunchConfig;

/// Most remote candidates checked per attempt: a peer cannot make us spray checks at an
/// arbitrary list of addresses.
pub const MAX_REMOTE_CANDIDATES: usize = 16;

/// Most paths through our relays checked per attempt.
pub const MAX_RELAY_PATHS: usize = 8;

/// Most relayed addresses of the peer checked per attempt. They have a cap of their own, apart
/// from [`MAX_REMOTE_CANDIDATES`], so that direct candidates (sixteen predicted ports, say) can
/// never crowd out the relay pair, and relays never crowd out direct candidates.
pub const MAX_PEER_RELAYS: usize = 4;

/// Most addresses learned from the peer's own checks (peer-reflexive) per attempt.
pub const MAX_LEARNED: usize = 4;

/// Which of the peer's candidates are worth a check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetFilter {
    /// Behind two different NATs (their public IPs differ), the peer's private and loopback
    /// host addresses cannot be reached, and each check to one would cost a port on a
    /// sequential NAT: they are left out.
    pub different_nats: bool,
    /// Both sides offer predicted ports (two sequential NATs): only those are checked, so that
    /// the k-th check of each side leaves from the port the other predicted as its k-th.
    pub only_predicted: bool,
    /// No direct path can exist (the strategy says relay only): only the peer's relay
    /// candidates are checked directly.
    pub only_relayed: bool,
}

impl TargetFilter {
    /// The filter for two sides with these public IPs (when known) and candidates.
    pub fn new(
        local_public: Option<IpAddr>,
        remote_public: Option<IpAddr>,
        local: &[Candidate],
        remote: &[Candidate],
    ) -> Self {
        let predicted =
            |cands: &[Candidate]| cands.iter().any(|c| c.kind == CandidateKind::Predicted);
        TargetFilter {
            different_nats: matches!((local_public, remote_public), (Some(a), Some(b)) if a != b),
            only_predicted: predicted(local) && predicted(remote),
            only_relayed: false,
        }
    }

    /// Whether `candidate` gets checks.
    pub fn accepts(&self, candidate: &Candidate) -> bool {
        if self.only_relayed {
            return candidate.kind == CandidateKind::Relay;
        }
        if candidate.kind == CandidateKind::Relay {
            return true;
        }
        if self.only_predicted {
            return candidate.kind == CandidateKind::Predicted;
        }
        !(self.different_nats
            && candidate.kind == CandidateKind::Host
            && is_local_only(candidate.addr.ip()))
    }
}

/// The remote candidates worth checking, given both sides' candidates (their server-reflexive
/// ones tell the public IPs).
pub fn select_targets(local: &[Candidate], remote: &[Candidate]) -> Vec<Candidate> {
    use fog_core::attempt::public_ip;
    let filter = TargetFilter::new(public_ip(local), public_ip(remote), local, remote);
    remote
        .iter()
        .copied()
        .filter(|c| filter.accepts(c))
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
    /// The peer may still trickle candidates: no targets yet is no reason to give up.
    more_coming: bool,
    /// The kind of each target, each kind within its own cap.
    kinds: std::collections::HashMap<SocketAddr, TargetKind>,
}

/// What a target is, for the caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TargetKind {
    Direct,
    PeerRelay,
    RelayPath,
    Learned,
}

impl PunchSchedule {
    /// A schedule over the `remote` candidates a socket of `local`'s family can reach.
    pub fn new(remote: &[Candidate], local: SocketAddr, now: Instant, config: PunchConfig) -> Self {
        let mut schedule = PunchSchedule {
            targets: Vec::new(),
            next_round: now,
            interval: config.first_interval,
            deadline: now + config.timeout,
            config,
            more_coming: false,
            kinds: std::collections::HashMap::new(),
        };
        schedule.add_candidates(remote, local);
        schedule
    }

    /// The addresses this schedule checks.
    pub fn targets(&self) -> &[SocketAddr] {
        &self.targets
    }

    /// Adds a target learned on the way (the source of the peer's check); true when it is new
    /// and should be checked now. Bounded by [`MAX_LEARNED`].
    pub fn add_target(&mut self, addr: SocketAddr) -> bool {
        self.add(addr, TargetKind::Learned)
    }

    /// Adds candidates (at first, or late when trickled), best first, each kind within its
    /// cap: direct ones within [`MAX_REMOTE_CANDIDATES`], the peer's relayed addresses within
    /// [`MAX_PEER_RELAYS`]. Returns the new targets, to be checked at once.
    pub fn add_candidates(&mut self, remote: &[Candidate], local: SocketAddr) -> Vec<SocketAddr> {
        let mut sorted: Vec<Candidate> = remote
            .iter()
            .copied()
            .filter(|c| c.addr.is_ipv4() == local.is_ipv4() && c.addr.port() != 0)
            .collect();
        sorted.sort_by_key(|c| std::cmp::Reverse(c.priority));
        let mut added = Vec::new();
        for c in sorted {
            if self.targets.contains(&c.addr) {
                continue;
            }
            let kind = if c.kind == CandidateKind::Relay {
                TargetKind::PeerRelay
            } else {
                TargetKind::Direct
            };
            if self.add(c.addr, kind) {
                added.push(c.addr);
            }
        }
        added
    }

    /// Whether the peer may still send candidates (it trickles and has not said it is done).
    pub fn expect_more(&mut self, more: bool) {
        self.more_coming = more;
    }

    /// Adds paths through our relays; they have a cap of their own, so that relaying never
    /// crowds out direct candidates. Returns the new ones, to be checked at once.
    pub fn add_relay_paths(&mut self, paths: &[Candidate]) -> Vec<SocketAddr> {
        let mut added = Vec::new();
        for path in paths {
            if self.add(path.addr, TargetKind::RelayPath) {
                added.push(path.addr);
            }
        }
        added
    }

    /// Adds `addr` as a target of `kind` when it is new and its kind has room.
    fn add(&mut self, addr: SocketAddr, kind: TargetKind) -> bool {
        let cap = match kind {
            TargetKind::Direct => MAX_REMOTE_CANDIDATES,
            TargetKind::PeerRelay => MAX_PEER_RELAYS,
            TargetKind::RelayPath => MAX_RELAY_PATHS,
            TargetKind::Learned => MAX_LEARNED,
        };
        if self.kinds.contains_key(&addr)
            || self.kinds.values().filter(|k| **k == kind).count() >= cap
        {
            return false;
        }
        self.kinds.insert(addr, kind);
        self.targets.push(addr);
        true
    }

    /// Drops a target that is gone for good (a relayed address made again, ours or the
    /// peer's), freeing its place under its kind's cap whatever it was added as (a relayed
    /// address the peer's check taught us before its path update did is a learned target);
    /// true when it was a target.
    pub fn forget(&mut self, addr: SocketAddr) -> bool {
        self.targets.retain(|t| *t != addr);
        self.kinds.remove(&addr).is_some()
    }

    /// When the schedule gives up.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The next action at time `now`.
    pub fn poll(&mut self, now: Instant) -> PunchAction {
        if now >= self.deadline {
            return PunchAction::GiveUp;
        }
        if self.targets.is_empty() {
            return if self.more_coming {
                PunchAction::WaitUntil(self.deadline)
            } else {
                PunchAction::GiveUp
            };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::punch::PunchConfig;

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
    fn direct_candidates_never_crowd_out_the_relay_pair() {
        let t0 = Instant::now();
        let predicted: Vec<Candidate> = (1..=MAX_REMOTE_CANDIDATES as u16)
            .map(|p| {
                kind(
                    &format!("203.0.113.2:{}", 7000 + p),
                    CandidateKind::Predicted,
                )
            })
            .collect();
        let mut s = PunchSchedule::new(&predicted, local(), t0, PunchConfig::default());
        let paths: Vec<Candidate> = (1..=MAX_RELAY_PATHS as u16)
            .map(|p| kind(&format!("250.0.0.1:{p}"), CandidateKind::Relay))
            .collect();
        assert_eq!(s.add_relay_paths(&paths).len(), MAX_RELAY_PATHS);
        // The peer's relayed address trickles in last, and is still checked.
        let relay = kind("203.0.113.9:49152", CandidateKind::Relay);
        assert_eq!(s.add_candidates(&[relay], local()), vec![relay.addr]);
        // As is what the peer's own checks teach us.
        assert!(s.add_target("203.0.113.2:9999".parse().unwrap()));
        assert_eq!(
            s.targets().len(),
            MAX_REMOTE_CANDIDATES + MAX_RELAY_PATHS + 2
        );
        // Relays have a cap of their own too.
        let relays: Vec<Candidate> = (1..=10u16)
            .map(|p| kind(&format!("203.0.113.9:{}", 50000 + p), CandidateKind::Relay))
            .collect();
        assert_eq!(
            s.add_candidates(&relays, local()).len(),
            MAX_PEER_RELAYS - 1
        );
        // Relayed addresses made again replace the old ones, however often it happens.
        for round in 0..20u16 {
            assert!(s.forget(relay.addr) || round > 0);
            assert!(s.forget(paths[0].addr) || round > 0);
            let again = kind(
                &format!("203.0.113.9:{}", 60000 + round),
                CandidateKind::Relay,
            );
            assert_eq!(s.add_candidates(&[again], local()), vec![again.addr]);
            assert!(s.forget(again.addr));
            let path = kind(&format!("250.0.1.1:{}", round + 1), CandidateKind::Relay);
            assert_eq!(s.add_relay_paths(&[path]), vec![path.addr]);
            assert!(s.forget(path.addr));
        }
        assert!(!s.forget("203.0.113.9:1".parse().unwrap()));
        // A relayed address the peer's check taught us (learned) frees the learned cap when
        // the peer replaces it, again and again.
        for round in 0..20u16 {
            let taught: SocketAddr = format!("203.0.113.9:{}", 40000 + round).parse().unwrap();
            assert!(s.add_target(taught), "round {round}");
            assert!(s.forget(taught));
        }
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

    #[test]
    fn without_targets_it_waits_for_trickled_ones_until_the_deadline() {
        let t0 = Instant::now();
        let config = PunchConfig::default();
        let local: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        let mut s = PunchSchedule::new(&[], local, t0, config);
        assert_eq!(s.poll(t0), PunchAction::GiveUp);
        s.expect_more(true);
        assert_eq!(s.poll(t0), PunchAction::WaitUntil(t0 + config.timeout));
        let late = [kind("203.0.113.2:7000", CandidateKind::Srflx)];
        assert_eq!(s.add_candidates(&late, local).len(), 1);
        assert!(matches!(s.poll(t0), PunchAction::Send(_)));
        assert_eq!(s.poll(t0 + config.timeout), PunchAction::GiveUp);
    }

    #[test]
    fn public_ips_from_nat_profiles_filter_before_any_srflx_arrives() {
        let filter = TargetFilter::new(
            Some("203.0.113.1".parse().unwrap()),
            Some("203.0.113.2".parse().unwrap()),
            &[],
            &[],
        );
        assert!(!filter.accepts(&kind("10.2.0.2:5000", CandidateKind::Host)));
        assert!(filter.accepts(&kind("203.0.113.2:7000", CandidateKind::Srflx)));
        let unknown = TargetFilter::new(None, Some("203.0.113.2".parse().unwrap()), &[], &[]);
        assert!(unknown.accepts(&kind("10.2.0.2:5000", CandidateKind::Host)));
    }

    #[test]
    fn late_candidates_join_the_rounds_within_the_cap() {
        let t0 = Instant::now();
        let local: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        let mut s = PunchSchedule::new(
            &[Candidate::host("10.0.0.2:1".parse().unwrap())],
            local,
            t0,
            PunchConfig::default(),
        );
        let late = [
            kind("203.0.113.2:7000", CandidateKind::Srflx),
            kind("10.0.0.2:1", CandidateKind::Host),
        ];
        let added = s.add_candidates(&late, local);
        assert_eq!(
            added,
            vec!["203.0.113.2:7000".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(s.targets().len(), 2);
        let many: Vec<Candidate> = (2..100u16)
            .map(|p| kind(&format!("203.0.113.2:{p}"), CandidateKind::Srflx))
            .collect();
        s.add_candidates(&many, local);
        assert_eq!(s.targets().len(), MAX_REMOTE_CANDIDATES);
    }
}
