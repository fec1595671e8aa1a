//! Which working pair carries the connection: the sans-IO half of "a better pair found later
//! replaces the first".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use fog_core::attempt::is_local_only;

/// How much lower a new pair's round trip must be to take over: a quarter, and at least
/// [`MIN_GAIN`], so that jitter does not move the connection back and forth.
const GAIN_FRACTION: u32 = 4;
/// Smallest round-trip gain worth a move.
pub const MIN_GAIN: Duration = Duration::from_millis(2);

/// The pair in use and the best round trip seen on every pair that answered.
#[derive(Clone, Debug)]
pub struct PathChoice {
    current: SocketAddr,
    current_relayed: bool,
    /// The pair in use is gone for good (a relayed address made again): any pair that answers
    /// takes over.
    current_retired: bool,
    best_rtt: HashMap<SocketAddr, Duration>,
}

impl PathChoice {
    /// Starts with the first pair that answered (`relayed` when it goes through a relay).
    pub fn new(first: SocketAddr, rtt: Duration, relayed: bool) -> Self {
        PathChoice {
            current: first,
            current_relayed: relayed,
            current_retired: false,
            best_rtt: HashMap::from([(first, rtt)]),
        }
    }

    /// `addr` is gone for good (the relayed address behind it was made again); when it is
    /// the pair in use, the next pair to answer takes over whatever its round trip.
    pub fn retire(&mut self, addr: SocketAddr) {
        self.best_rtt.remove(&addr);
        if addr == self.current {
            self.current_retired = true;
        }
    }

    /// Whether the pair in use is gone for good.
    pub fn retired(&self) -> bool {
        self.current_retired
    }

    /// Whether the pair in use goes through a relay.
    pub fn relayed(&self) -> bool {
        self.current_relayed
    }

    /// The pair in use.
    pub fn current(&self) -> SocketAddr {
        self.current
    }

    /// The best round trip seen on `addr`.
    pub fn rtt(&self, addr: SocketAddr) -> Option<Duration> {
        self.best_rtt.get(&addr).copied()
    }

    /// The pair in use died: `to`, which still answers, takes over whatever its round trip.
    pub fn fall_back(&mut self, to: SocketAddr, relayed: bool) {
        self.current = to;
        self.current_relayed = relayed;
        self.current_retired = false;
    }

    /// The pair in use turned out to go through a relay (the peer's relayed address answered
    /// before its candidate arrived): from now on a direct pair takes over when it answers.
    pub fn mark_relayed(&mut self) {
        self.current_relayed = true;
    }

    /// A check to `addr` (through a relay when `relayed`) was answered after `rtt`. Returns
    /// true when the connection should move there: a direct pair beats any relay, the LAN
    /// beats any path through a NAT, and otherwise a clearly lower round trip wins.
    pub fn answered(&mut self, addr: SocketAddr, rtt: Duration, relayed: bool) -> bool {
        let best = self.best_rtt.entry(addr).or_insert(rtt);
        *best = (*best).min(rtt);
        let rtt = *best;
        if addr == self.current {
            return false;
        }
        let Some(&current_rtt) = self
            .best_rtt
            .get(&self.current)
            .filter(|_| !self.current_retired)
        else {
            self.fall_back(addr, relayed);
            return true;
        };
        let lan = |a: SocketAddr| is_local_only(a.ip());
        let better = match (relayed, self.current_relayed) {
            (false, true) => true,
            (true, false) => false,
            _ => match (lan(addr), lan(self.current)) {
                (true, false) => true,
                (false, true) => false,
                _ => {
                    let gain = current_rtt.saturating_sub(rtt);
                    gain >= MIN_GAIN && gain >= current_rtt / GAIN_FRACTION
                }
            },
        };
        if better {
            self.current = addr;
            self.current_relayed = relayed;
        }
        better
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_retired_pair_gives_way_to_the_next_that_answers() {
        let old = addr("203.0.113.9:50000");
        let mut choice = PathChoice::new(old, ms(10), true);
        // A slower relay pair does not take over a working one…
        assert!(!choice.answered(addr("203.0.113.9:50001"), ms(30), true));
        // …but does once the one in use is gone for good.
        choice.retire(addr("203.0.113.9:49999"));
        assert!(!choice.retired());
        choice.retire(old);
        assert!(choice.retired());
        assert!(choice.answered(addr("203.0.113.9:50002"), ms(40), true));
        assert_eq!(choice.current(), addr("203.0.113.9:50002"));
        assert!(!choice.retired());
        // And the usual rules hold again.
        assert!(!choice.answered(addr("203.0.113.9:50003"), ms(39), true));
    }

    #[test]
    fn the_lan_replaces_a_public_path_and_is_kept() {
        let mut choice = PathChoice::new(addr("203.0.113.2:7000"), ms(40), false);
        assert!(choice.answered(addr("10.1.0.3:5000"), ms(45), false));
        assert_eq!(choice.current(), addr("10.1.0.3:5000"));
        // A public path never displaces the LAN, however fast it looks.
        assert!(!choice.answered(addr("203.0.113.2:7000"), ms(1), false));
    }

    #[test]
    fn a_clearly_faster_pair_wins_and_jitter_does_not() {
        let mut choice = PathChoice::new(addr("203.0.113.2:7000"), ms(100), false);
        assert!(
            !choice.answered(addr("198.51.100.9:7000"), ms(90), false),
            "10 % is jitter"
        );
        assert!(choice.answered(addr("198.51.100.9:7000"), ms(60), false));
        assert_eq!(choice.current(), addr("198.51.100.9:7000"));
        // The old path's later samples are compared with the best seen on the new one.
        assert!(!choice.answered(addr("203.0.113.2:7000"), ms(55), false));
        assert_eq!(choice.rtt(addr("198.51.100.9:7000")), Some(ms(60)));
    }

    #[test]
    fn tiny_gains_on_fast_paths_do_not_move_the_connection() {
        let mut choice =
            PathChoice::new(addr("203.0.113.2:7000"), Duration::from_micros(900), false);
        assert!(!choice.answered(addr("198.51.100.9:7000"), Duration::from_micros(300), false));
    }

    #[test]
    fn a_direct_pair_takes_over_from_a_relay_and_never_gives_way_to_one() {
        let mut choice = PathChoice::new(addr("250.0.0.1:1"), ms(30), true);
        assert!(choice.relayed());
        assert!(
            !choice.answered(addr("250.0.0.2:1"), ms(28), true),
            "relay to relay needs a real gain"
        );
        assert!(choice.answered(addr("203.0.113.2:7000"), ms(80), false));
        assert!(!choice.relayed());
        assert!(!choice.answered(addr("250.0.0.1:1"), ms(1), true));
    }

    #[test]
    fn a_pair_found_to_be_relayed_gives_way_to_a_direct_one() {
        let mut choice = PathChoice::new(addr("203.0.113.9:50000"), ms(5), false);
        assert!(!choice.answered(addr("203.0.113.2:7000"), ms(5), false));
        choice.mark_relayed();
        assert!(choice.relayed());
        assert!(choice.answered(addr("203.0.113.2:7000"), ms(6), false));
        assert_eq!(choice.current(), addr("203.0.113.2:7000"));
    }

    #[test]
    fn answers_on_the_current_pair_only_update_its_round_trip() {
        let mut choice = PathChoice::new(addr("203.0.113.2:7000"), ms(50), false);
        assert!(!choice.answered(addr("203.0.113.2:7000"), ms(30), false));
        assert_eq!(choice.rtt(addr("203.0.113.2:7000")), Some(ms(30)));
    }
}
