//! Two `fog` nodes behind every pair of NAT behaviours of the test bed: `fog serve` behind one
//! router, `fog connect --json` behind the other, through a real `fog server` with STUN.

mod lab;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use fog_natlab::{Host, Link, NatBehaviour};
use lab::*;

/// What must happen between a dialer behind `a` and a server behind `b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// A direct path to b's public address.
    Direct,
    /// "no path" at once: no direct path can exist, and there is no relay yet.
    NoDirectPath,
}

fn expected(a: NatBehaviour, b: NatBehaviour) -> Outcome {
    use NatBehaviour::*;
    match (a, b) {
        (SymmetricRandom, SymmetricRandom)
        | (SymmetricRandom, SymmetricSequential)
        | (SymmetricSequential, SymmetricRandom) => Outcome::NoDirectPath,
        _ => Outcome::Direct,
    }
}

const BEHAVIOURS: [NatBehaviour; 6] = [
    NatBehaviour::Open,
    NatBehaviour::FullCone,
    NatBehaviour::RestrictedCone,
    NatBehaviour::PortRestrictedCone,
    NatBehaviour::SymmetricSequential,
    NatBehaviour::SymmetricRandom,
];

struct Pair {
    a: NatBehaviour,
    b: NatBehaviour,
    dialer: Host,
    server: Host,
    public_b: Ipv4Addr,
    name: String,
}

/// How long a connection that starts on the relay may take to go direct, from connected.
const DIRECT_WITHIN: &str = "5";

/// How many fresh `fog connect` runs each pair gets (`FOG_MATRIX_RUNS`, 5 unless set).
fn runs() -> usize {
    std::env::var("FOG_MATRIX_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(5)
}

/// Every run of one pair against one `fog serve`, as a deployed node takes connect after
/// connect; the first failure ends the pair.
fn run_pair(pair: &Pair, relay: bool) -> Result<String, String> {
    let _serve = start(
        &pair.server,
        &["serve", "--signal", SIGNAL, "--name", &pair.name],
        "peer id:",
    );
    let mut lines = Vec::new();
    for run in 1..=runs() {
        let line = connect_once(pair, relay).map_err(|e| format!("run {run}: {e}"))?;
        lines.push(line);
    }
    Ok(lines.join("\n    "))
}

fn connect_once(pair: &Pair, relay: bool) -> Result<String, String> {
    let started = std::time::Instant::now();
    let out = if relay {
        connect_with(&pair.dialer, &pair.name, &["--wait-direct", DIRECT_WITHIN])
    } else {
        connect(&pair.dialer, &pair.name)
    };
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json: serde_json::Value = serde_json::from_str(&stdout)
        .map_err(|_| format!("no JSON: {stdout} {}", String::from_utf8_lossy(&out.stderr)))?;
    match (expected(pair.a, pair.b), relay) {
        (Outcome::Direct, _) => {
            if !out.status.success() {
                return Err(format!("failed: {json}"));
            }
            let remote: std::net::SocketAddr = json["remote"]
                .as_str()
                .unwrap_or("")
                .parse()
                .map_err(|_| format!("{json}"))?;
            if json["path"] != "direct" || remote.ip() != IpAddr::V4(pair.public_b) {
                return Err(format!("not direct to {}: {json}", pair.public_b));
            }
            if !relay && json["path_at_connect"] != "direct" {
                return Err(format!("not direct at connect without a relay: {json}"));
            }
            Ok(format!(
                "{} via {} ({}) in {} ms, {} at connect, direct after {} ms",
                json["strategy"],
                json["candidate"],
                json["probes"],
                json["connect_ms"],
                json["path_at_connect"],
                json["direct_after_ms"]
            ))
        }
        (Outcome::NoDirectPath, false) => {
            if out.status.success() || json["error"] != "no path" || took > Duration::from_secs(5) {
                return Err(format!(
                    "expected a fast no-path error, got {json} after {took:?}"
                ));
            }
            Ok(format!("no path in {} ms", took.as_millis()))
        }
        (Outcome::NoDirectPath, true) => {
            if !out.status.success() || json["path"] != "relay" {
                return Err(format!("expected a relayed connection, got {json}"));
            }
            Ok(format!(
                "relayed through {} in {} ms",
                json["relay"], json["connect_ms"]
            ))
        }
    }
}

#[test]
fn every_pair_of_nats_connects_directly_where_a_direct_path_can_exist() {
    run_matrix(Link::default(), false);
}

#[test]
fn the_same_with_25_ms_delay_and_2_percent_loss_on_every_access_link() {
    run_matrix(
        Link {
            delay: Duration::from_millis(25),
            loss_percent: 2,
        },
        false,
    );
}

/// As deployed: a relay always configured. Every pair connects, and every pair that has a
/// direct path is on it within a few seconds of connecting.
#[test]
fn with_a_relay_every_pair_connects_and_goes_direct_where_it_can() {
    run_matrix(Link::default(), true);
}

#[test]
fn with_a_relay_the_same_with_25_ms_delay_and_2_percent_loss() {
    run_matrix(
        Link {
            delay: Duration::from_millis(25),
            loss_percent: 2,
        },
        true,
    );
}

fn run_matrix(access: Link, relay: bool) {
    let (mut lab, _fog_server) = lab_with_fog_server(relay);
    let mut pairs = Vec::new();
    // FOG_MATRIX_PAIRS="full-cone x open,open x open" runs just those pairs (for debugging).
    let only: Option<Vec<String>> = std::env::var("FOG_MATRIX_PAIRS")
        .ok()
        .map(|v| v.split(',').map(|p| p.trim().to_string()).collect());
    for a in BEHAVIOURS {
        for b in BEHAVIOURS {
            if only
                .as_ref()
                .is_some_and(|only| !only.contains(&format!("{a} x {b}")))
            {
                continue;
            }
            let ra = lab.router(a, Link::default()).unwrap();
            let dialer = lab.host(&ra, access).unwrap();
            let rb = lab.router(b, Link::default()).unwrap();
            let served = lab.host(&rb, access).unwrap();
            let public_b = if b == NatBehaviour::Open {
                served.addr()
            } else {
                rb.wan_addr()
            };
            pairs.push(Pair {
                a,
                b,
                dialer,
                server: served,
                public_b,
                name: format!("p{}-{}", access.delay.as_millis(), pairs.len()),
            });
        }
    }
    assert!(
        !pairs.is_empty(),
        "FOG_MATRIX_PAIRS left no pair to run: {only:?}"
    );
    // A few pairs at a time: each is two processes in their own namespaces.
    let results: Vec<(String, Result<String, String>)> = std::thread::scope(|scope| {
        pairs
            .chunks(6)
            .flat_map(|chunk| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|pair| {
                        scope.spawn(move || {
                            (format!("{} x {}", pair.a, pair.b), run_pair(pair, relay))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    });
    let mut failures = Vec::new();
    for (pair, result) in &results {
        match result {
            Ok(how) => println!("{pair}: {how}"),
            Err(why) => {
                println!("{pair}: FAILED {why}");
                failures.push(pair.clone());
            }
        }
    }
    assert!(failures.is_empty(), "pairs that failed: {failures:?}");
}

#[test]
fn two_hosts_behind_one_nat_connect_over_their_lan() {
    behind_one_nat(false);
}

#[test]
fn with_a_relay_two_hosts_behind_one_nat_still_connect_over_their_lan() {
    behind_one_nat(true);
}

fn behind_one_nat(relay: bool) {
    let (mut lab, _fog_server) = lab_with_fog_server(relay);
    for nat in [
        NatBehaviour::PortRestrictedCone,
        NatBehaviour::SymmetricRandom,
    ] {
        let router = lab.router(nat, Link::default()).unwrap();
        let a = lab.host(&router, Link::default()).unwrap();
        let b = lab.host(&router, Link::default()).unwrap();
        let name = format!("lan-{nat}");
        let _serve = start(
            &b,
            &["serve", "--signal", SIGNAL, "--name", &name],
            "peer id:",
        );
        let out = connect_with(&a, &name, &["--wait-direct", DIRECT_WITHIN]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(out.status.success(), "{nat}: {json}");
        let remote: std::net::SocketAddr = json["remote"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            remote.ip(),
            IpAddr::V4(b.addr()),
            "{nat}: not over the LAN: {json}"
        );
        assert_eq!(json["path"], "direct", "{json}");
        assert!(relay || json["path_at_connect"] == "direct", "{json}");
        if json["path_at_connect"] == "direct" {
            assert_eq!(json["candidate"], "host", "{json}");
        }
        println!(
            "{nat}, relay {relay}: {} at connect, direct after {} ms",
            json["path_at_connect"], json["direct_after_ms"]
        );
    }
}
