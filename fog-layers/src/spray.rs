//! Birthday spraying, for a random symmetric NAT against a port-restricted cone.
//!
//! The random side opens many sockets and sends a check from each to the cone's public
//! address: each opens a mapping on a random port. The cone side sends checks to many random
//! ports of the random side's public IP: each opens its filter for that port. When one port is
//! in both sets, a check gets through and the usual check and answer follow on that socket.
//! With 256 sockets against 1024 ports out of 64 512, about 98 % of waves meet; each wave is a
//! fresh set of sockets, and the punch timeout bounds the number of waves.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use fog_core::{Attempt, CheckEvent, Prober, SessionKeys};
use rand::seq::SliceRandom;
use tokio::sync::mpsc;

/// Sockets the random side opens per wave.
pub const SPRAY_SOCKETS: usize = 256;
/// Ports the cone side checks per wave.
pub const SPRAY_PORTS: usize = 1024;
/// Time between waves.
pub const WAVE_INTERVAL: Duration = Duration::from_millis(600);
/// Checks sent back to back before a pause of [`PACE`]: bounds the rate to about 32 000 a second.
const BURST: usize = 32;
const PACE: Duration = Duration::from_millis(1);

/// `count` distinct random ports above 1023, the range NATs allocate from.
pub fn random_ports(count: usize, rng: &mut impl rand::Rng) -> Vec<u16> {
    let mut all: Vec<u16> = (1024..=u16::MAX).collect();
    all.partial_shuffle(rng, count);
    all.truncate(count);
    all
}

/// Which side of the spray this node plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SprayRole {
    /// Behind the random symmetric NAT: many sockets.
    Sockets,
    /// Behind the cone: many ports of the peer's public IP.
    Ports(IpAddr),
}

/// The peer's public IP, from its server-reflexive candidate or its NAT profile.
pub fn peer_public_ip(attempt: &Attempt) -> Option<IpAddr> {
    attempt.remote_public_ip()
}

/// The running spray of one attempt.
pub struct Spray {
    role: SprayRole,
    session: SessionKeys,
    /// The random side's sockets so far, by index.
    pub sockets: Vec<Arc<dyn Prober>>,
    events: mpsc::UnboundedSender<(usize, CheckEvent)>,
    forwarders: Vec<tokio::task::JoinHandle<()>>,
    ports: Vec<u16>,
}

impl Drop for Spray {
    fn drop(&mut self) {
        for forwarder in &self.forwarders {
            forwarder.abort();
        }
    }
}

impl Spray {
    /// A spray in `role`, whose socket events go to `events` tagged with the socket's index.
    pub fn new(
        role: SprayRole,
        session: SessionKeys,
        events: mpsc::UnboundedSender<(usize, CheckEvent)>,
    ) -> Self {
        let ports = match role {
            SprayRole::Ports(_) => random_ports(SPRAY_PORTS, &mut rand::thread_rng()),
            SprayRole::Sockets => Vec::new(),
        };
        Spray {
            role,
            session,
            sockets: Vec::new(),
            events,
            forwarders: Vec::new(),
            ports,
        }
    }

    /// One wave: new sockets checking `targets` (random side), or checks to the random ports
    /// (cone side). Returns the number of checks sent.
    pub async fn wave(&mut self, main: &Arc<dyn Prober>, targets: &[SocketAddr]) -> u32 {
        let mut sent = 0u32;
        match self.role {
            SprayRole::Sockets => {
                let fresh = main.spray_sockets(SPRAY_SOCKETS).await;
                for (n, socket) in fresh.into_iter().enumerate() {
                    let index = self.sockets.len();
                    let mut rx = socket.watch(&self.session);
                    let tx = self.events.clone();
                    self.forwarders.push(tokio::spawn(async move {
                        while let Some(event) = rx.recv().await {
                            if tx.send((index, event)).is_err() {
                                return;
                            }
                        }
                    }));
                    for target in targets {
                        if socket.send_check(&self.session, *target).is_ok() {
                            sent += 1;
                        }
                    }
                    self.sockets.push(socket);
                    if (n + 1) % BURST == 0 {
                        tokio::time::sleep(PACE).await;
                    }
                }
            }
            SprayRole::Ports(ip) => {
                for (n, port) in self.ports.iter().enumerate() {
                    if main
                        .send_check(&self.session, SocketAddr::new(ip, *port))
                        .is_ok()
                    {
                        sent += 1;
                    }
                    if (n + 1) % BURST == 0 {
                        tokio::time::sleep(PACE).await;
                    }
                }
                // The next wave tries other ports, against the other side's new sockets.
                self.ports = random_ports(SPRAY_PORTS, &mut rand::thread_rng());
            }
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn ports_are_distinct_and_above_the_reserved_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let ports = random_ports(SPRAY_PORTS, &mut rng);
        assert_eq!(ports.len(), SPRAY_PORTS);
        let mut sorted = ports.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), SPRAY_PORTS);
        assert!(ports.iter().all(|p| *p >= 1024));
    }

    #[test]
    fn one_wave_meets_with_the_promised_odds() {
        // 256 random mappings against 1024 random ports out of 64 512: simulate many waves.
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let waves = 300;
        let met = (0..waves)
            .filter(|_| {
                let mapped = random_ports(SPRAY_SOCKETS, &mut rng);
                let sprayed: std::collections::HashSet<u16> =
                    random_ports(SPRAY_PORTS, &mut rng).into_iter().collect();
                mapped.iter().any(|p| sprayed.contains(p))
            })
            .count();
        let rate = met as f64 / waves as f64;
        assert!(rate > 0.95, "only {rate} of waves met");
    }
}
