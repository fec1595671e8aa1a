//! `fog-bench-transports`: each transport against plain TCP on the same path. One stream moves
//! N MiB (or what it can in a minute) to a sink that counts it; the table gives MiB/s and the CPU the process used meanwhile
//! (both ends run in this process, so 100 % is one core busy). Paths: loopback, and across the
//! test bed between two hosts behind `open` routers (so that plain TCP reaches too) with 0 % and
//! 2 % loss on each access link. Then memory per open connection on loopback.
//!
//! Run with `cargo build --release -p fog-benches --bins && sudo
//! target/release/fog-bench-transports`; `--quick` does a short run for CI.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use fog::{Node, Protocol};
use fog_natlab::{Host, Lab, Link, NatBehaviour};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PROTOCOLS: [Protocol; 5] = [
    Protocol::Quic,
    Protocol::Rtc,
    Protocol::Kcp,
    Protocol::Utp,
    Protocol::Sctp,
];
const TCP_SINK_PORT: u16 = 5001;

/// CPU time this process has used so far.
fn cpu_time() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Reads `io` to its end; answers with the count.
async fn sink<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = io.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    io.write_all(&total.to_be_bytes()).await?;
    io.shutdown().await
}

/// Writes `bytes` to `io` (or what it can until `limit` passes), closes its sending side and
/// waits for the sink's count; the bytes the sink counted.
async fn pour<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    bytes: usize,
    limit: Duration,
) -> Result<u64> {
    let chunk = vec![0x5au8; 256 * 1024];
    let started = Instant::now();
    let mut written = 0;
    while written < bytes && started.elapsed() < limit {
        let n = (bytes - written).min(chunk.len());
        io.write_all(&chunk[..n]).await?;
        written += n;
    }
    io.shutdown().await?;
    let mut count = [0u8; 8];
    io.read_exact(&mut count).await?;
    let count = u64::from_be_bytes(count);
    if count != written as u64 {
        return Err(anyhow!("the sink counted {count} of {written} bytes"));
    }
    Ok(count)
}

/// MiB/s and CPU % of one transfer, which returns the bytes it moved.
async fn measure<F: std::future::Future<Output = Result<u64>>>(transfer: F) -> Result<(f64, f64)> {
    let (wall, cpu) = (Instant::now(), cpu_time());
    let bytes = transfer.await?;
    let (wall, cpu) = (wall.elapsed(), cpu_time() - cpu);
    Ok((
        bytes as f64 / (1024.0 * 1024.0) / wall.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
    ))
}

/// A node named `sink` that counts every stream, and a TCP sink on `tcp`.
async fn sinks(signal: &str, tcp: SocketAddr) -> Result<Node> {
    let node = Node::builder().signal(signal).name("sink").bind().await?;
    let mut incoming = node.incoming();
    tokio::spawn(async move {
        while let Some(conn) = incoming.next().await {
            tokio::spawn(async move {
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tokio::spawn(sink(fog::BiStream { send, recv }));
                }
            });
        }
    });
    let listener = tokio::net::TcpListener::bind(tcp).await?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(sink(tcp));
        }
    });
    Ok(node)
}

/// A node that dials over `protocol` only.
async fn client(signal: &str, protocol: Protocol) -> Result<Node> {
    Ok(Node::builder()
        .signal(signal)
        .protocols([protocol])
        .bind()
        .await?)
}

/// A new stream on `conn`, as one IO.
async fn stream(conn: &fog::Connection) -> Result<fog::BiStream> {
    let (send, recv) = conn.open_bi().await?;
    Ok(fog::BiStream { send, recv })
}

/// One row per transport and one for TCP: (name, MiB/s, CPU %).
/// A row stops writing after `limit` (a slow transport on a lossy path would take minutes).
async fn rows(
    signal: &str,
    tcp: SocketAddr,
    bytes: usize,
    limit: Duration,
) -> Result<Vec<(String, f64, f64)>> {
    let mut rows = Vec::new();
    for protocol in PROTOCOLS {
        let node = client(signal, protocol).await?;
        let conn = node
            .connect("sink")
            .await
            .map_err(|e| anyhow!("{protocol}: {e}"))?;
        // Warm up: the first megabyte opens the windows.
        pour(stream(&conn).await?, 1024 * 1024, limit).await?;
        let (rate, cpu) = measure(pour(stream(&conn).await?, bytes, limit)).await?;
        rows.push((format!("fog {protocol}"), rate, cpu));
        conn.close("done");
        node.shutdown().await;
    }
    let tcp_stream = tokio::net::TcpStream::connect(tcp).await?;
    let (rate, cpu) = measure(pour(tcp_stream, bytes, limit)).await?;
    rows.push(("plain TCP".into(), rate, cpu));
    Ok(rows)
}

async fn memory_per_connection(signal: &str, count: usize) -> Result<Vec<(Protocol, f64)>> {
    let mut out = Vec::new();
    for protocol in PROTOCOLS {
        let node = client(signal, protocol).await?;
        // One connection first, so that what every connection shares is already there.
        let first = node.connect("sink").await.map_err(|e| anyhow!("{e}"))?;
        let before = rss_kib();
        let mut conns = Vec::new();
        for _ in 0..count {
            let conn = node.connect("sink").await.map_err(|e| anyhow!("{e}"))?;
            pour(stream(&conn).await?, 1024, Duration::from_secs(10)).await?;
            conns.push(conn);
        }
        let after = rss_kib();
        out.push((protocol, after.saturating_sub(before) as f64 / count as f64));
        for conn in conns {
            conn.close("done");
        }
        first.close("done");
        node.shutdown().await;
    }
    Ok(out)
}

fn print_rows(title: &str, rows: &[(String, f64, f64)]) {
    println!("| {title} | MiB/s | CPU % |");
    println!("| --- | --- | --- |");
    for (name, rate, cpu) in rows {
        println!("| {name} | {rate:.1} | {cpu:.0} |");
    }
    println!();
}

/// A signal server (announcing STUN) and STUN server on the test bed's server host, until the
/// sender is dropped.
fn testbed_servers(host: &Host) -> Result<std::sync::mpsc::Sender<()>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let host = host.clone();
    std::thread::spawn(move || {
        let _ = host.run(move || async move {
            let started = async {
                let stun = fog::server::stun::StunServer::bind(fog::server::stun::StunConfig {
                    primary: "203.0.113.9:3478".parse()?,
                    alternate: Some("203.0.113.10:3479".parse()?),
                })
                .await?;
                let signal = fog::server::SignalServer::bind(fog::server::SignalConfig {
                    listen: "203.0.113.9:7600".parse()?,
                    stun: vec!["203.0.113.9:3478".into()],
                    ..Default::default()
                })
                .await?;
                Ok::<_, anyhow::Error>((stun, signal))
            }
            .await;
            match started {
                Ok((stun, signal)) => {
                    let _ = ready_tx.send(Ok(()));
                    let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                    signal.shutdown().await;
                    drop(stun);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(15))
        .context("the test bed's servers did not start")??;
    Ok(stop_tx)
}

fn testbed(loss_percent: u8, bytes: usize, limit: Duration) -> Result<Vec<(String, f64, f64)>> {
    let mut lab = Lab::new().map_err(|e| anyhow!("the NAT test bed: {e}"))?;
    let server = lab.server(&[
        Ipv4Addr::new(203, 0, 113, 9),
        Ipv4Addr::new(203, 0, 113, 10),
    ])?;
    let _servers = testbed_servers(&server)?;
    let access = Link {
        delay: Duration::ZERO,
        loss_percent,
    };
    let ra = lab.router(NatBehaviour::Open, Link::default())?;
    let a = lab.host(&ra, access)?;
    let rb = lab.router(NatBehaviour::Open, Link::default())?;
    let b = lab.host(&rb, access)?;
    let tcp = SocketAddr::from((b.addr(), TCP_SINK_PORT));
    let signal = "ws://203.0.113.9:7600/ws";
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let b_host = b.clone();
    std::thread::spawn(move || {
        let _ = b_host.run(move || async move {
            match sinks(signal, tcp).await {
                Ok(node) => {
                    let _ = ready_tx.send(Ok(()));
                    let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                    node.shutdown().await;
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(15))
        .context("the sink did not start")??;
    let rows = a.run(move || async move { rows(signal, tcp, bytes, limit).await })??;
    drop(stop_tx);
    Ok(rows)
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let mib = if quick { 4 } else { 64 };
    let bytes = mib * 1024 * 1024;
    // A row writes for at most this long: on a lossy path a slow transport moves less.
    let limit = Duration::from_secs(if quick { 10 } else { 60 });
    println!(
        "fog-bench-transports ({} build): one stream of {mib} MiB per row, or what it moves in {} s",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        limit.as_secs()
    );
    println!();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let signal_server = fog::server::SignalServer::bind(fog::server::SignalConfig {
            listen: "127.0.0.1:0".parse()?,
            ..Default::default()
        })
        .await?;
        let signal = signal_server.url();
        let tcp_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let tcp = tcp_listener.local_addr()?;
        drop(tcp_listener);
        let sink_node = sinks(&signal, tcp).await?;
        print_rows("loopback", &rows(&signal, tcp, bytes, limit).await?);
        let count = if quick { 5 } else { 50 };
        println!("| memory per open connection (both ends, loopback, {count} connections) | KiB |");
        println!("| --- | --- |");
        for (protocol, kib) in memory_per_connection(&signal, count).await? {
            println!("| fog {protocol} | {kib:.0} |");
        }
        println!();
        sink_node.shutdown().await;
        signal_server.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })?;
    drop(runtime);
    for loss in [0, 2] {
        match testbed(loss, bytes, limit) {
            Ok(rows) => print_rows(&format!("test bed, {loss} % loss per access link"), &rows),
            Err(e) => println!("test bed, {loss} % loss: not measured ({e})\n"),
        }
    }
    Ok(())
}
