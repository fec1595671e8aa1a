//! KCP over the node's socket, as a reliable byte stream.
//!
//! The `kcp` crate is KCP's protocol engine without I/O; this module feeds it the datagrams
//! the socket tags for KCP and sends what it outputs to the peer's route, so a KCP session
//! rides the same paths as QUIC (direct, relayed, moved by the punch layer's path watch). Each
//! session is one conversation id, which both peers derive from their attempt's session id.
//! The application end is a [`DuplexStream`]; back-pressure comes from KCP's windows.
//!
//! KCP has neither keep-alive nor close, so two short control datagrams (shorter than any KCP
//! segment) add them: `conv` alone says "still here", `conv` and `0xff` says "closed".

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

use crate::sessions::Sessions;
use crate::socket::FogSocket;

/// The protocol byte of KCP datagrams on the socket.
pub const KCP_PROTOCOL: u8 = 1;
/// A session that heard nothing for this long is dead.
pub const KCP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an otherwise quiet session says it is still there.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Bytes the application may have in flight before its writes wait.
const DUPLEX_BUFFER: usize = 256 * 1024;
/// Segments KCP may have unacknowledged before the application's writes wait.
const SEND_WINDOW: u16 = 1024;
/// KCP's payload per datagram: a path MTU of 1280 minus IP, UDP and fog's two tag bytes.
const MTU: usize = 1200;
/// Datagrams queued for a session before new ones are dropped.
const INBOUND_QUEUE: usize = 1024;

enum Inbound {
    Segment(Vec<u8>),
    KeepAlive,
    Closed,
}

/// The KCP sessions on one socket, by conversation id.
#[derive(Clone)]
pub struct KcpMux {
    socket: Arc<FogSocket>,
    sessions: Sessions<Inbound>,
}

impl KcpMux {
    /// Takes the socket's KCP datagrams. Call once per socket: a second mux replaces the first.
    pub fn new(socket: Arc<FogSocket>) -> Self {
        let sessions = Sessions::route(&socket, KCP_PROTOCOL, |datagram| {
            let conv = u32::from_le_bytes(datagram.get(..4)?.try_into().ok()?);
            let message = match datagram.len() {
                4 => Inbound::KeepAlive,
                5 if datagram[4] == 0xff => Inbound::Closed,
                n if n >= kcp::Kcp::<Vec<u8>>::header_len() => Inbound::Segment(datagram),
                _ => return None,
            };
            let keep = matches!(message, Inbound::Segment(_));
            Some((conv, message, keep))
        });
        KcpMux { socket, sessions }
    }

    /// A KCP session with `peer` (an address the socket sends to: a peer's route stand-in, a
    /// relay-path stand-in or a real address) on conversation `conv`. The stream ends when the
    /// peer closes, the link dies or it is idle for [`KCP_IDLE_TIMEOUT`]; dropping it closes
    /// the session (after what was written is delivered).
    pub fn open(&self, conv: u32, peer: SocketAddr) -> DuplexStream {
        let (app, ours) = tokio::io::duplex(DUPLEX_BUFFER);
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        self.sessions.lock().open(conv, tx);
        let socket = self.socket.clone();
        let sessions = self.sessions.clone();
        tokio::spawn(async move {
            let reason = drive(socket.clone(), conv, peer, rx, ours).await;
            tracing::debug!(conv, %peer, reason, "KCP session ended");
            let _ = socket.send_transport_datagram(peer, KCP_PROTOCOL, &closing(conv));
            sessions.lock().close(conv);
        });
        app
    }
}

fn closing(conv: u32) -> Vec<u8> {
    let mut message = conv.to_le_bytes().to_vec();
    message.push(0xff);
    message
}

/// Where KCP's output goes: straight to the socket, tagged.
struct Output {
    socket: Arc<FogSocket>,
    peer: SocketAddr,
}

impl Write for Output {
    fn write(&mut self, datagram: &[u8]) -> std::io::Result<usize> {
        self.socket
            .send_transport_datagram(self.peer, KCP_PROTOCOL, datagram)?;
        Ok(datagram.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs one session until it ends; why it ended.
async fn drive(
    socket: Arc<FogSocket>,
    conv: u32,
    peer: SocketAddr,
    mut inbound: mpsc::Receiver<Inbound>,
    app: DuplexStream,
) -> &'static str {
    let mut engine = kcp::Kcp::new_stream(
        conv,
        Output {
            socket: socket.clone(),
            peer,
        },
    );
    // Fast mode: no delayed acks, 10 ms ticks, fast resend after 2 duplicate acks, no
    // congestion window (the path's capacity is probed by loss, as KCP's "turbo" setting).
    engine.set_nodelay(true, 10, 2, true);
    engine.set_wndsize(SEND_WINDOW, SEND_WINDOW);
    let _ = engine.set_mtu(MTU);
    let (mut app_read, mut app_write) = tokio::io::split(app);
    let started = Instant::now();
    let now_ms = || started.elapsed().as_millis() as u32;
    let mut last_heard = Instant::now();
    let mut last_sent = Instant::now();
    let mut app_done = false;
    let mut to_app: Vec<u8> = Vec::new();
    let mut to_app_at = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let now = now_ms();
        if engine.update(now).is_err() || engine.is_dead_link() {
            return "the link is dead";
        }
        // Received bytes, one batch at a time: while the application has not taken them,
        // KCP's receive window fills and the peer slows down.
        if to_app_at == to_app.len() {
            to_app.clear();
            to_app_at = 0;
            while let Ok(size) = engine.peeksize() {
                let start = to_app.len();
                to_app.resize(start + size, 0);
                match engine.recv(&mut to_app[start..]) {
                    Ok(n) => to_app.truncate(start + n),
                    Err(_) => {
                        to_app.truncate(start);
                        break;
                    }
                }
                if to_app.len() >= 64 * 1024 {
                    break;
                }
            }
        }
        if app_done && engine.wait_snd() == 0 {
            return "closed by this side";
        }
        if last_heard.elapsed() > KCP_IDLE_TIMEOUT {
            return "idle";
        }
        if last_sent.elapsed() > KEEP_ALIVE {
            let _ = socket.send_transport_datagram(peer, KCP_PROTOCOL, &conv.to_le_bytes());
            last_sent = Instant::now();
        }
        let wake_in = engine.check(now).wrapping_sub(now).min(100);
        let room = !app_done && engine.wait_snd() < usize::from(SEND_WINDOW) * 2;
        tokio::select! {
            message = inbound.recv() => match message {
                None => return "the socket is gone",
                Some(Inbound::Closed) => return "closed by the peer",
                Some(Inbound::KeepAlive) => last_heard = Instant::now(),
                Some(Inbound::Segment(segment)) => {
                    last_heard = Instant::now();
                    let _ = engine.input(&segment);
                    // Take what else is queued before the next tick.
                    while let Ok(Inbound::Segment(segment)) = inbound.try_recv() {
                        let _ = engine.input(&segment);
                    }
                    let _ = engine.flush();
                }
            },
            read = app_read.read(&mut buf), if room => match read {
                Ok(0) | Err(_) => app_done = true,
                Ok(n) => {
                    if engine.send(&buf[..n]).is_err() {
                        return "the application's data did not fit";
                    }
                    let _ = engine.flush();
                    last_sent = Instant::now();
                }
            },
            written = app_write.write(&to_app[to_app_at..]), if to_app_at < to_app.len() => match written {
                Ok(n) if n > 0 => to_app_at += n,
                // The application end is gone: nothing more to deliver.
                _ => return "the application closed",
            },
            _ = tokio::time::sleep(Duration::from_millis(wake_in as u64)) => {}
        }
    }
}
