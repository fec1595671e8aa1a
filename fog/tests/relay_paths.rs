//! Pairs of NATs with no direct path connect through the relay of `fog server`, and pairs with
//! one still end on it: the test bed, `fog server --relay`, `fog serve` and `fog connect --json`.

use std::net::Ipv4Addr;
use std::process::Output;
use std::time::Duration;

use fog_natlab::process::{output_within, spawn_until_line, ChildGuard};
use fog_natlab::{Host, Lab, Link, NatBehaviour};

const FOG: &str = env!("CARGO_BIN_EXE_fog");
const SIGNAL: &str = "ws://203.0.113.9:7600/ws";
const RELAY: &str = "203.0.113.9:3480";

fn start(host: &Host, args: &[&str], prefix: &str) -> ChildGuard {
    spawn_until_line(
        host.command(FOG).args(args),
        prefix,
        Duration::from_secs(15),
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .0
}

fn connect(host: &Host, peer: &str) -> Output {
    output_within(
        host.command(FOG).args([
            "connect",
            peer,
            "--signal",
            SIGNAL,
            "--json",
            "--timeout",
            "20",
        ]),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A lab whose server host runs `fog server` with STUN (RFC 5780) and a TURN relay.
fn lab_with_relay() -> (Lab, ChildGuard) {
    let mut lab = Lab::new().expect("the NAT test bed needs root, ip and nft");
    let server = lab
        .server(&[
            Ipv4Addr::new(203, 0, 113, 9),
            Ipv4Addr::new(203, 0, 113, 10),
        ])
        .unwrap();
    let fog_server = start(
        &server,
        &[
            "server",
            "--signal",
            "203.0.113.9:7600",
            "--stun",
            "203.0.113.9:3478",
            "--stun-alt",
            "203.0.113.10:3479",
            "--relay",
            RELAY,
        ],
        "fog signal server on",
    );
    (lab, fog_server)
}

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
    let (mut lab, _server) = lab_with_relay();
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
fn pairs_with_a_direct_path_end_on_it_with_a_relay_at_hand() {
    let (mut lab, _server) = lab_with_relay();
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
