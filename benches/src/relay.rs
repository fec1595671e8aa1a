//! `fog-bench-relay`: the relay against the direct path, in the NAT test bed, through
//! `fog server` with STUN and a TURN relay (the `fog` binary next to this one). Needs root, `ip`
//! and `nft`.
//!
//! - Round trip (1-byte echo) and echo throughput (16 MiB through an echoing stream) over a
//!   direct pair (two port-restricted cones) and over the relay (two random symmetric NATs,
//!   which have no direct path), without link delay.
//! - Time from `connect` to the first echoed byte at 25 ms one-way delay on every access link,
//!   relay first (the default) against direct only (no relay layer on either side).
//!
//! `--quick` does 3 runs per cell instead of 20.

mod common;

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use common::fog_binary;
use fog::{Connection, Node, PathKind, StackParts};
use fog_natlab::{Host, Link, NatBehaviour};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIGNAL: &str = "ws://203.0.113.9:7600/ws";
const ECHO_BYTES: usize = 16 * 1024 * 1024;

/// The default stack, without relays when `direct_only`.
fn stack(direct_only: bool) -> impl Fn(&StackParts) -> fog::Stack + Send + Sync + 'static {
    move |parts| {
        let mut parts = parts.clone();
        if direct_only {
            parts.relays.clear();
            parts.turn.clear();
        }
        fog::default_stack(&parts)
    }
}

/// An echoing node named `name` in `host`, until `stop` is dropped or sends.
fn echo_node(
    host: &Host,
    name: String,
    direct_only: bool,
) -> (std::thread::JoinHandle<()>, std_mpsc::Sender<()>) {
    let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std_mpsc::channel::<()>();
    let host = host.clone();
    let handle = std::thread::spawn(move || {
        let _ = host.run(move || async move {
            let node = Node::builder()
                .signal(SIGNAL)
                .name(name)
                .stack(stack(direct_only))
                .bind()
                .await
                .expect("echo node registers");
            let _ = ready_tx.send(());
            let mut incoming = node.incoming();
            let server = tokio::spawn(async move {
                while let Some(conn) = incoming.next().await {
                    tokio::spawn(async move {
                        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                            tokio::spawn(async move {
                                let _ = tokio::io::copy(&mut recv, &mut send).await;
                                let _ = send.shutdown().await;
                            });
                        }
                    });
                }
            });
            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
            server.abort();
            node.shutdown().await;
        });
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(15));
    (handle, stop_tx)
}

async fn echo(conn: &Connection, data: Vec<u8>) -> Result<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let writer = tokio::spawn(async move {
        send.write_all(&data).await?;
        send.shutdown().await
    });
    let mut back = Vec::new();
    recv.read_to_end(&mut back).await?;
    writer.await??;
    Ok(back)
}

fn median_p95(ms: Vec<f64>) -> String {
    match common::median_p95(ms) {
        Some((median, p95)) => format!("{median:.1} / {p95:.1}"),
        None => "none".into(),
    }
}

/// Round trips and echo throughput over one connection from `dialer` to `peer`.
fn rtt_and_throughput(dialer: &Host, peer: String, runs: usize) -> Result<(PathKind, String, f64)> {
    dialer
        .run(move || async move {
            let node = Node::builder()
                .signal(SIGNAL)
                .bind()
                .await
                .map_err(|e| anyhow!("dialer: {e}"))?;
            let conn = node
                .connect(&peer)
                .await
                .map_err(|e| anyhow!("connect: {e}"))?;
            // Let the path settle (a direct pair may take over from the relay).
            tokio::time::sleep(Duration::from_secs(4)).await;
            let mut rtts = Vec::new();
            for _ in 0..runs * 5 {
                let started = Instant::now();
                echo(&conn, vec![7]).await?;
                rtts.push(started.elapsed().as_secs_f64() * 1e3);
            }
            let data: Vec<u8> = (0..ECHO_BYTES).map(|i| (i % 251) as u8).collect();
            let started = Instant::now();
            let back = echo(&conn, data).await?;
            let secs = started.elapsed().as_secs_f64();
            if back.len() != ECHO_BYTES {
                bail!("echo lost bytes: {} of {ECHO_BYTES}", back.len());
            }
            let path = conn.path_kind();
            conn.close("bench");
            node.shutdown().await;
            Ok((
                path,
                median_p95(rtts),
                ECHO_BYTES as f64 / secs / (1024.0 * 1024.0),
            ))
        })
        .map_err(|e| anyhow!("{e}"))?
}

/// Times from `connect` to the first echoed byte, `runs` times, from `dialer` to `peer`.
fn first_byte(dialer: &Host, peer: String, runs: usize, direct_only: bool) -> Result<Vec<f64>> {
    dialer
        .run(move || async move {
            let node = Node::builder()
                .signal(SIGNAL)
                .stack(stack(direct_only))
                .bind()
                .await
                .map_err(|e| anyhow!("dialer: {e}"))?;
            node.nat_profile().await;
            let mut times = Vec::new();
            for _ in 0..runs {
                let started = Instant::now();
                if let Ok(conn) = node.connect(&peer).await {
                    if echo(&conn, vec![1]).await.is_ok() {
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

fn main() -> Result<()> {
    let runs = if std::env::args().any(|a| a == "--quick") {
        3
    } else {
        20
    };
    let fog = fog_binary()?;
    let (mut lab, _server) = common::lab_with_fog_server(
        &fog,
        &["--relay", "203.0.113.9:3480", "--relay-max-rate", "0"],
    )?;

    println!(
        "| path (no link delay) | pair | round trip, median / p95 (ms) | echo throughput (MiB/s) |"
    );
    println!("| --- | --- | --- | --- |");
    let mut n = 0;
    for (a, b) in [
        (
            NatBehaviour::PortRestrictedCone,
            NatBehaviour::PortRestrictedCone,
        ),
        (NatBehaviour::SymmetricRandom, NatBehaviour::SymmetricRandom),
    ] {
        let ra = lab.router(a, Link::default())?;
        let dialer = lab.host(&ra, Link::default())?;
        let rb = lab.router(b, Link::default())?;
        let served = lab.host(&rb, Link::default())?;
        n += 1;
        let name = format!("relay-bench{n}");
        let (node, stop) = echo_node(&served, name.clone(), false);
        let (path, rtt, mibs) = rtt_and_throughput(&dialer, name, runs)?;
        println!("| {path} | {a} x {b} | {rtt} | {mibs:.1} |");
        drop(stop);
        let _ = node.join();
    }

    println!();
    println!("| pair, 25 ms one-way | relay first: connect to first byte, median / p95 (ms) | direct only (ms) |");
    println!("| --- | --- | --- |");
    let access = Link::with_delay(Duration::from_millis(25));
    for (a, b) in [
        (
            NatBehaviour::PortRestrictedCone,
            NatBehaviour::PortRestrictedCone,
        ),
        (
            NatBehaviour::PortRestrictedCone,
            NatBehaviour::SymmetricRandom,
        ),
        (NatBehaviour::SymmetricRandom, NatBehaviour::SymmetricRandom),
    ] {
        let mut cells = Vec::new();
        for direct_only in [false, true] {
            let ra = lab.router(a, Link::default())?;
            let dialer = lab.host(&ra, access)?;
            let rb = lab.router(b, Link::default())?;
            let served = lab.host(&rb, access)?;
            n += 1;
            let name = format!("relay-bench{n}");
            let (node, stop) = echo_node(&served, name.clone(), direct_only);
            cells.push(median_p95(first_byte(&dialer, name, runs, direct_only)?));
            drop(stop);
            let _ = node.join();
        }
        println!("| {a} x {b} | {} | {} |", cells[0], cells[1]);
    }
    Ok(())
}
