//! Per-node relay quotas: simultaneous allocations, relayed bytes per second, allocation lifetime.
//!
//! Quotas are counted against the node named in the username (the peer id), not against a
//! transport address, as RFC 8656 §7.2 advises: a node behind a NAT that changes its port, or
//! one that opens allocations over UDP and TCP at once, still has one budget.
//!
//! This is the bookkeeping only, synchronous and driven by explicit [`Instant`]s so the tests
//! pin the clock; the relay's gate and relayed sockets (in `gate.rs` and `conn.rs`) consult it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fog_core::PeerId;
use tokio::sync::watch;

/// The limits for each node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaConfig {
    /// Allocations one node may hold at once (over all transports). Further Allocate requests
    /// are refused with 486 (Allocation Quota Reached).
    pub max_allocations: usize,
    /// Bytes per second relayed for one node, both directions and all its allocations together;
    /// datagrams beyond it are dropped. A burst of one second's worth passes at once. 0 means no
    /// limit.
    pub max_bytes_per_sec: u64,
    /// How long one allocation may live in total, refreshes included. Granted lifetimes are
    /// shortened to fit, and the relayed socket is closed at the deadline.
    pub max_lifetime: Duration,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            max_allocations: 8,
            max_bytes_per_sec: 4 * 1024 * 1024,
            max_lifetime: Duration::from_secs(10 * 60),
        }
    }
}

/// A token bucket of bytes: `rate` bytes per second, holding at most one second's worth.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate` bytes per second (0: unlimited).
    pub fn new(rate: u64, now: Instant) -> Self {
        TokenBucket {
            rate: rate as f64,
            tokens: rate as f64,
            last: now,
        }
    }

    /// Takes `bytes` tokens if the bucket holds them; otherwise takes none and answers false
    /// (the datagram is dropped whole: a cut datagram is worth nothing).
    pub fn take(&mut self, bytes: usize, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }
}

/// The transport a client reached the relay on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// TURN over UDP.
    Udp,
    /// TURN over TCP.
    Tcp,
}

/// One client's side of an allocation's 5-tuple: the relay keeps one allocation per client
/// transport address and transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// The transport.
    pub transport: Transport,
    /// The client's address as the relay sees it.
    pub addr: SocketAddr,
}

/// A live allocation, as the quotas see it.
#[derive(Debug)]
pub struct Allocation {
    /// The node it is counted against.
    pub node: PeerId,
    /// When it must end, whatever the client's refreshes ask.
    pub deadline: Instant,
    /// Set to true to end it early (its client's TCP connection closed).
    pub revoke: watch::Sender<bool>,
}

/// Why an allocation is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// The node holds its maximum of allocations.
    #[error("the node holds {max} allocations, its maximum")]
    Allocations {
        /// The limit.
        max: usize,
    },
}

#[derive(Debug)]
struct NodeUsage {
    allocations: usize,
    bucket: TokenBucket,
}

/// What every node uses now.
#[derive(Debug)]
pub struct Ledger {
    config: QuotaConfig,
    nodes: HashMap<PeerId, NodeUsage>,
    allocations: HashMap<ClientKey, Allocation>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new(config: QuotaConfig) -> Self {
        Ledger {
            config,
            nodes: HashMap::new(),
            allocations: HashMap::new(),
        }
    }

    /// The limits.
    pub fn config(&self) -> &QuotaConfig {
        &self.config
    }

    /// Counts one more allocation for `node`, or refuses it over the quota.
    pub fn reserve(&mut self, node: PeerId, now: Instant) -> Result<(), QuotaError> {
        let rate = self.config.max_bytes_per_sec;
        let usage = self.nodes.entry(node).or_insert_with(|| NodeUsage {
            allocations: 0,
            bucket: TokenBucket::new(rate, now),
        });
        if usage.allocations >= self.config.max_allocations {
            if usage.allocations == 0 {
                self.nodes.remove(&node);
            }
            return Err(QuotaError::Allocations {
                max: self.config.max_allocations,
            });
        }
        usage.allocations += 1;
        Ok(())
    }

    /// Gives back one allocation of `node` (a reservation that was not used, or an allocation
    /// that ended). A node without allocations is forgotten.
    pub fn release(&mut self, node: &PeerId) {
        if let Some(usage) = self.nodes.get_mut(node) {
            usage.allocations = usage.allocations.saturating_sub(1);
            if usage.allocations == 0 {
                self.nodes.remove(node);
            }
        }
    }

    /// Allocations `node` holds (or has reserved) now.
    pub fn allocations(&self, node: &PeerId) -> usize {
        self.nodes.get(node).map_or(0, |u| u.allocations)
    }

    /// Charges `bytes` relayed for `node`; false means over the rate: drop the datagram.
    pub fn charge(&mut self, node: &PeerId, bytes: usize, now: Instant) -> bool {
        match self.nodes.get_mut(node) {
            Some(usage) => usage.bucket.take(bytes, now),
            // No allocation, nothing to relay.
            None => false,
        }
    }

    /// Records the allocation of `key`.
    pub fn insert(&mut self, key: ClientKey, allocation: Allocation) {
        self.allocations.insert(key, allocation);
    }

    /// Forgets the allocation of `key`, if it is the one with this `deadline` (an older
    /// allocation's end must not remove a newer one on the same 5-tuple).
    pub fn remove(&mut self, key: &ClientKey, deadline: Instant) {
        if self
            .allocations
            .get(key)
            .is_some_and(|a| a.deadline == deadline)
        {
            self.allocations.remove(key);
        }
    }

    /// The allocation of `key`.
    pub fn get(&self, key: &ClientKey) -> Option<&Allocation> {
        self.allocations.get(key)
    }

    /// Ends the allocation of `key` early.
    pub fn revoke(&mut self, key: &ClientKey) {
        if let Some(a) = self.allocations.get(key) {
            let _ = a.revoke.send(true);
        }
    }
}

/// The lifetime the relay should grant: what the request asks for, read the way the relay's TURN
/// engine reads it (absent, or 3600 s and over, means the 600 s default), shortened so the
/// allocation ends by its deadline. `None` when the request's own value is already within it.
pub fn clamp_lifetime(requested: Option<Duration>, remaining: Duration) -> Option<Duration> {
    const DEFAULT: Duration = Duration::from_secs(600);
    const MAXIMUM: Duration = Duration::from_secs(3600);
    let asked = match requested {
        Some(d) if d < MAXIMUM => d,
        _ => DEFAULT,
    };
    // Whole seconds on the wire: round down so the deadline holds, but not to 0 while time is
    // left, which would turn a Refresh into a deletion (the relayed socket ends at the deadline
    // itself anyway).
    let allowed = Duration::from_secs(remaining.as_secs().max(u64::from(!remaining.is_zero())));
    (asked > allowed).then_some(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        fog_core::Identity::generate().peer_id()
    }

    fn key(port: u16) -> ClientKey {
        ClientKey {
            transport: Transport::Udp,
            addr: SocketAddr::from(([192, 0, 2, 1], port)),
        }
    }

    #[test]
    fn the_bucket_passes_one_second_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        assert!(b.take(600, t0));
        assert!(b.take(400, t0));
        assert!(!b.take(1, t0), "empty after one second's worth");
        let t1 = t0 + Duration::from_millis(100);
        assert!(!b.take(200, t1), "100 ms refill 100 bytes");
        assert!(b.take(100, t1));
        // A long pause refills only up to one second's worth.
        let t2 = t1 + Duration::from_secs(60);
        assert!(!b.take(1001, t2));
        assert!(b.take(1000, t2));
        // A clock that goes back refills nothing and breaks nothing.
        assert!(!b.take(1, t1));
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0, t0);
        assert!(b.take(usize::MAX, t0));
    }

    #[test]
    fn allocations_are_counted_per_node() {
        let t0 = Instant::now();
        let mut ledger = Ledger::new(QuotaConfig {
            max_allocations: 2,
            ..Default::default()
        });
        let (a, b) = (peer(), peer());
        ledger.reserve(a, t0).unwrap();
        ledger.reserve(a, t0).unwrap();
        assert_eq!(
            ledger.reserve(a, t0),
            Err(QuotaError::Allocations { max: 2 })
        );
        ledger.reserve(b, t0).unwrap();
        assert_eq!(ledger.allocations(&a), 2);
        ledger.release(&a);
        assert_eq!(ledger.allocations(&a), 1);
        ledger.reserve(a, t0).unwrap();
        ledger.release(&a);
        ledger.release(&a);
        ledger.release(&a);
        assert_eq!(ledger.allocations(&a), 0);
        assert_eq!(ledger.allocations(&b), 1);
    }

    #[test]
    fn zero_allocations_refuses_everyone() {
        let mut ledger = Ledger::new(QuotaConfig {
            max_allocations: 0,
            ..Default::default()
        });
        let a = peer();
        assert!(ledger.reserve(a, Instant::now()).is_err());
        assert_eq!(ledger.allocations(&a), 0);
    }

    #[test]
    fn bytes_are_charged_per_node_across_allocations() {
        let t0 = Instant::now();
        let mut ledger = Ledger::new(QuotaConfig {
            max_bytes_per_sec: 1000,
            ..Default::default()
        });
        let (a, b) = (peer(), peer());
        assert!(!ledger.charge(&a, 1, t0), "no allocation, nothing relayed");
        ledger.reserve(a, t0).unwrap();
        ledger.reserve(a, t0).unwrap();
        ledger.reserve(b, t0).unwrap();
        assert!(ledger.charge(&a, 700, t0));
        assert!(
            !ledger.charge(&a, 700, t0),
            "the second allocation shares the budget"
        );
        assert!(ledger.charge(&b, 1000, t0), "another node has its own");
        assert!(ledger.charge(&a, 300, t0));
    }

    #[test]
    fn allocations_are_found_revoked_and_removed_by_key_and_deadline() {
        let t0 = Instant::now();
        let mut ledger = Ledger::new(QuotaConfig::default());
        let a = peer();
        let (revoke, mut revoked) = watch::channel(false);
        ledger.insert(
            key(1),
            Allocation {
                node: a,
                deadline: t0,
                revoke,
            },
        );
        assert_eq!(ledger.get(&key(1)).map(|x| x.node), Some(a));
        assert!(ledger.get(&key(2)).is_none());
        ledger.revoke(&key(1));
        assert!(revoked.has_changed().unwrap());
        assert!(*revoked.borrow_and_update());
        ledger.remove(&key(1), t0 + Duration::from_secs(1));
        assert!(
            ledger.get(&key(1)).is_some(),
            "another allocation's deadline"
        );
        ledger.remove(&key(1), t0);
        assert!(ledger.get(&key(1)).is_none());
    }

    #[test]
    fn lifetimes_are_shortened_to_the_deadline() {
        let s = Duration::from_secs;
        // Within the deadline: untouched.
        assert_eq!(clamp_lifetime(Some(s(300)), s(600)), None);
        assert_eq!(clamp_lifetime(Some(s(0)), s(600)), None, "deletion stays");
        // Too long: shortened.
        assert_eq!(clamp_lifetime(Some(s(900)), s(600)), Some(s(600)));
        // Absent or 3600 and over mean the 600 s default.
        assert_eq!(clamp_lifetime(None, s(900)), None);
        assert_eq!(clamp_lifetime(Some(s(7200)), s(900)), None);
        assert_eq!(clamp_lifetime(None, s(60)), Some(s(60)));
        assert_eq!(clamp_lifetime(Some(s(7200)), s(60)), Some(s(60)));
        // Fractions are cut, never rounded up past the deadline.
        assert_eq!(
            clamp_lifetime(Some(s(600)), Duration::from_millis(59_900)),
            Some(s(59))
        );
        assert_eq!(
            clamp_lifetime(Some(s(5)), Duration::from_millis(500)),
            Some(s(1))
        );
        assert_eq!(clamp_lifetime(Some(s(1)), Duration::ZERO), Some(s(0)));
    }
}
