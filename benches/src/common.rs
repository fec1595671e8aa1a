//! What the test-bed benches share: the `fog` binary next to them, starting it in a host of the
//! test bed, and percentiles.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use fog_natlab::process::{spawn_until_line, ChildGuard};
use fog_natlab::{Host, Lab};

/// The `fog` binary built next to this bench.
pub fn fog_binary() -> Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name("fog");
    if !path.exists() {
        bail!(
            "{} is missing: build it first (cargo build -p fog)",
            path.display()
        );
    }
    Ok(path)
}

/// Starts `fog ARGS` in `host` and waits (at most 15 s) for a stdout line starting with
/// `prefix`.
pub fn start(host: &Host, fog: &Path, args: &[&str], prefix: &str) -> Result<ChildGuard> {
    spawn_until_line(
        host.command(fog).args(args),
        prefix,
        Duration::from_secs(15),
    )
    .map(|(guard, _)| guard)
    .map_err(|e| anyhow!(e))
}

/// Median and 95th percentile of `samples`; `None` when there are none.
pub fn median_p95(mut samples: Vec<f64>) -> Option<(f64, f64)> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| samples[(((samples.len() - 1) as f64) * p).round() as usize];
    Some((at(0.5), at(0.95)))
}

/// A test bed whose server host (203.0.113.9 and .10) runs `fog server` with RFC 5780 STUN,
/// plus `extra` arguments (a relay, say). Keep both: dropping the guard stops the server,
/// dropping the lab removes its namespaces.
pub fn lab_with_fog_server(fog: &Path, extra: &[&str]) -> Result<(Lab, ChildGuard)> {
    let (lab, _server, fog_server) = lab_with_server_host(fog, extra)?;
    Ok((lab, fog_server))
}

/// [`lab_with_fog_server`] with the server host, to start `fog server` again on it.
pub fn lab_with_server_host(fog: &Path, extra: &[&str]) -> Result<(Lab, Host, ChildGuard)> {
    let mut lab = Lab::new().map_err(|e| anyhow!("the NAT test bed: {e}"))?;
    let server = lab.server(&[
        std::net::Ipv4Addr::new(203, 0, 113, 9),
        std::net::Ipv4Addr::new(203, 0, 113, 10),
    ])?;
    let fog_server = start(
        &server,
        fog,
        &fog_server_args(extra),
        "fog signal server on",
    )?;
    Ok((lab, server, fog_server))
}

/// The lab server host's `fog server` arguments (signal, RFC 5780 STUN) and `extra`.
pub fn fog_server_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "server",
        "--signal",
        "203.0.113.9:7600",
        "--stun",
        "203.0.113.9:3478",
        "--stun-alt",
        "203.0.113.10:3479",
    ];
    args.extend(extra);
    args
}
