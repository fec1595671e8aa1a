//! `fog-bench-nat`: NAT probe time per behaviour of the test bed, with 0 ms and 25 ms one-way
//! delay on the host's access link. Runs `fog nat` (the binary next to this one) in the host's
//! namespace against `fog server` with an RFC 5780 STUN server. Needs root, `ip` and `nft`.
//!
//! `--quick` does 2 runs per cell instead of 10.

mod common;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use common::fog_binary;
use fog_natlab::process::spawn_until_line;
use fog_natlab::{Host, Lab, Link, NatBehaviour};

fn probe(host: &Host, fog: &PathBuf) -> Result<serde_json::Value> {
    let out = host
        .command(fog)
        .args(["nat", "--stun", "203.0.113.9:3478", "--json"])
        .output()
        .context("running fog nat")?;
    if !out.status.success() {
        bail!("fog nat failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn median_p95(ms: Vec<f64>) -> (f64, f64) {
    common::median_p95(ms).unwrap_or((f64::NAN, f64::NAN))
}

fn main() -> Result<()> {
    let runs = if std::env::args().any(|a| a == "--quick") {
        2
    } else {
        10
    };
    let fog = fog_binary()?;
    let mut lab = Lab::new().map_err(|e| anyhow!("the NAT test bed: {e}"))?;
    let server = lab.server(&[
        Ipv4Addr::new(203, 0, 113, 9),
        Ipv4Addr::new(203, 0, 113, 10),
    ])?;
    let (_server, _) = spawn_until_line(
        server.command(&fog).args([
            "server",
            "--signal",
            "203.0.113.9:7600",
            "--stun",
            "203.0.113.9:3478",
            "--stun-alt",
            "203.0.113.10:3479",
        ]),
        "fog signal server on",
        Duration::from_secs(10),
    )
    .map_err(|e| anyhow!(e))?;

    println!("| behaviour | verdict | 0 ms: median / p95 | 25 ms one-way: median / p95 |");
    println!("| --- | --- | --- | --- |");
    for nat in NatBehaviour::ALL {
        let mut cells = Vec::new();
        let mut verdicts = Vec::new();
        for delay in [0u64, 25] {
            // A router per host: full and restricted cones forward inbound UDP to one host.
            let router = lab.router(nat, Link::default())?;
            let host = lab.host(&router, Link::with_delay(Duration::from_millis(delay)))?;
            let mut times = Vec::new();
            for _ in 0..runs {
                let json = probe(&host, &fog)?;
                times.push(json["elapsed_ms"].as_f64().unwrap_or(f64::NAN));
                let verdict = json["nat_type"].as_str().unwrap_or("unknown").to_string();
                if !verdicts.contains(&verdict) {
                    verdicts.push(verdict);
                }
            }
            let (median, p95) = median_p95(times);
            cells.push(format!("{median:.0} ms / {p95:.0} ms"));
        }
        println!(
            "| {nat} | {} | {} | {} |",
            verdicts.join(", "),
            cells[0],
            cells[1]
        );
    }
    Ok(())
}
