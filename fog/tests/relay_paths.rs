//! Pairs of NATs with no direct path connect through the relay of `fog server`, and pairs with
//! one still end on it: the test bed, `fog server --relay`, `fog serve` and `fog connect --json`.

mod lab;

use std::time::Duration;

use fog_natlab::process::{output_within, ChildGuard};
use fog_natlab::{Host, Lab, Link, NatBehaviour};
use lab::*;

/// Connects from behind `a` to `fog serve` behind `b`; the JSON report.
fn run_pair(lab: &mut Lab, a: NatBehaviour, b: NatBehaviour, access: Link) -> serde_json::Value {
    run_pair_with(lab, a, b, access, &[])
}

/// [`run_pair`] with `extra` arguments for both `fog serve` and `fog connect`.
fn run_pair_with(
    lab: &mut Lab,
    a: NatBehaviour,
    b: NatBehaviour,
    access: Link,
    extra: &[&str],
) -> serde_json::Value {
    let ra = lab.router(a, Link::default()).unwrap();
    let dialer = lab.host(&ra, access).unwrap();
    let rb = lab.router(b, Link::default()).unwrap();
    let served = lab.host(&rb, access).unwrap();
    let name = format!("relay-{a}-{b}-{}", access.delay.as_millis());
    let mut serve_args = vec!["serve", "--signal", SIGNAL, "--name", &name];
    serve_args.extend(extra);
    let _serve = start(&served, &serve_args, "peer id:");
    let out = output_within(
        dialer
            .command(FOG)
            .args([
                "connect",
                &name,
                "--signal",
                SIGNAL,
                "--json",
                "--timeout",
                "20",
            ])
            .args(extra),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"));
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
    // Two of them meet allocation to allocation on the relay.
    let json = run_pair(
        &mut lab,
        NatBehaviour::UdpBlocked,
        NatBehaviour::UdpBlocked,
        Link::default(),
    );
    assert_eq!(json["path"], "relay", "{json}");
    assert_eq!(json["strategy"], "relay-only", "{json}");
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

/// Starts coturn as a TURN relay with one long-term user on `ip:3481`.
fn start_coturn_relay(server: &Host, ip: &str) -> ChildGuard {
    let child = server
        .command("turnserver")
        .args([
            "-n",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--log-file=stdout",
            "--lt-cred-mech",
            "--user=fog:fog-test-password",
            "--realm=fog.test",
            "--listening-port=3481",
        ])
        .args(["--listening-ip", ip, "--relay-ip", ip])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("coturn's turnserver is installed (scripts/test.sh installs it)");
    ChildGuard(child)
}

#[test]
fn coturn_with_long_term_credentials_serves_as_the_relay() {
    // The fog server runs no relay here: coturn is the only one.
    let (mut lab, server, _fog_server) = lab_with_server_host(false);
    let _coturn = start_coturn_relay(&server, "203.0.113.10");
    let turn = [
        "--turn",
        "turn:203.0.113.10:3481?transport=udp",
        "--turn-username",
        "fog",
        "--turn-password",
        "fog-test-password",
    ];
    // coturn takes a moment to listen: the first connect is retried within a bound.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let json = loop {
        let json = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_pair_with(
                &mut lab,
                NatBehaviour::SymmetricRandom,
                NatBehaviour::SymmetricRandom,
                Link::default(),
                &turn,
            )
        }));
        match json {
            Ok(json) => break json,
            Err(e) if std::time::Instant::now() > deadline => std::panic::resume_unwind(e),
            Err(_) => {}
        }
    };
    assert_eq!(json["path"], "relay", "{json}");
    let relay: std::net::SocketAddr = json["relay"].as_str().unwrap().parse().unwrap();
    assert_eq!(relay.ip().to_string(), "203.0.113.10", "{json}");
}
