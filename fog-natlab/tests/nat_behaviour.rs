//! Each NAT behaviour, measured with plain UDP sockets: mapping (endpoint-independent or not,
//! port preservation, sequential stepping) and filtering (another port, another address, an
//! unsolicited stranger), plus TCP through every router.

mod common;

use std::net::SocketAddrV4;
use std::time::Instant;

use common::*;
use fog_natlab::{Lab, Link, NatBehaviour};

/// What a host behind the router observed.
#[derive(Debug)]
struct Observed {
    local_port: u16,
    /// How many tries the very first request needed (the first packet may be lost while ARP
    /// resolves).
    first_tries: Option<usize>,
    /// Mapped addresses seen by A1:P1, A1:P2, A2:P1, A2:P2, in that order, from one socket.
    mapped: Vec<Option<SocketAddrV4>>,
    /// Whether an answer from another port / another address / a stranger got through (fresh
    /// socket for each).
    other_port: Result<bool, String>,
    other_addr: Result<bool, String>,
    stranger: Result<bool, String>,
    tcp_seen: Result<String, String>,
}

fn observe(nat: NatBehaviour) -> (Observed, std::net::Ipv4Addr, std::net::Ipv4Addr) {
    let started = Instant::now();
    let mut lab = Lab::new().expect("build a lab");
    let server = lab.server(&[A1, A2, A3]).expect("add the server");
    let router = lab.router(nat, Link::default()).expect("add the router");
    let host = lab.host(&router, Link::default()).expect("add the host");
    let built = started.elapsed();
    let responder = Responder::start(&server);
    let udp_blocked = nat == NatBehaviour::UdpBlocked;
    let observed = host
        .run(move || async move {
            let probe = Probe::new().await;
            let mut mapped = Vec::new();
            let mut first_tries = None;
            // Through a UDP-blocking router nothing comes back: do not wait for every pair.
            let tries = if udp_blocked { 4 } else { TRIES };
            for dst in [(A1, P1), (A1, P2), (A2, P1), (A2, P2)] {
                let dst = SocketAddrV4::new(dst.0, dst.1);
                let answer = probe.ask(dst, ECHO, tries).await;
                if mapped.is_empty() {
                    first_tries = answer.map(|a| a.tries);
                }
                mapped.push(answer.map(|a| a.reply.mapped));
                if udp_blocked {
                    break;
                }
            }
            let (other_port, other_addr, stranger) = if udp_blocked {
                let skipped = || Err("UDP is blocked".to_string());
                (skipped(), skipped(), skipped())
            } else {
                let dst = SocketAddrV4::new(A1, P1);
                (
                    Probe::new()
                        .await
                        .filtered_through(dst, FROM_OTHER_PORT)
                        .await,
                    Probe::new()
                        .await
                        .filtered_through(dst, FROM_OTHER_ADDR)
                        .await,
                    Probe::new()
                        .await
                        .filtered_through(dst, FROM_STRANGER)
                        .await,
                )
            };
            let tcp_seen = tcp_seen_as(SocketAddrV4::new(A1, P1)).await;
            Observed {
                local_port: probe.local_port(),
                first_tries,
                mapped,
                other_port,
                other_addr,
                stranger,
                tcp_seen,
            }
        })
        .expect("run the probes in the host namespace");
    drop(responder);
    println!(
        "{nat}: lab built in {built:?}, whole check {:?}, first request answered on try {:?}: \
         {observed:?}",
        started.elapsed(),
        observed.first_tries
    );
    (observed, router.wan_addr(), host.addr())
}

fn all_mapped(o: &Observed) -> Vec<SocketAddrV4> {
    o.mapped
        .iter()
        .enumerate()
        .map(|(i, m)| m.unwrap_or_else(|| panic!("no answer to mapping request {i}: {o:?}")))
        .collect()
}

fn assert_filtering(o: &Observed, other_port: bool, other_addr: bool, stranger: bool) {
    let got = |r: &Result<bool, String>, what: &str| -> bool {
        r.clone()
            .unwrap_or_else(|e| panic!("filtering test {what}: {e}"))
    };
    assert_eq!(
        (
            got(&o.other_port, "other port"),
            got(&o.other_addr, "other address"),
            got(&o.stranger, "stranger")
        ),
        (other_port, other_addr, stranger),
        "filtering (other port, other address, stranger) differs: {o:?}"
    );
}

/// Endpoint-independent mapping to `ip`, preserving the local port.
fn assert_eim_preserving(o: &Observed, ip: std::net::Ipv4Addr) {
    let expected = SocketAddrV4::new(ip, o.local_port);
    for (i, m) in all_mapped(o).into_iter().enumerate() {
        assert_eq!(m, expected, "mapping {i} is not {expected}: {o:?}");
    }
}

fn assert_tcp(o: &Observed, ip: std::net::Ipv4Addr) {
    let seen = o
        .tcp_seen
        .clone()
        .unwrap_or_else(|e| panic!("TCP failed: {e}"));
    assert!(
        seen.starts_with(&format!("{ip}:")),
        "TCP peer seen as {seen}, expected {ip}"
    );
}

#[test]
fn open_hosts_are_seen_as_themselves() {
    let (o, _wan, host) = observe(NatBehaviour::Open);
    assert!(
        !host.is_private(),
        "a host behind an open router has a public address"
    );
    assert_eim_preserving(&o, host);
    assert_filtering(&o, true, true, true);
    assert_tcp(&o, host);
}

#[test]
fn full_cone_is_eim_and_eif() {
    let (o, wan, _) = observe(NatBehaviour::FullCone);
    assert_eim_preserving(&o, wan);
    assert_filtering(&o, true, true, true);
    assert_tcp(&o, wan);
}

#[test]
fn restricted_cone_is_eim_and_address_dependent_filtering() {
    let (o, wan, _) = observe(NatBehaviour::RestrictedCone);
    assert_eim_preserving(&o, wan);
    assert_filtering(&o, true, false, false);
    assert_tcp(&o, wan);
}

#[test]
fn port_restricted_cone_is_eim_and_address_and_port_dependent_filtering() {
    let (o, wan, _) = observe(NatBehaviour::PortRestrictedCone);
    assert_eim_preserving(&o, wan);
    assert_filtering(&o, false, false, false);
    assert_tcp(&o, wan);
}

#[test]
fn symmetric_sequential_takes_the_next_port_per_flow() {
    let (o, wan, _) = observe(NatBehaviour::SymmetricSequential);
    let mapped = all_mapped(&o);
    for m in &mapped {
        assert_eq!(*m.ip(), wan, "{o:?}");
    }
    let ports: Vec<u16> = mapped.iter().map(|m| m.port()).collect();
    assert!(
        (20000..21000).contains(&ports[0]),
        "the first flow should take a port of 20000-20999: {ports:?}"
    );
    for pair in ports.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "each new flow should take the next port: {ports:?}"
        );
    }
    assert_filtering(&o, false, false, false);
    assert_tcp(&o, wan);
}

#[test]
fn symmetric_random_maps_each_flow_to_a_random_port() {
    let (o, wan, _) = observe(NatBehaviour::SymmetricRandom);
    let mapped = all_mapped(&o);
    for m in &mapped {
        assert_eq!(*m.ip(), wan, "{o:?}");
    }
    let mut ports: Vec<u16> = mapped.iter().map(|m| m.port()).collect();
    let sequential = ports.windows(2).all(|p| p[1] == p[0].wrapping_add(1));
    assert!(
        !sequential,
        "random ports should not be sequential: {ports:?}"
    );
    ports.sort_unstable();
    ports.dedup();
    assert!(
        ports.len() >= 3,
        "four flows should get (almost surely) four different ports: {o:?}"
    );
    assert_filtering(&o, false, false, false);
    assert_tcp(&o, wan);
}

#[test]
fn udp_blocked_passes_no_udp_but_tcp() {
    let (o, wan, _) = observe(NatBehaviour::UdpBlocked);
    assert_eq!(o.mapped, vec![None], "no UDP answer may come back: {o:?}");
    assert_tcp(&o, wan);
}

#[test]
fn names_parse_and_display() {
    let names: Vec<String> = NatBehaviour::ALL.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        names,
        [
            "open",
            "full-cone",
            "restricted-cone",
            "port-restricted-cone",
            "symmetric-sequential",
            "symmetric-random",
            "udp-blocked"
        ]
    );
    for nat in NatBehaviour::ALL {
        assert_eq!(nat.to_string().parse::<NatBehaviour>().unwrap(), nat);
    }
    assert!("symmetric".parse::<NatBehaviour>().is_err());
}
