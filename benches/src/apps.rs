//! `fog-bench-apps`: what applications get over fog, against plain TCP on the same path
//! (loopback, one process):
//!
//! - HTTP/1.1 requests per second with hyper: one keep-alive connection, and 8 at once, over
//!   `fog_http::FogConnector` streams against the same server over TCP;
//! - file transfer throughput: `fog::service::send_file` into an inbox against a plain TCP copy
//!   that writes and hashes the same way.
//!
//! Run with `cargo run --release -p fog-benches --bin fog-bench-apps`; `--quick` does a short
//! run for CI.

use std::convert::Infallible;
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

struct Settings {
    requests: usize,
    file_mib: usize,
    rounds: usize,
}

/// The page every request gets.
const BODY: &[u8] = &[b'x'; 1024];

/// Serves HTTP/1.1 on `io` with a handler that answers 1 KiB.
async fn serve_http<IO>(io: IO)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(|_req: hyper::Request<hyper::body::Incoming>| async {
        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(BODY))))
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

/// `requests` GETs, one after the other, on one HTTP/1.1 connection over `io`.
async fn get_many<IO>(io: IO, requests: usize) -> Result<()>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    for _ in 0..requests {
        let request = hyper::Request::get("http://bench/")
            .header("host", "bench")
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let body = response.into_body().collect().await?.to_bytes();
        if body.len() != BODY.len() {
            return Err(anyhow!("a short body: {} bytes", body.len()));
        }
    }
    Ok(())
}

/// Requests per second over `connections` connections at once, each opened by `open`.
async fn rps<F, Fut, IO>(open: F, connections: usize, requests: usize) -> Result<f64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<IO>>,
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut ios = Vec::new();
    for _ in 0..connections {
        ios.push(open().await?);
    }
    let per = requests / connections;
    let started = Instant::now();
    let runs: Vec<_> = ios
        .into_iter()
        .map(|io| tokio::spawn(get_many(io, per)))
        .collect();
    for run in runs {
        run.await??;
    }
    Ok((per * connections) as f64 / started.elapsed().as_secs_f64())
}

/// Receives one plain-TCP copy: writes it to `dir` and hashes it, as the inbox does.
async fn receive_tcp(mut tcp: tokio::net::TcpStream, dir: &Path) -> Result<u64> {
    let mut file = tokio::fs::File::create(dir.join("tcp-copy")).await?;
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).await?;
        digest.update(&buf[..n]);
        total += n as u64;
    }
    file.sync_data().await?;
    let hash = digest.finish();
    tcp.write_all(hash.as_ref()).await?;
    Ok(total)
}

/// Sends `path` over a plain TCP connection; waits for the receiver's hash.
async fn send_tcp<S: AsyncRead + AsyncWrite + Unpin>(mut tcp: S, path: &Path) -> Result<()> {
    let mut file = tokio::fs::File::open(path).await?;
    tokio::io::copy(&mut file, &mut tcp).await?;
    tcp.shutdown().await?;
    let mut hash = [0u8; 32];
    tcp.read_exact(&mut hash).await?;
    Ok(())
}

fn best(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(0.0, f64::max)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let settings = if quick {
        Settings {
            requests: 400,
            file_mib: 16,
            rounds: 1,
        }
    } else {
        Settings {
            requests: 8000,
            file_mib: 256,
            rounds: 5,
        }
    };

    // A signal server, and a node serving HTTP and an inbox; all on loopback.
    let signal = fog::server::SignalServer::bind(fog::server::SignalConfig {
        listen: "127.0.0.1:0".parse()?,
        ..Default::default()
    })
    .await?;
    let work = tempfile::tempdir()?;
    let inbox_dir = work.path().join("inbox");
    let web = fog::Node::builder()
        .signal(signal.url())
        .name("web")
        .bind()
        .await?;
    let mut listener = fog_http::FogListener::new(&web);
    tokio::spawn(async move {
        while let Some(io) = listener.accept().await {
            tokio::spawn(serve_http(io));
        }
    });
    let inbox = fog::Node::builder()
        .signal(signal.url())
        .name("inbox")
        .bind()
        .await?;
    let services = fog::service::Services::new().inbox(fog::service::Inbox::open(&inbox_dir)?);
    let mut incoming = inbox.incoming();
    tokio::spawn(async move {
        while let Some(conn) = incoming.next().await {
            tokio::spawn(services.clone().serve_connection(conn));
        }
    });
    // The same HTTP server over TCP.
    let tcp_web = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let tcp_web_addr = tcp_web.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = tcp_web.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(serve_http(hyper_util::rt::TokioIo::new(tcp)));
        }
    });

    let client = fog::Node::builder().signal(signal.url()).bind().await?;
    let connector = fog_http::FogConnector::new(client.clone());
    let open_fog = || async { connector.open("web").await.map_err(anyhow::Error::from) };
    let open_tcp = || async {
        let tcp = tokio::net::TcpStream::connect(tcp_web_addr).await?;
        tcp.set_nodelay(true)?;
        Ok::<_, anyhow::Error>(hyper_util::rt::TokioIo::new(tcp))
    };
    // Warm up: the P2P connection is made here, not in the measurement.
    rps(open_fog, 1, 10).await?;
    rps(open_tcp, 1, 10).await?;

    println!(
        "fog-bench-apps ({} build)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!();
    println!("| HTTP/1.1 GET, 1 KiB body, loopback | fog (QUIC stream) | plain TCP |");
    println!("|---|---|---|");
    for connections in [1, 8] {
        let mut fog_runs = Vec::new();
        let mut tcp_runs = Vec::new();
        for _ in 0..settings.rounds {
            fog_runs.push(rps(open_fog, connections, settings.requests).await?);
            tcp_runs.push(rps(open_tcp, connections, settings.requests).await?);
        }
        println!(
            "| requests/s, {connections} connection{} | {:.0} | {:.0} |",
            if connections == 1 { "" } else { "s at once" },
            median(fog_runs),
            median(tcp_runs)
        );
    }

    // A file of pseudo-random bytes.
    let file = work.path().join("payload.bin");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file)?);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..settings.file_mib * 1024 * 1024 / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            std::io::Write::write_all(&mut out, &x.to_le_bytes())?;
        }
    }
    let bytes = (settings.file_mib * 1024 * 1024) as f64;
    let conn = client.connect("inbox").await.map_err(|e| anyhow!(e))?;
    let tcp_sink = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let tcp_sink_addr = tcp_sink.local_addr()?;
    let sink_dir = work.path().to_path_buf();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = tcp_sink.accept().await {
            let _ = receive_tcp(tcp, &sink_dir).await;
        }
    });
    let mut fog_rates = Vec::new();
    let mut tcp_rates = Vec::new();
    for _ in 0..settings.rounds {
        // Each send stores a new copy: clear the inbox so every round sends the whole file.
        let _ = std::fs::remove_dir_all(&inbox_dir);
        std::fs::create_dir_all(&inbox_dir)?;
        let report = fog::service::send_file(&conn, &file, |_, _| {}).await?;
        if report.resumed_from != 0 {
            return Err(anyhow!("a round resumed instead of sending it all"));
        }
        fog_rates.push(bytes / report.seconds / (1024.0 * 1024.0));
        let started = Instant::now();
        send_tcp(tokio::net::TcpStream::connect(tcp_sink_addr).await?, &file).await?;
        tcp_rates.push(bytes / started.elapsed().as_secs_f64() / (1024.0 * 1024.0));
    }
    println!();
    println!(
        "| File transfer, {} MiB, loopback, written and SHA-256 checked | fog send | plain TCP copy |",
        settings.file_mib
    );
    println!("|---|---|---|");
    println!(
        "| MiB/s, median of {} (best) | {:.0} ({:.0}) | {:.0} ({:.0}) |",
        settings.rounds,
        median(fog_rates.clone()),
        best(&fog_rates),
        median(tcp_rates.clone()),
        best(&tcp_rates)
    );
    conn.close("done");
    client.shutdown().await;
    web.shutdown().await;
    inbox.shutdown().await;
    signal.shutdown().await;
    Ok(())
}
