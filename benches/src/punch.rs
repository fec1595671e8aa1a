//! `fog-bench-punch`: time from `connect` to connected for every pair of NAT behaviours of the
//! test bed, at 0 ms and 25 ms one-way delay on every access link. Runs `fog serve` and
//! `fog connect --json` (the `fog` binary next to this one) in the hosts' namespaces, through
//! `fog server` with an RFC 5780 STUN server. Needs root, `ip` and `nft`.
//!
//! `--quick` does 2 connects per cell instead of 20.

mod common;

use std::time::Duration;

use anyhow::{anyhow, Result};
use common::{fog_binary, start};
use fog_natlab::{Host, Link, NatBehaviour};

const SIGNAL: &str = "ws://203.0.113.9:7600/ws";

/// `runs` connects from a node running in `host`'s namespace (its NAT verdict already cached,
/// as in a long-running node): the connect times of those that got a direct path.
fn connects(host: &Host, peer: String, runs: usize) -> Result<Vec<f64>> {
    host.run(move || async move {
        let node = fog::Node::builder()
            .signal(SIGNAL)
            .bind()
            .await
            .map_err(|e| anyhow!("dialer node: {e}"))?;
        node.nat_profile().await;
        let mut times = Vec::new();
        for _ in 0..runs {
            let started = std::time::Instant::now();
            if let Ok(conn) = node.connect(&peer).await {
                if conn.path_kind() == fog::PathKind::Direct {
                    times.push(started.elapsed().as_secs_f64() * 1e3);
                }
                conn.close("bench");
            }
        }
        node.shutdown().await;
        Ok(times)
    })
    .map_err(|e| anyhow!("{e}"))?
}

fn median_p95(ms: Vec<f64>) -> String {
    match common::median_p95(ms) {
        Some((median, p95)) => format!("{median:.0} / {p95:.0}"),
        None => "no direct path".into(),
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

fn main() -> Result<()> {
    let runs = if std::env::args().any(|a| a == "--quick") {
        2
    } else {
        20
    };
    let fog = fog_binary()?;
    println!("| dialer NAT | server NAT | 0 ms: median / p95 (ms) | 25 ms one-way: median / p95 (ms) | direct |");
    println!("| --- | --- | --- | --- | --- |");
    let mut n = 0;
    for a in BEHAVIOURS {
        // A lab per row: the lab's public addresses would not last for all 36 pairs.
        let (mut lab, _server) = common::lab_with_fog_server(&fog, &[])?;
        for b in BEHAVIOURS {
            let mut cells = Vec::new();
            let mut ok = 0;
            for delay in [0u64, 25] {
                let access = Link::with_delay(Duration::from_millis(delay));
                let ra = lab.router(a, Link::default())?;
                let dialer = lab.host(&ra, access)?;
                let rb = lab.router(b, Link::default())?;
                let served = lab.host(&rb, access)?;
                n += 1;
                let name = format!("bench{n}");
                let _serve = start(
                    &served,
                    &fog,
                    &["serve", "--signal", SIGNAL, "--name", &name],
                    "peer id:",
                )?;
                let times = connects(&dialer, name, runs)?;
                ok += times.len();
                cells.push(median_p95(times));
            }
            println!(
                "| {a} | {b} | {} | {} | {ok}/{} |",
                cells[0],
                cells[1],
                2 * runs
            );
        }
    }
    Ok(())
}
