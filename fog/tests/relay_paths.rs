//! Pairs of NATs with no direct path connect through the relay of `fog server`, and pairs with
//! one still end on it: the test bed, `fog server --relay`, `fog serve` and `fog connect --json`.

mod lab;

use std::time::Duration;

use fog_natlab::{Lab, Link, NatBehaviour};
use lab::*;

/// Connects from behind `a` to `fog serve` behind `b`; the JSON report.
fn run_pair(lab: &mut Lab, a: NatBehaviour, b: NatBehaviour, access: Link) -> serde_json::Value {
    let ra = lab.router(a, Link::default()).unwrap();
    let dialer = lab.host(&ra, access).unwrap();
    let rb = lab.router(b, Link::default()).unwrap();
    let served = lab.host(&rb, access).unwrap();
    let name = format!("relay-{a}-{b}-{}", access.delay.as_millis());
    let _serve = start(
        &served,
        &["serve", "--signal", SIGNAL, "--name", &name],
        "peer id:",
    );
    let out = connect(&dialer, &name);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|_| {
        panic!(
            "{a} x {b}: no JSON: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "{a} x {b}: {json}");
    assert_eq!(json["reply"], "hello", "{a} x {b}: {json}");
    json
}

#[test]
fn pairs_without_a_direct_path_connect_and_echo_through_the_relay() {
    let (mut lab, _server) = lab_with_fog_server(true);
    for access in [
        Link::default(),
        Link {
            delay: Duration::from_millis(25),
            loss_percent: 2,
        },
    ] {
        for (a, b) in [
            (NatBehaviour::SymmetricRandom, NatBehaviour::SymmetricRandom),
            (
                NatBehaviour::SymmetricSequential,
                NatBehaviour::SymmetricRandom,
            ),
            (
                NatBehaviour::SymmetricRandom,
                NatBehaviour::SymmetricSequential,
            ),
        ] {
            let json = run_pair(&mut lab, a, b, access);
            assert_eq!(json["path"], "relay", "{a} x {b}: {json}");
            assert_eq!(json["strategy"], "relay-only", "{a} x {b}: {json}");
            let relay: std::net::SocketAddr = json["relay"]
                .as_str()
                .and_then(|r| r.parse().ok())
                .unwrap_or_else(|| panic!("{a} x {b}: no relay address: {json}"));
            assert_eq!(relay.ip().to_string(), "203.0.113.9", "{json}");
        }
    }
}

#[test]
fn a_node_whose_udp_is_blocked_reaches_every_other_behaviour_over_tcp_to_the_relay() {
    let (mut lab, _server) = lab_with_fog_server(true);
    for other in [
        NatBehaviour::Open,
        NatBehaviour::FullCone,
        NatBehaviour::RestrictedCone,
        NatBehaviour::PortRestrictedCone,
        NatBehaviour::SymmetricSequential,
        NatBehaviour::SymmetricRandom,
    ] {
        for (a, b) in [
            (NatBehaviour::UdpBlocked, other),
            (other, NatBehaviour::UdpBlocked),
        ] {
            let json = run_pair(&mut lab, a, b, Link::default());
            assert_eq!(json["path"], "relay", "{a} x {b}: {json}");
            assert_eq!(json["strategy"], "relay-only", "{a} x {b}: {json}");
        }
    }
}

#[test]
fn pairs_with_a_direct_path_end_on_it_with_a_relay_at_hand() {
    let (mut lab, _server) = lab_with_fog_server(true);
    for (a, b) in [
        (
            NatBehaviour::PortRestrictedCone,
            NatBehaviour::PortRestrictedCone,
        ),
        (
            NatBehaviour::SymmetricSequential,
            NatBehaviour::PortRestrictedCone,
        ),
    ] {
        let json = run_pair(&mut lab, a, b, Link::default());
        assert_eq!(json["path"], "direct", "{a} x {b}: {json}");
        assert!(json["relay"].is_null(), "{json}");
    }
}
