//! `fog-bench`: loopback connect time, echo round trip, idle memory of `fog serve`, and signal
//! server memory per registered peer. Prints a table.
//!
//! Run with `scripts/bench.sh` (release build); `--quick` does a short run for CI.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use fog_core::signal::{registration_message, ClientMessage, ServerMessage};
use fog_core::Identity;
use fog_natlab::process::{spawn_until_line, ChildGuard};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

struct Settings {
    connects: usize,
    echoes: usize,
    peers: usize,
}

/// Resident memory of process `pid`, from /proc.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for pid {pid}"))
}

fn fog_binary() -> Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name("fog");
    if !path.exists() {
        bail!(
            "{} is missing: build it first (cargo build -p fog, with the same profile)",
            path.display()
        );
    }
    Ok(path)
}

/// Starts `fog ARGS` and returns it with the first stdout line that starts with `prefix`.
fn spawn_fog(args: &[&str], prefix: &str) -> Result<(ChildGuard, String)> {
    spawn_until_line(
        Command::new(fog_binary()?).args(args),
        prefix,
        Duration::from_secs(10),
    )
    .map_err(|e| anyhow!(e))
}

fn raise_fd_limit(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(|a, b| a.total_cmp(b));
    (percentile(&samples, 0.5), percentile(&samples, 0.95))
}

async fn echo(conn: &fog::Connection) -> Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(b"ping").await?;
    send.shutdown().await?;
    let mut back = Vec::new();
    recv.read_to_end(&mut back).await?;
    if back != b"ping" {
        bail!("echo differs");
    }
    Ok(())
}

/// Registers `count` peers over raw WebSockets and keeps them open until the returned handles drop.
async fn register_peers(url: &str, count: usize) -> Result<Vec<impl Sized>> {
    let mut sessions = Vec::with_capacity(count);
    for _ in 0..count {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
        let nonce = match ws.next().await {
            Some(Ok(Message::Text(text))) => match serde_json::from_str(&text)? {
                ServerMessage::Challenge { nonce, .. } => {
                    fog_core::hex::decode(&nonce).ok_or_else(|| anyhow!("bad nonce"))?
                }
                other => bail!("expected a challenge, got {other:?}"),
            },
            other => bail!("expected a challenge, got {other:?}"),
        };
        let identity = Identity::generate();
        let peer = identity.peer_id();
        let register = ClientMessage::Register {
            peer,
            name: Some(format!("bench-{}", peer.short())),
            signature: fog_core::hex::encode(&identity.sign(&registration_message(&nonce, &peer))),
        };
        ws.send(Message::Text(serde_json::to_string(&register)?))
            .await?;
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.contains("\"registered\"") => {}
            other => bail!("registration failed: {other:?}"),
        }
        sessions.push(ws);
    }
    Ok(sessions)
}

#[tokio::main]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let settings = if quick {
        Settings {
            connects: 5,
            echoes: 10,
            peers: 100,
        }
    } else {
        Settings {
            connects: 50,
            echoes: 200,
            peers: 2000,
        }
    };
    raise_fd_limit(4 * settings.peers as u64 + 256);

    let (server, addr) = spawn_fog(
        &["server", "--signal", "127.0.0.1:0", "--stun", "127.0.0.1:0"],
        "fog signal server on",
    )?;
    let url = addr.clone();
    let (serve, peer_line) = spawn_fog(
        &["serve", "--signal", &url, "--name", "bench-echo"],
        "peer id:",
    )?;
    let _ = peer_line;

    let client = fog::Node::builder()
        .signal(&url)
        .bind_addr("127.0.0.1:0".parse()?)
        .bind()
        .await?;
    let mut connect_ms = Vec::new();
    let mut conn = None;
    for _ in 0..settings.connects {
        let started = Instant::now();
        let c = client
            .connect("bench-echo")
            .await
            .map_err(|e| anyhow!("connect: {e}"))?;
        connect_ms.push(started.elapsed().as_secs_f64() * 1e3);
        echo(&c).await?;
        if let Some(old) = conn.replace(c) {
            old.close("next");
        }
    }
    let conn = conn.ok_or_else(|| anyhow!("no connection"))?;
    let mut rtt_ms = Vec::new();
    for _ in 0..settings.echoes {
        let started = Instant::now();
        echo(&conn).await?;
        rtt_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    conn.close("done");
    client.shutdown().await;

    // Let the serving node go idle before reading its memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let serve_rss = rss_kib(serve.0.id())?;
    drop(serve);

    let before = rss_kib(server.0.id())?;
    let sessions = register_peers(&url, settings.peers).await?;
    let after = rss_kib(server.0.id())?;
    drop(sessions);
    let per_peer = (after.saturating_sub(before)) as f64 * 1024.0 / settings.peers as f64;

    let (connect_median, connect_p95) = summary(connect_ms);
    let (rtt_median, rtt_p95) = summary(rtt_ms);
    println!("| measure | value |");
    println!("| --- | --- |");
    println!(
        "| loopback connect, median / p95 ({} connects) | {connect_median:.1} ms / {connect_p95:.1} ms |",
        settings.connects
    );
    println!(
        "| echo round trip on a new stream, median / p95 ({} echoes) | {rtt_median:.2} ms / {rtt_p95:.2} ms |",
        settings.echoes
    );
    println!(
        "| idle resident memory of `fog serve` | {:.1} MiB |",
        serve_rss as f64 / 1024.0
    );
    println!(
        "| signal server memory per registered peer ({} peers) | {:.1} KiB |",
        settings.peers,
        per_peer / 1024.0
    );
    drop(server);
    Ok(())
}
