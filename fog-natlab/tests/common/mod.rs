//! Test helpers: a small RFC 5780-style UDP responder for a server namespace, and a probe with
//! transaction ids and retries for a host namespace.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fog_natlab::{Host, LabError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::time::timeout;

/// The server's primary address.
pub const A1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
/// The server's second address (RFC 5780's alternate address).
pub const A2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// A third address the host never talks to: the source of unsolicited packets.
pub const A3: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
/// The primary port.
pub const P1: u16 = 3478;
/// The alternate port.
pub const P2: u16 = 3479;

/// Answer from the receiving socket with the source address seen.
pub const ECHO: u8 = 0;
/// Answer from the same address, other port (then ack from the receiving socket).
pub const FROM_OTHER_PORT: u8 = 1;
/// Answer from the other address, same port (then ack from the receiving socket).
pub const FROM_OTHER_ADDR: u8 = 2;
/// Answer from the stranger address A3, same port (then ack from the receiving socket).
pub const FROM_STRANGER: u8 = 3;
/// Record the sequence number in the payload; no answer.
pub const DATA: u8 = 4;
/// Answer with the number of distinct sequence numbers recorded.
pub const COUNT: u8 = 5;

const MAGIC: &[u8; 2] = b"NL";
const KIND_DIRECT: u8 = 0;
const KIND_ALT: u8 = 1;

/// How long one try waits for its answer.
pub const TRY_TIMEOUT: Duration = Duration::from_millis(300);
/// How many tries before a request counts as unanswered.
pub const TRIES: usize = 8;
/// After the ack of a filtering probe arrived, how long an alternate answer may still come
/// (it was sent before the ack over the same path, so it normally arrives first).
pub const ALT_GRACE: Duration = Duration::from_millis(150);

/// An answer of the responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub txid: u64,
    pub kind: u8,
    pub mapped: SocketAddrV4,
    pub value: u32,
    pub from: SocketAddr,
}

fn encode_reply(txid: u64, kind: u8, mapped: SocketAddrV4, value: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(21);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&txid.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&mapped.ip().octets());
    out.extend_from_slice(&mapped.port().to_be_bytes());
    out.extend_from_slice(&value.to_be_bytes());
    out
}

fn decode_reply(buf: &[u8], from: SocketAddr) -> Option<Reply> {
    if buf.len() != 21 || &buf[..2] != MAGIC {
        return None;
    }
    let txid = u64::from_be_bytes(buf[2..10].try_into().ok()?);
    let kind = buf[10];
    let ip = Ipv4Addr::new(buf[11], buf[12], buf[13], buf[14]);
    let port = u16::from_be_bytes([buf[15], buf[16]]);
    let value = u32::from_be_bytes(buf[17..21].try_into().ok()?);
    Some(Reply {
        txid,
        kind,
        mapped: SocketAddrV4::new(ip, port),
        value,
        from,
    })
}

fn encode_request(txid: u64, cmd: u8, value: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(15);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&txid.to_be_bytes());
    out.push(cmd);
    out.extend_from_slice(&value.to_be_bytes());
    out
}

/// The responder: UDP sockets on every (server address, P1/P2), and a TCP listener on A1:P1
/// that writes back the peer address it sees. Stops (and joins its thread) on drop.
pub struct Responder {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), LabError>>>,
}

impl Responder {
    pub fn start(server: &Host) -> Responder {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let addrs = server.addrs().to_vec();
        let server = server.clone();
        let thread = std::thread::spawn(move || {
            server.run(move || async move {
                let mut sockets: HashMap<SocketAddrV4, Arc<UdpSocket>> = HashMap::new();
                for &addr in &addrs {
                    for port in [P1, P2] {
                        let at = SocketAddrV4::new(addr, port);
                        match UdpSocket::bind(at).await {
                            Ok(s) => {
                                sockets.insert(at, Arc::new(s));
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(format!("bind {at}: {e}")));
                                return;
                            }
                        }
                    }
                }
                let tcp = match TcpListener::bind(SocketAddrV4::new(addrs[0], P1)).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("tcp bind: {e}")));
                        return;
                    }
                };
                let sockets = Arc::new(sockets);
                let seqs = Arc::new(Mutex::new(HashSet::<u32>::new()));
                for (&local, socket) in sockets.iter() {
                    tokio::spawn(serve_udp(
                        local,
                        socket.clone(),
                        sockets.clone(),
                        seqs.clone(),
                    ));
                }
                tokio::spawn(async move {
                    while let Ok((mut stream, peer)) = tcp.accept().await {
                        let _ = stream.write_all(peer.to_string().as_bytes()).await;
                        let _ = stream.shutdown().await;
                    }
                });
                let _ = ready_tx.send(Ok(()));
                let _ = stop_rx.await;
            })
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the responder could not start: {e}"),
            Err(e) => panic!("the responder did not start within 10 s: {e}"),
        }
        Responder {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve_udp(
    local: SocketAddrV4,
    socket: Arc<UdpSocket>,
    all: Arc<HashMap<SocketAddrV4, Arc<UdpSocket>>>,
    seqs: Arc<Mutex<HashSet<u32>>>,
) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let SocketAddr::V4(from) = from else { continue };
        let req = &buf[..n];
        if n != 15 || &req[..2] != MAGIC {
            continue;
        }
        let txid = u64::from_be_bytes(req[2..10].try_into().unwrap());
        let cmd = req[10];
        let value = u32::from_be_bytes(req[11..15].try_into().unwrap());
        let alt_from = match cmd {
            FROM_OTHER_PORT => Some(SocketAddrV4::new(
                *local.ip(),
                if local.port() == P1 { P2 } else { P1 },
            )),
            FROM_OTHER_ADDR => Some(SocketAddrV4::new(
                if *local.ip() == A1 { A2 } else { A1 },
                local.port(),
            )),
            FROM_STRANGER => Some(SocketAddrV4::new(A3, local.port())),
            _ => None,
        };
        match cmd {
            DATA => {
                seqs.lock().unwrap().insert(value);
            }
            COUNT => {
                let count = seqs.lock().unwrap().len() as u32;
                let _ = socket
                    .send_to(&encode_reply(txid, KIND_DIRECT, from, count), from)
                    .await;
            }
            _ => {
                if let Some(alt) = alt_from.and_then(|a| all.get(&a)) {
                    let _ = alt
                        .send_to(&encode_reply(txid, KIND_ALT, from, 0), from)
                        .await;
                }
                let _ = socket
                    .send_to(&encode_reply(txid, KIND_DIRECT, from, 0), from)
                    .await;
            }
        }
    }
}

/// Transaction ids unique within the process (a late answer is never read as another's).
fn next_txid() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    (u64::from(std::process::id()) << 32) | NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The outcome of one request: the answer and the round trip of the try it answered.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub reply: Reply,
    pub rtt: Duration,
    pub tries: usize,
}

/// A UDP socket in a host namespace that sends requests with transaction ids and retries.
pub struct Probe {
    pub socket: UdpSocket,
}

impl Probe {
    pub async fn new() -> Probe {
        Probe {
            socket: UdpSocket::bind("0.0.0.0:0")
                .await
                .expect("bind a probe socket"),
        }
    }

    pub fn local_port(&self) -> u16 {
        self.socket.local_addr().unwrap().port()
    }

    /// Sends `cmd` to `dst` until a direct answer comes (at most `tries` tries of
    /// [`TRY_TIMEOUT`]); each try has its own transaction id, so the round trip is measured
    /// from the try that was answered. Alternate answers are ignored.
    pub async fn ask(&self, dst: SocketAddrV4, cmd: u8, tries: usize) -> Option<Answer> {
        let mut sent: Vec<(u64, Instant)> = Vec::new();
        let mut buf = [0u8; 1500];
        for _ in 0..tries {
            let txid = next_txid();
            let now = Instant::now();
            sent.push((txid, now));
            self.socket
                .send_to(&encode_request(txid, cmd, 0), dst)
                .await
                .expect("send a request");
            let deadline = now + TRY_TIMEOUT;
            while let Ok(got) = timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.socket.recv_from(&mut buf),
            )
            .await
            {
                let (n, from) = got.expect("recv");
                let Some(reply) = decode_reply(&buf[..n], from) else {
                    continue;
                };
                if reply.kind != KIND_DIRECT {
                    continue;
                }
                if let Some((_, at)) = sent.iter().find(|(t, _)| *t == reply.txid) {
                    return Some(Answer {
                        reply,
                        rtt: at.elapsed(),
                        tries: sent.len(),
                    });
                }
            }
        }
        None
    }

    /// A filtering probe: asks `dst` to answer from another source (`cmd` is one of the
    /// `FROM_*` commands) and to ack from `dst` itself. Returns whether the other source's answer
    /// reached us; an error when not even the ack came back.
    pub async fn filtered_through(&self, dst: SocketAddrV4, cmd: u8) -> Result<bool, String> {
        let mut txids: Vec<u64> = Vec::new();
        let mut alt_seen = false;
        let mut buf = [0u8; 1500];
        for _ in 0..TRIES {
            let txid = next_txid();
            txids.push(txid);
            self.socket
                .send_to(&encode_request(txid, cmd, 0), dst)
                .await
                .expect("send a filtering probe");
            let mut deadline = Instant::now() + TRY_TIMEOUT;
            let mut acked = false;
            while let Ok(got) = timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.socket.recv_from(&mut buf),
            )
            .await
            {
                let (n, from) = got.expect("recv");
                let Some(reply) = decode_reply(&buf[..n], from) else {
                    continue;
                };
                if !txids.contains(&reply.txid) {
                    continue;
                }
                if reply.kind == KIND_ALT {
                    alt_seen = true;
                } else if !acked {
                    acked = true;
                    deadline = Instant::now() + ALT_GRACE;
                }
                if acked && alt_seen {
                    return Ok(true);
                }
            }
            if acked {
                return Ok(alt_seen);
            }
        }
        Err(format!(
            "no ack from {dst} to filtering probe {cmd} after {TRIES} tries of {TRY_TIMEOUT:?}"
        ))
    }

    /// Sends `count` DATA packets numbered 0.. to `dst`, a few at a time (the pacing keeps the
    /// TAP queue and the server's socket buffer from overflowing, so only the link loses).
    pub async fn send_data(&self, dst: SocketAddrV4, count: u32) {
        for seq in 0..count {
            self.socket
                .send_to(&encode_request(next_txid(), DATA, seq), dst)
                .await
                .expect("send data");
            if seq % 25 == 24 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// Connects over TCP to the responder and returns the peer address it saw.
pub async fn tcp_seen_as(dst: SocketAddrV4) -> Result<String, String> {
    let attempt = async {
        let mut stream = TcpStream::connect(dst)
            .await
            .map_err(|e| format!("connect {dst}: {e}"))?;
        let mut seen = String::new();
        stream
            .read_to_string(&mut seen)
            .await
            .map_err(|e| format!("read from {dst}: {e}"))?;
        Ok(seen)
    };
    timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| format!("TCP to {dst} did not finish within 10 s"))?
}

/// The median of some durations.
pub fn median(mut values: Vec<Duration>) -> Duration {
    assert!(!values.is_empty(), "median of nothing");
    values.sort();
    values[values.len() / 2]
}

/// Namespace names `ip netns list` shows right now.
pub fn netns_list() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run `ip netns list`");
    assert!(out.status.success(), "`ip netns list` failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}
