//! uTP (BEP 29, the `librqbit-utp` crate) as a fog transport: the crate's uTP socket runs on
//! the node's socket through [`TaggedTransport`] (datagrams tagged `0x3a 0x02`), so uTP rides
//! the same routes and relay paths as QUIC; TLS with both keys pinned and yamux streams run over
//! each uTP stream ([`mux::secure`](crate::mux::secure)).
//!
//! `librqbit-utp` is the maintained uTP crate (the BitTorrent client rqbit uses it), and it
//! takes a custom transport, which a shared socket needs.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fog_core::{Attempt, BoxError, ConnectError, Connection, Identity, Protocol, Role};
use futures_util::future::BoxFuture;
use librqbit_utp::{SocketOpts, UtpSocket, UtpSocketUdp, UtpStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tower_service::Service;

use crate::mux::{secure_attempt, ByteStreamTransport};
use crate::socket::{FogSocket, TransportDatagrams};

/// The protocol byte of uTP datagrams on the socket.
pub const UTP_PROTOCOL: u8 = 2;
/// Streams kept for attempts that have not reached the transport yet, and for how long.
const MAX_EARLY_STREAMS: usize = 64;
const EARLY_TTL: Duration = Duration::from_secs(10);
/// How long the first SYN of a connect waits for its answer; each further one waits twice as
/// long (the handshake's own timeout bounds the whole).
const SYN_WAIT: Duration = Duration::from_millis(750);
/// How many times a segment is sent before the stream gives up on the path.
const UTP_MAX_SENDS_OF_A_SEGMENT: usize = 16;
/// How long a stream with data in flight waits to hear from the peer before it ends.
const UTP_INACTIVITY_TIMEOUT: Duration = Duration::from_secs(30);

/// The node's socket as the crate's transport: receives the datagrams tagged for uTP (with the
/// peer's stand-in as their source) and sends tagged ones along the peer's route.
pub struct TaggedTransport {
    socket: Arc<FogSocket>,
    datagrams: tokio::sync::Mutex<TransportDatagrams>,
}

impl librqbit_utp::Transport for TaggedTransport {
    async fn recv_from<'a>(&'a self, buf: &'a mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let mut datagrams = self.datagrams.lock().await;
        match datagrams.recv().await {
            Some((from, datagram)) => {
                let n = datagram.len().min(buf.len());
                buf[..n].copy_from_slice(&datagram[..n]);
                Ok((n, from))
            }
            None => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the node's socket is gone",
            )),
        }
    }

    fn send_to<'a>(
        &'a self,
        buf: &'a [u8],
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send + Sync + 'a {
        std::future::poll_fn(move |cx| self.poll_send_to(cx, buf, target))
    }

    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        self.socket
            .poll_send_transport_datagram(cx, target, UTP_PROTOCOL, &[io::IoSlice::new(buf)])
    }

    fn bind_addr(&self) -> SocketAddr {
        self.socket.local_addr()
    }
}

impl librqbit_dualstack_sockets::PollSendToVectored for TaggedTransport {
    fn poll_send_to_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        self.socket
            .poll_send_transport_datagram(cx, target, UTP_PROTOCOL, bufs)
    }
}

/// The environment type the crate's UDP socket uses (the crate does not export its name).
trait EnvOf {
    type Env;
}

impl<T, E> EnvOf for UtpSocket<T, E> {
    type Env = E;
}

type DefaultEnv = <UtpSocketUdp as EnvOf>::Env;
type FogUtpSocket = UtpSocket<TaggedTransport, DefaultEnv>;

/// Streams the peers opened, by the session they named, until their attempt takes them. (The
/// address a stream came from is no key: the peer's route may change under it.)
#[derive(Default)]
struct Arrivals {
    waiting: HashMap<[u8; 16], oneshot::Sender<UtpStream>>,
    arrived: HashMap<[u8; 16], (Instant, UtpStream)>,
}

/// How long an accepted stream may take to name its session.
const NAMING_TIMEOUT: Duration = Duration::from_secs(10);

impl Arrivals {
    fn deliver(&mut self, from: [u8; 16], stream: UtpStream) {
        let now = Instant::now();
        self.arrived
            .retain(|_, (at, _)| now.duration_since(*at) < EARLY_TTL);
        match self.waiting.remove(&from) {
            Some(tx) => {
                let _ = tx.send(stream);
            }
            None if self.arrived.len() < MAX_EARLY_STREAMS => {
                self.arrived.insert(from, (now, stream));
            }
            None => {}
        }
    }
}

/// Stops the uTP socket's tasks when the last clone of the transport goes: they hold the
/// socket, so they would otherwise keep it (and the node's socket) alive.
struct Shutdown {
    cancel: tokio_util::sync::CancellationToken,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for Shutdown {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.accepting.abort();
    }
}

/// The uTP transport service: turns an [`Attempt`] with a selected path into a [`Connection`].
#[derive(Clone)]
pub struct UtpTransport {
    socket: Arc<FogSocket>,
    identity: Identity,
    utp: Arc<FogUtpSocket>,
    arrivals: Arc<Mutex<Arrivals>>,
    _shutdown: Arc<Shutdown>,
}

impl UtpTransport {
    /// A uTP socket on `socket`, presenting `identity`. Must be called inside a tokio runtime.
    pub fn new(socket: Arc<FogSocket>, identity: Identity) -> Result<Self, BoxError> {
        let transport = TaggedTransport {
            datagrams: tokio::sync::Mutex::new(socket.transport_datagrams(UTP_PROTOCOL)),
            socket: socket.clone(),
        };
        let cancel = tokio_util::sync::CancellationToken::new();
        let opts = SocketOpts {
            cancellation_token: cancel.clone(),
            // Datagrams on the shared socket must stay within what its reader takes (QUIC's
            // 1472-byte receive buffers) with fog's two tag bytes, also through a relay: 1280
            // is the IPv6 minimum and leaves room for both.
            link_mtu: std::num::NonZeroUsize::new(1280),
            // The crate's defaults (5 sends of a segment, 10 s without an answer) end a stream
            // after a short run of losses; a lossy path must slow a stream down, not end it. The
            // limits below match QUIC's: about 30 s without hearing from the peer.
            max_retransmissions: std::num::NonZeroUsize::new(UTP_MAX_SENDS_OF_A_SEGMENT),
            remote_inactivity_timeout: Some(UTP_INACTIVITY_TIMEOUT),
            ..SocketOpts::default()
        };
        let utp = FogUtpSocket::new_with_opts(transport, DefaultEnv::default(), opts)?;
        let arrivals = Arc::new(Mutex::new(Arrivals::default()));
        let accepting = utp.clone();
        let delivered = arrivals.clone();
        let accepting = tokio::spawn(async move {
            while let Ok(mut stream) = accepting.accept().await {
                let delivered = delivered.clone();
                // The dialer's first 16 bytes name the session; TLS checks the same name.
                tokio::spawn(async move {
                    let mut session = [0u8; 16];
                    let named =
                        tokio::time::timeout(NAMING_TIMEOUT, stream.read_exact(&mut session)).await;
                    if let Ok(Ok(_)) = named {
                        delivered
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .deliver(session, stream);
                    }
                });
            }
        });
        Ok(UtpTransport {
            socket,
            identity,
            utp,
            arrivals,
            _shutdown: Arc::new(Shutdown { cancel, accepting }),
        })
    }

    /// The stream the peer opens for `session` (or opened a moment ago).
    async fn accepted(&self, session: [u8; 16]) -> Result<UtpStream, ConnectError> {
        let rx = {
            let mut arrivals = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
            let (tx, rx) = oneshot::channel();
            match arrivals.arrived.remove(&session) {
                Some((_, stream)) => {
                    let _ = tx.send(stream);
                }
                None => {
                    arrivals.waiting.insert(session, tx);
                }
            }
            rx
        };
        rx.await.map_err(|_| ConnectError::Shutdown)
    }
}

impl UtpTransport {
    /// A uTP stream to `to`. The crate sends a SYN once and waits for its answer without end,
    /// so a lost SYN would hang the connect: each try waits a little longer, then sends a
    /// new SYN (the peer resends its SYN-ACK itself, so a late answer arrives within these).
    async fn connect(&self, to: SocketAddr) -> Result<UtpStream, librqbit_utp::Error> {
        let mut wait = SYN_WAIT;
        loop {
            if let Ok(connected) = tokio::time::timeout(wait, self.utp.connect(to)).await {
                return connected;
            }
            tracing::debug!(%to, ?wait, "no answer to a uTP SYN; sending another");
            wait *= 2;
        }
    }
}

impl ByteStreamTransport for UtpTransport {
    type Io = UtpStream;
    const PROTOCOL: Protocol = Protocol::Utp;
    const LAYER: &'static str = "UtpTransport";

    fn socket(&self) -> &Arc<FogSocket> {
        &self.socket
    }

    fn identity(&self) -> &Identity {
        &self.identity
    }

    async fn open(&self, attempt: &Attempt, to: SocketAddr) -> Result<Self::Io, ConnectError> {
        let session = attempt.session.id;
        match attempt.role {
            Role::Dialer => {
                let refused =
                    |e: &dyn std::fmt::Display| ConnectError::HandshakeRefused(format!("uTP: {e}"));
                let mut stream = self.connect(to).await.map_err(|e| refused(&e))?;
                stream.write_all(&session).await.map_err(|e| refused(&e))?;
                Ok(stream)
            }
            Role::Responder => self.accepted(session).await,
        }
    }
}

impl Service<Attempt> for UtpTransport {
    type Response = Connection;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Connection, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, attempt: Attempt) -> Self::Future {
        secure_attempt(self.clone(), attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn dropping_the_transport_releases_the_socket() {
        let socket = FogSocket::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let transport = UtpTransport::new(socket.clone(), Identity::generate()).unwrap();
        assert!(Arc::strong_count(&socket) > 1);
        drop(transport);
        tokio::time::timeout(Duration::from_secs(5), async {
            while Arc::strong_count(&socket) > 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the uTP tasks let go of the socket");
    }

    /// Without TLS on top, so that a cut or lost datagram shows as wrong bytes. (uTP has no
    /// checksum: datagrams longer than the socket's reader takes once arrived cut here.)
    #[tokio::test]
    async fn utp_on_the_shared_socket_delivers_bytes_intact() {
        let mut ends = Vec::new();
        for _ in 0..2 {
            let identity = Identity::generate();
            let socket = FogSocket::bind("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            let quic = crate::QuicTransport::new(socket.clone(), identity.clone()).unwrap();
            let utp = UtpTransport::new(socket.clone(), identity).unwrap();
            ends.push((socket, quic, utp));
        }
        let b_addr = ends[1].0.local_addr();
        let b = ends[1].2.clone();
        let session = [7u8; 16];
        let server = tokio::spawn(async move {
            let mut stream = b.accepted(session).await.unwrap();
            let mut got = Vec::new();
            let read = stream.read_to_end(&mut got).await;
            (read.map(|_| ()), got)
        });
        let mut stream = ends[0].2.utp.connect(b_addr).await.unwrap();
        stream.write_all(&session).await.unwrap();
        let data: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        stream.write_all(&data).await.unwrap();
        stream.shutdown().await.unwrap();
        let (read, got) = tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .unwrap()
            .unwrap();
        read.unwrap();
        let first_bad = got.iter().zip(&data).position(|(x, y)| x != y);
        if let Some(at) = first_bad {
            let shift = (0..20000usize).find(|k| got[at..at + 200] == data[at + k..at + k + 200]);
            eprintln!(
                "bad at {at}, got is data shifted by {shift:?}; got len {}",
                got.len()
            );
            let back = (1..20000usize)
                .find(|k| at >= *k && got[at..at + 200] == data[at - k..at - k + 200]);
            eprintln!("or repeated from {back:?} back");
        }
        assert_eq!(first_bad, None);
        assert_eq!(got.len(), data.len());
    }
}
