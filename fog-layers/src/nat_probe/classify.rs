//! NAT classification from probe results: plain, synchronous code (RFC 5780 §4).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use fog_core::{Filtering, Mapping, NatProfile, NatType, PortAllocation};

/// What the probe saw. Each `Option` is `None` when that test was not run or got no answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeResults {
    /// Port of the probing socket.
    pub local_port: u16,
    /// Addresses of the host's interfaces.
    pub local_ips: Vec<IpAddr>,
    /// Test I: the mapping the primary server saw.
    pub primary: Option<SocketAddr>,
    /// The server's OTHER-ADDRESS (it supports RFC 5780).
    pub other_address: Option<SocketAddr>,
    /// Test II: the mapping seen at (other IP, primary port).
    pub via_other_ip: Option<SocketAddr>,
    /// Test III: the mapping seen at (other IP, other port).
    pub via_other_ip_port: Option<SocketAddr>,
    /// The mapping seen at (primary IP, other port); one more sample of port allocation.
    pub via_other_port: Option<SocketAddr>,
    /// The mapping a second, independent server saw (for plain RFC 5389 servers).
    pub second_server: Option<SocketAddr>,
    /// From a fresh socket: was a request answered from the other IP and port?
    pub answered_from_other_ip_port: Option<bool>,
    /// From the same fresh socket: was a request answered from the other port?
    pub answered_from_other_port: Option<bool>,
    /// Did a request to our own public address come back to us?
    pub hairpin: Option<bool>,
}

/// The verdict from `results`; what the tests could not show stays `None`.
pub fn classify(results: &ProbeResults) -> NatProfile {
    let public = results.primary.or(results.second_server);
    let Some(public) = public else {
        return NatProfile {
            nat_type: Some(NatType::UdpBlocked),
            ..NatProfile::default()
        };
    };
    let no_nat = public.port() == results.local_port && results.local_ips.contains(&public.ip());
    let filtering = filtering(results);
    let (mapping, symmetric) = if no_nat {
        (Some(Mapping::EndpointIndependent), false)
    } else {
        mapping(results)
    };
    let nat_type = if no_nat {
        match filtering {
            Some(Filtering::AddressDependent) => Some(NatType::RestrictedCone),
            Some(Filtering::AddressAndPortDependent) => Some(NatType::PortRestrictedCone),
            _ => Some(NatType::Open),
        }
    } else if symmetric {
        Some(NatType::Symmetric)
    } else if mapping == Some(Mapping::EndpointIndependent) {
        filtering.map(|f| match f {
            Filtering::EndpointIndependent => NatType::FullCone,
            Filtering::AddressDependent => NatType::RestrictedCone,
            Filtering::AddressAndPortDependent => NatType::PortRestrictedCone,
        })
    } else {
        None
    };
    let (port_allocation, port_delta) = if no_nat {
        (Some(PortAllocation::Preserving), None)
    } else {
        port_allocation(results, symmetric)
    };
    NatProfile {
        nat_type,
        mapping,
        filtering,
        port_allocation,
        port_delta,
        public: Some(public),
        hairpinning: results.hairpin,
    }
}

/// Mapping, and whether it is known not to be endpoint-independent (symmetric) even when the
/// finer class is unknown.
fn mapping(r: &ProbeResults) -> (Option<Mapping>, bool) {
    let Some(first) = r.primary else {
        return (None, false);
    };
    if let Some(second) = r.via_other_ip {
        if second == first {
            return (Some(Mapping::EndpointIndependent), false);
        }
        return match r.via_other_ip_port {
            Some(third) if third == second => (Some(Mapping::AddressDependent), true),
            Some(_) => (Some(Mapping::AddressAndPortDependent), true),
            None => (None, true),
        };
    }
    // A plain server: two servers tell apart endpoint-independent from the rest, no more.
    match r.second_server {
        Some(other) if other == first => (Some(Mapping::EndpointIndependent), false),
        Some(_) => (None, true),
        None => (None, false),
    }
}

fn filtering(r: &ProbeResults) -> Option<Filtering> {
    match (r.answered_from_other_ip_port, r.answered_from_other_port) {
        (Some(true), _) => Some(Filtering::EndpointIndependent),
        (Some(false), Some(true)) => Some(Filtering::AddressDependent),
        (Some(false), Some(false)) => Some(Filtering::AddressAndPortDependent),
        _ => None,
    }
}

/// Port allocation from the mappings, in the order they were made. A sequential NAT shows the
/// same step at least twice (another flow may slip in between two samples); anything else is
/// random.
fn port_allocation(r: &ProbeResults, symmetric: bool) -> (Option<PortAllocation>, Option<i32>) {
    let Some(first) = r.primary else {
        return (None, None);
    };
    if !symmetric {
        return if first.port() == r.local_port {
            (Some(PortAllocation::Preserving), None)
        } else {
            (None, None)
        };
    }
    let ports: Vec<i32> = [
        r.primary,
        r.via_other_ip,
        r.via_other_ip_port,
        r.via_other_port,
    ]
    .iter()
    .flatten()
    .map(|a| i32::from(a.port()))
    .collect();
    if ports.len() < 3 {
        return (None, None);
    }
    let mut counts: HashMap<i32, usize> = HashMap::new();
    for pair in ports.windows(2) {
        let delta = pair[1] - pair[0];
        if delta != 0 {
            *counts.entry(delta).or_default() += 1;
        }
    }
    match counts
        .into_iter()
        .max_by_key(|(delta, n)| (*n, -delta.abs()))
    {
        Some((delta, n)) if n >= 2 => (Some(PortAllocation::Sequential), Some(delta)),
        _ => (Some(PortAllocation::Random), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = "10.1.0.2";

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Results of a full RFC 5780 run where the four mappings are `ports` at 203.0.113.1.
    fn nat_run(ports: [u16; 4], other_ip_port: bool, other_port: bool) -> ProbeResults {
        let m = |p: u16| Some(a(&format!("203.0.113.1:{p}")));
        ProbeResults {
            local_port: 40000,
            local_ips: vec![LOCAL.parse().unwrap()],
            primary: m(ports[0]),
            other_address: Some(a("203.0.113.10:3479")),
            via_other_ip: m(ports[1]),
            via_other_ip_port: m(ports[2]),
            via_other_port: m(ports[3]),
            second_server: None,
            answered_from_other_ip_port: Some(other_ip_port),
            answered_from_other_port: Some(other_port),
            hairpin: Some(false),
        }
    }

    #[test]
    fn full_cone() {
        let p = classify(&nat_run([40000; 4], true, true));
        assert_eq!(p.nat_type, Some(NatType::FullCone));
        assert_eq!(p.mapping, Some(Mapping::EndpointIndependent));
        assert_eq!(p.filtering, Some(Filtering::EndpointIndependent));
        assert_eq!(p.port_allocation, Some(PortAllocation::Preserving));
        assert_eq!(p.public, Some(a("203.0.113.1:40000")));
    }

    #[test]
    fn restricted_and_port_restricted_cones() {
        let p = classify(&nat_run([40000; 4], false, true));
        assert_eq!(p.nat_type, Some(NatType::RestrictedCone));
        assert_eq!(p.filtering, Some(Filtering::AddressDependent));
        let p = classify(&nat_run([40000; 4], false, false));
        assert_eq!(p.nat_type, Some(NatType::PortRestrictedCone));
        assert_eq!(p.filtering, Some(Filtering::AddressAndPortDependent));
    }

    #[test]
    fn sequential_symmetric_even_with_a_flow_slipping_in() {
        // The filtering socket's flow took 8526 between the first and second samples.
        let p = classify(&nat_run([8270, 8782, 9038, 9294], false, false));
        assert_eq!(p.nat_type, Some(NatType::Symmetric));
        assert_eq!(p.mapping, Some(Mapping::AddressAndPortDependent));
        assert_eq!(p.port_allocation, Some(PortAllocation::Sequential));
        assert_eq!(p.port_delta, Some(256));
        let p = classify(&nat_run([20000, 20001, 20002, 20003], false, false));
        assert_eq!(p.port_delta, Some(1));
    }

    #[test]
    fn random_symmetric() {
        let p = classify(&nat_run([31234, 52001, 24410, 61003], false, false));
        assert_eq!(p.nat_type, Some(NatType::Symmetric));
        assert_eq!(p.port_allocation, Some(PortAllocation::Random));
        assert_eq!(p.port_delta, None);
    }

    #[test]
    fn address_dependent_mapping() {
        let p = classify(&nat_run([30000, 30001, 30001, 30002], false, false));
        assert_eq!(p.mapping, Some(Mapping::AddressDependent));
        assert_eq!(p.nat_type, Some(NatType::Symmetric));
    }

    #[test]
    fn open_host() {
        let mut r = nat_run([40000; 4], true, true);
        r.local_ips = vec!["203.0.113.1".parse().unwrap()];
        let p = classify(&r);
        assert_eq!(p.nat_type, Some(NatType::Open));
        assert_eq!(p.mapping, Some(Mapping::EndpointIndependent));
        assert_eq!(p.port_allocation, Some(PortAllocation::Preserving));
    }

    #[test]
    fn udp_blocked_is_a_verdict() {
        let p = classify(&ProbeResults {
            local_port: 40000,
            ..Default::default()
        });
        assert_eq!(p.nat_type, Some(NatType::UdpBlocked));
        assert_eq!(p.public, None);
        assert_eq!(p.mapping, None);
    }

    #[test]
    fn plain_servers_tell_only_what_they_can() {
        let base = ProbeResults {
            local_port: 40000,
            local_ips: vec![LOCAL.parse().unwrap()],
            primary: Some(a("203.0.113.1:40000")),
            ..Default::default()
        };
        // One plain server: a public address, nothing else.
        let p = classify(&base);
        assert_eq!((p.nat_type, p.mapping, p.filtering), (None, None, None));
        assert_eq!(p.public, Some(a("203.0.113.1:40000")));
        // Two plain servers that agree: endpoint-independent mapping, filtering unknown.
        let p = classify(&ProbeResults {
            second_server: Some(a("203.0.113.1:40000")),
            ..base.clone()
        });
        assert_eq!(p.mapping, Some(Mapping::EndpointIndependent));
        assert_eq!((p.nat_type, p.filtering), (None, None));
        // Two that disagree: symmetric, without guessing the finer mapping class.
        let p = classify(&ProbeResults {
            second_server: Some(a("203.0.113.1:41000")),
            ..base
        });
        assert_eq!(p.nat_type, Some(NatType::Symmetric));
        assert_eq!(p.mapping, None);
    }

    #[test]
    fn a_lost_filtering_answer_leaves_filtering_unknown() {
        let mut r = nat_run([40000; 4], true, true);
        r.answered_from_other_ip_port = None;
        let p = classify(&r);
        assert_eq!(p.filtering, None);
        assert_eq!(p.nat_type, None);
    }
}
