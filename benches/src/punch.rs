//! `fog-bench-punch`: time from `connect` to connected for every pair of NAT behaviours of the
//! test bed, at 0 ms and 25 ms one-way delay on every access link, first without a relay and
//! then as deployed, with one. Runs `fog serve` (the `fog` binary next to this one) in the
//! server's namespace and a dialing node in the dialer's, through `fog server` with an RFC 5780
//! STUN server (and its TURN relay in the second table). Needs root, `ip` and `nft`.
//!
//! `--quick` does 2 connects per cell instead of 20; `--relay-only` runs only the second table;
//! `--no-grace` dials without holding a relay pair that answers first (to measure what the
//! grace brings). The bench exits non-zero when a pair that has a direct path did not take it
//! (without a relay: every time at connect; with one: every time within 5 s of connecting,
//! and, on the full run, at connect in at least 19 of 20), or when a connect with a relay
//! failed.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use common::{fog_binary, start};
use fog_natlab::{Host, Link, NatBehaviour};

const SIGNAL: &str = "ws://203.0.113.9:7600/ws";
const RELAY: &str = "203.0.113.9:3480";
/// How long a connection that starts on the relay may take to go direct.
const DIRECT_WITHIN: Duration = Duration::from_secs(5);

/// What the connects of one cell came to.
#[derive(Default)]
struct Cell {
    /// Connect times (ms) of the connects that succeeded.
    times: Vec<f64>,
    direct_at_connect: usize,
    direct_within: usize,
    relayed: usize,
    failed: usize,
}

/// `runs` connects from a node running in `host`'s namespace (its NAT verdict already cached,
/// as in a long-running node); a connection that starts on the relay gets up to `wait_direct`
/// to move to a direct pair.
fn connects(
    host: &Host,
    peer: String,
    runs: usize,
    grace: bool,
    wait_direct: Duration,
) -> Result<Cell> {
    host.run(move || async move {
        let mut punch = fog::layers::PunchConfig::default();
        if !grace {
            punch.relay_grace = Duration::ZERO;
        }
        let node = fog::Node::builder()
            .signal(SIGNAL)
            .punch(punch)
            .bind()
            .await
            .map_err(|e| anyhow!("dialer node: {e}"))?;
        node.nat_profile().await;
        let mut cell = Cell::default();
        for _ in 0..runs {
            let started = std::time::Instant::now();
            let Ok(conn) = node.connect(&peer).await else {
                cell.failed += 1;
                continue;
            };
            cell.times.push(started.elapsed().as_secs_f64() * 1e3);
            if conn.path_kind() == fog::PathKind::Direct {
                cell.direct_at_connect += 1;
                cell.direct_within += 1;
            } else if conn.wait_direct(wait_direct).await {
                cell.direct_within += 1;
            } else {
                cell.relayed += 1;
            }
            conn.close("bench");
        }
        node.shutdown().await;
        Ok(cell)
    })
    .map_err(|e| anyhow!("{e}"))?
}

fn median_p95(ms: Vec<f64>) -> String {
    match common::median_p95(ms) {
        Some((median, p95)) => format!("{median:.0} / {p95:.0}"),
        None => "-".into(),
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

/// Whether two peers behind `a` and `b` can have a direct path at all.
fn direct_possible(a: NatBehaviour, b: NatBehaviour) -> bool {
    use NatBehaviour::*;
    !matches!(
        (a, b),
        (SymmetricRandom, SymmetricRandom)
            | (SymmetricRandom, SymmetricSequential)
            | (SymmetricSequential, SymmetricRandom)
    )
}

const DELAYS: [u64; 2] = [0, 25];

/// Runs every pair at both delays, with or without a relay; the cells, row by row.
fn matrix(
    fog: &Path,
    runs: usize,
    relay: bool,
    grace: bool,
) -> Result<Vec<(NatBehaviour, NatBehaviour, Vec<Cell>)>> {
    let extra: &[&str] = if relay {
        &["--relay", RELAY, "--relay-max-rate", "0"]
    } else {
        &[]
    };
    let mut rows = Vec::new();
    let mut n = 0;
    for a in BEHAVIOURS {
        // A lab per row: the lab's public addresses would not last for all 36 pairs.
        let (mut lab, _server) = common::lab_with_fog_server(fog, extra)?;
        for b in BEHAVIOURS {
            let mut cells = Vec::new();
            for delay in DELAYS {
                let access = Link::with_delay(Duration::from_millis(delay));
                let ra = lab.router(a, Link::default())?;
                let dialer = lab.host(&ra, access)?;
                let rb = lab.router(b, Link::default())?;
                let served = lab.host(&rb, access)?;
                n += 1;
                let name = format!("bench{n}");
                let _serve = start(
                    &served,
                    fog,
                    &["serve", "--signal", SIGNAL, "--name", &name],
                    "peer id:",
                )?;
                // Where no direct path can exist there is nothing to wait for.
                let wait = if direct_possible(a, b) {
                    DIRECT_WITHIN
                } else {
                    Duration::ZERO
                };
                cells.push(connects(&dialer, name, runs, grace, wait)?);
            }
            rows.push((a, b, cells));
        }
    }
    Ok(rows)
}

fn main() -> Result<()> {
    let flag = |name: &str| std::env::args().any(|a| a == name);
    let runs = if flag("--quick") { 2 } else { 20 };
    let grace = !flag("--no-grace");
    let fog = fog_binary()?;
    let mut short = Vec::new();

    if !flag("--relay-only") {
        direct_table(&fog, runs, grace, &mut short)?;
    }
    relay_table(&fog, runs, grace, &mut short)?;
    if !short.is_empty() {
        bail!("pairs short of their goal:\n{}", short.join("\n"));
    }
    Ok(())
}

/// The first table: no relay.
fn direct_table(fog: &Path, runs: usize, grace: bool, short: &mut Vec<String>) -> Result<()> {
    println!("Without a relay: connect time of the connects that went direct (ms), out of {runs} per cell.");
    println!();
    println!(
        "| dialer NAT | server NAT | 0 ms: median / p95 | 25 ms one-way: median / p95 | direct |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for (a, b, cells) in matrix(fog, runs, false, grace)? {
        let direct: usize = cells.iter().map(|c| c.direct_at_connect).sum();
        let times = |c: &Cell| {
            if c.direct_at_connect > 0 {
                median_p95(c.times.clone())
            } else {
                "no direct path".into()
            }
        };
        println!(
            "| {a} | {b} | {} | {} | {direct}/{} |",
            times(&cells[0]),
            times(&cells[1]),
            2 * runs
        );
        if direct_possible(a, b) && direct < 2 * runs {
            short.push(format!(
                "{a} x {b} without a relay: {direct}/{} direct",
                2 * runs
            ));
        }
    }

    Ok(())
}

/// The second table: a relay on `fog server`, as deployed.
fn relay_table(fog: &Path, runs: usize, grace: bool, short: &mut Vec<String>) -> Result<()> {
    println!();
    println!("With a relay (as deployed), out of {runs} per cell: direct at connect, direct within {} s of connecting, still relayed after that, failed; connect time of all that connected (ms).", DIRECT_WITHIN.as_secs());
    println!();
    println!("| dialer NAT | server NAT | 0 ms: at connect / within 5 s / relayed / failed | 0 ms: median / p95 | 25 ms: at connect / within 5 s / relayed / failed | 25 ms: median / p95 |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (a, b, cells) in matrix(fog, runs, true, grace)? {
        let counts = |c: &Cell| {
            format!(
                "{} / {} / {} / {}",
                c.direct_at_connect, c.direct_within, c.relayed, c.failed
            )
        };
        println!(
            "| {a} | {b} | {} | {} | {} | {} |",
            counts(&cells[0]),
            median_p95(cells[0].times.clone()),
            counts(&cells[1]),
            median_p95(cells[1].times.clone()),
        );
        for (delay, cell) in DELAYS.iter().zip(&cells) {
            if cell.failed > 0 {
                short.push(format!(
                    "{a} x {b} at {delay} ms with a relay: {} failed",
                    cell.failed
                ));
            }
            if direct_possible(a, b) && cell.direct_within < runs {
                short.push(format!(
                    "{a} x {b} at {delay} ms with a relay: {}/{runs} direct within 5 s",
                    cell.direct_within
                ));
            }
            // And direct at connect in at least 19 of 20: a share, so only judged on the full
            // run (two connects of `--quick` cannot tell 95 % from 50 %).
            if direct_possible(a, b) && runs >= 20 && cell.direct_at_connect * 20 < runs * 19 {
                short.push(format!(
                    "{a} x {b} at {delay} ms with a relay: {}/{runs} direct at connect",
                    cell.direct_at_connect
                ));
            }
        }
    }
    Ok(())
}
