//! The probe: runs the RFC 5780 tests against STUN servers and feeds [`classify`].

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use fog_core::NatProfile;

use super::classify::{classify, ProbeResults};
use super::stun_client::{Retransmit, StunSocket};

/// How the probe paces itself.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// STUN servers: the first is asked first; a second one is used when the first does not
    /// support RFC 5780.
    pub servers: Vec<SocketAddr>,
    /// First retransmission of the first request (it may be lost while ARP resolves).
    pub first_rto: Duration,
    /// Give up on the first server (and call UDP blocked) after this long.
    pub first_deadline: Duration,
}

impl ProbeConfig {
    /// Defaults for `servers`: retransmit after 50 ms, give up after 1 s.
    pub fn new(servers: Vec<SocketAddr>) -> Self {
        ProbeConfig {
            servers,
            first_rto: Duration::from_millis(50),
            first_deadline: Duration::from_secs(1),
        }
    }
}

/// A probe's verdict and how long it took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatReport {
    /// The verdict.
    pub profile: NatProfile,
    /// Time the probe took.
    pub elapsed: Duration,
}

/// Why a probe could not run at all (no answer is a verdict, not an error).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No STUN server was given.
    #[error("no STUN server to probe with")]
    NoServer,
    /// A local socket could not be opened.
    #[error("cannot open a UDP socket: {0}")]
    Socket(#[from] std::io::Error),
}

fn local_ips() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|ifaces| ifaces.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default()
}

/// Probes the NAT in front of this host.
///
/// Test I asks the first server for our mapping and its OTHER-ADDRESS. Then a fresh socket asks
/// for answers from the other IP and port, and from the other port (filtering), while the first
/// socket asks the other three server addresses one after another (mapping, and port allocation
/// from the order of the mappings). Waits scale with the round trip of test I.
pub async fn probe_nat(config: &ProbeConfig) -> Result<NatReport, ProbeError> {
    let started = Instant::now();
    let primary_server = *config.servers.first().ok_or(ProbeError::NoServer)?;
    let any: SocketAddr = if primary_server.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let socket = StunSocket::bind(any).await?;
    let mut results = ProbeResults {
        local_port: socket.local_addr()?.port(),
        local_ips: local_ips(),
        ..ProbeResults::default()
    };
    let first = Retransmit {
        rto: config.first_rto,
        deadline: config.first_deadline,
    };
    let test1 = socket.binding(primary_server, None, first).await;
    let Some(test1) = test1 else {
        // Maybe only this server is unreachable: a second one decides.
        if let Some(second) = config.servers.get(1) {
            results.second_server = socket.binding(*second, None, first).await.map(|a| a.mapped);
        }
        return Ok(NatReport {
            profile: classify(&results),
            elapsed: started.elapsed(),
        });
    };
    results.primary = Some(test1.mapped);
    results.other_address = test1.other;
    // From here on the network is known to answer: pace by its round trip.
    let rtt = test1.rtt.max(Duration::from_millis(2));
    let step = Retransmit {
        rto: (rtt * 2).max(Duration::from_millis(20)),
        deadline: (rtt * 4).max(Duration::from_millis(150)),
    };

    // A hairpinned request crosses the access link twice: a few round trips are plenty.
    let hairpin_wait = Retransmit {
        rto: step.rto,
        deadline: (rtt * 3).max(Duration::from_millis(100)),
    };
    let behind_nat = !results.local_ips.contains(&test1.mapped.ip());
    let hairpin = || async {
        if behind_nat {
            Some(socket.hairpins(test1.mapped, hairpin_wait).await)
        } else {
            None
        }
    };
    match test1.other {
        Some(other) => {
            let fresh = StunSocket::bind(any).await?;
            let filtering = async {
                let both = fresh.binding(primary_server, Some((true, true)), step);
                let port = fresh.binding(primary_server, Some((false, true)), step);
                let (both, port) = tokio::join!(both, port);
                (both.is_some(), port.is_some())
            };
            // The mappings one after another (their order shows the port allocation), then the
            // hairpin test, while the filtering answers are awaited.
            let mapping_then_hairpin = async {
                let second = SocketAddr::new(other.ip(), primary_server.port());
                let via_ip = socket.binding(second, None, step).await.map(|a| a.mapped);
                let via_ip_port = socket.binding(other, None, step).await.map(|a| a.mapped);
                let third = SocketAddr::new(primary_server.ip(), other.port());
                let via_port = socket.binding(third, None, step).await.map(|a| a.mapped);
                let hairpin = hairpin().await;
                (via_ip, via_ip_port, via_port, hairpin)
            };
            let ((both, port), (via_ip, via_ip_port, via_port, hairpin)) =
                tokio::join!(filtering, mapping_then_hairpin);
            results.answered_from_other_ip_port = Some(both);
            results.answered_from_other_port = Some(port);
            results.via_other_ip = via_ip;
            results.via_other_ip_port = via_ip_port;
            results.via_other_port = via_port;
            results.hairpin = hairpin;
        }
        None => {
            if let Some(second) = config.servers.get(1) {
                results.second_server = socket.binding(*second, None, step).await.map(|a| a.mapped);
            }
            results.hairpin = hairpin().await;
        }
    }
    Ok(NatReport {
        profile: classify(&results),
        elapsed: started.elapsed(),
    })
}
