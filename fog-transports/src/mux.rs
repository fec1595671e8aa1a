//! An authenticated, encrypted, multiplexed connection over any reliable byte stream: TLS 1.3
//! with both node keys pinned, exactly as QUIC's handshake does, then yamux for many streams.
//! The transports that give one byte stream (KCP, …) become fog connections through it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use fog_core::{
    Attempt, ConnectError, Connection, ConnectionError, Identity, PeerId, Protocol, RecvHalf, Role,
    SelectedPath, SendHalf, TransportConnection, TransportCounters,
};
use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use crate::socket::FogSocket;
use crate::tls;

/// How long a byte-stream transport's own handshake and TLS over it may take.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Bytes in and out of a stream, for [`TransportCounters`].
#[derive(Default)]
pub(crate) struct Counts {
    sent: AtomicU64,
    received: AtomicU64,
}

impl Counts {
    /// The counts so far (these transports measure no round trip of their own).
    pub(crate) fn counters(&self) -> TransportCounters {
        TransportCounters {
            bytes_sent: self.sent.load(Ordering::Relaxed),
            bytes_received: self.received.load(Ordering::Relaxed),
            rtt: None,
        }
    }
}

/// A byte stream that counts what passes.
pub(crate) struct Counted<T> {
    pub(crate) io: T,
    pub(crate) counts: Arc<Counts>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.counts.received.fetch_add(n as u64, Ordering::Relaxed);
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.counts.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Which end of the TLS handshake this side is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Opens the handshake, naming the session and pinning the peer's key.
    Client,
    /// Answers it; the client's key must be the expected peer's.
    Server,
}

/// Where the connection runs, for the connection's address accessors.
pub trait PathInfo: Send + Sync + 'static {
    /// The peer's address on the path in use now.
    fn remote_addr(&self) -> SocketAddr;
    /// The relay the path goes through, if it does.
    fn relay_addr(&self) -> Option<SocketAddr>;
}

/// Who shakes hands with whom.
pub struct Handshake<'a> {
    /// This side's end of it.
    pub side: Side,
    /// This node's key.
    pub identity: &'a Identity,
    /// The only key accepted on the other end.
    pub peer: PeerId,
    /// The attempt's session id (hex), named in the TLS server name as QUIC does.
    pub session: &'a str,
}

/// What the connection reports and keeps.
pub struct Carried {
    /// The local address of the path.
    pub local: SocketAddr,
    /// Where the path runs now.
    pub path: Box<dyn PathInfo>,
    /// What must live as long as the connection (relay allocations, the path watch).
    pub keep: Box<dyn std::any::Any + Send + Sync>,
}

/// The path of a connection on the node's socket: wherever the peer's stand-in points now.
pub(crate) struct RoutedPath {
    pub(crate) socket: Arc<FogSocket>,
    pub(crate) to: SocketAddr,
}

impl PathInfo for RoutedPath {
    fn remote_addr(&self) -> SocketAddr {
        self.socket.peer_behind(self.to).0
    }

    fn relay_addr(&self) -> Option<SocketAddr> {
        self.socket.peer_behind(self.to).1
    }
}

/// What a byte-stream transport takes from an attempt, checked.
pub(crate) struct Checked {
    pub(crate) path: SelectedPath,
    pub(crate) peer: PeerId,
    /// Where the peer is reached: its route's stand-in, or the path's address.
    pub(crate) to: SocketAddr,
}

/// Checks that `attempt` is one `protocol`'s transport (`layer`) on `socket` can carry.
pub(crate) fn check_attempt(
    attempt: &Attempt,
    protocol: Protocol,
    layer: &'static str,
    socket: &FogSocket,
) -> Result<Checked, ConnectError> {
    let (path, peer) = crate::path_and_peer(attempt, protocol, layer)?;
    if attempt.path_socket.is_some() {
        return Err(ConnectError::NoPath(format!(
            "{protocol} runs on the node's socket, and this path was found by birthday spraying \
             on another one: use QUIC for this pair"
        )));
    }
    let to = socket.route_of(&peer).unwrap_or(path.remote.addr);
    Ok(Checked { path, peer, to })
}

/// What a byte-stream transport adds to the shared setup: its protocol, and how it opens the
/// attempt's byte stream to the peer at `to`. [`secure_attempt`] does the rest.
pub(crate) trait ByteStreamTransport: Clone + Send + Sync + 'static {
    /// The byte stream.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The protocol it carries.
    const PROTOCOL: Protocol;
    /// The transport's name, for errors about missing input.
    const LAYER: &'static str;
    /// The node's socket it runs on.
    fn socket(&self) -> &Arc<FogSocket>;
    /// The node's key.
    fn identity(&self) -> &Identity;
    /// The attempt's byte stream, once the protocol's own handshake is done.
    fn open(
        &self,
        attempt: &Attempt,
        to: SocketAddr,
    ) -> impl Future<Output = Result<Self::Io, ConnectError>> + Send;
}

/// A byte-stream transport's `Service::call`: checks the attempt, opens the stream and secures
/// it ([`connect_over`]).
pub(crate) fn secure_attempt<T: ByteStreamTransport>(
    transport: T,
    attempt: Attempt,
) -> BoxFuture<'static, Result<Connection, fog_core::BoxError>> {
    Box::pin(async move {
        let checked = check_attempt(&attempt, T::PROTOCOL, T::LAYER, transport.socket())?;
        let io = transport.open(&attempt, checked.to);
        let conn = connect_over(
            &attempt,
            T::PROTOCOL,
            checked,
            transport.socket(),
            transport.identity(),
            io,
        )
        .await?;
        Ok(conn)
    })
}

/// Waits for `io` (the protocol's own handshake), secures it ([`secure`]) within
/// [`HANDSHAKE_TIMEOUT`], and makes the attempt's connection.
async fn connect_over<T, F>(
    attempt: &Attempt,
    protocol: Protocol,
    checked: Checked,
    socket: &Arc<FogSocket>,
    identity: &Identity,
    io: F,
) -> Result<Connection, ConnectError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Future<Output = Result<T, ConnectError>>,
{
    let Checked { path, peer, to } = checked;
    let side = match attempt.role {
        Role::Dialer => Side::Client,
        Role::Responder => Side::Server,
    };
    let session = attempt.session.id_hex();
    let work = async {
        let io = io.await?;
        secure(
            io,
            Handshake {
                side,
                identity,
                peer,
                session: &session,
            },
            Carried {
                local: path.local,
                path: Box::new(RoutedPath {
                    socket: socket.clone(),
                    to,
                }),
                keep: Box::new((attempt.relays.clone(), attempt.lifeline.clone())),
            },
        )
        .await
    };
    let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, work)
        .await
        .map_err(|_| ConnectError::Timeout(format!("the {protocol} and TLS handshakes")))??;
    Ok(crate::connected(
        attempt,
        peer,
        path.kind,
        Box::new(conn),
        protocol,
    ))
}

/// TLS over `io`, accepting only the handshake's peer; then yamux.
pub async fn secure<T>(
    io: T,
    handshake: Handshake<'_>,
    carried: Carried,
) -> Result<MuxConnection, ConnectError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Handshake {
        side,
        identity,
        peer,
        session,
    } = handshake;
    let Carried { local, path, keep } = carried;
    let counts = Arc::new(Counts::default());
    let io = Counted {
        io,
        counts: counts.clone(),
    };
    let refused = |e: &dyn std::fmt::Display| ConnectError::HandshakeRefused(e.to_string());
    let (conn, mode) = match side {
        Side::Client => {
            let config = tls::client_config(identity, peer).map_err(|e| refused(&e))?;
            let name = rustls::pki_types::ServerName::try_from(format!("s{session}"))
                .map_err(|e| refused(&e))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, io)
                .await
                .map_err(|e| refused(&e))?;
            (tokio_rustls::TlsStream::Client(stream), yamux::Mode::Client)
        }
        Side::Server => {
            let config = tls::server_config(identity).map_err(|e| refused(&e))?;
            let stream = tokio_rustls::TlsAcceptor::from(Arc::new(config))
                .accept(io)
                .await
                .map_err(|e| refused(&e))?;
            // The dialer names the attempt's session, as in QUIC: a stream of another attempt
            // (the same peer dialling twice at once) is not taken for this one.
            let named = stream.get_ref().1.server_name().map(str::to_string);
            if named.as_deref() != Some(format!("s{session}").as_str()) {
                return Err(ConnectError::HandshakeRefused(format!(
                    "the dialer named session {named:?}, not this attempt's"
                )));
            }
            let presented = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|cert| tls::peer_id_of_certificate(cert.as_ref()));
            match presented {
                Some(id) if id == peer => {}
                Some(id) => {
                    return Err(ConnectError::HandshakeRefused(format!(
                        "the dialer presented key {id}, but the offer came from {peer}"
                    )))
                }
                None => {
                    return Err(ConnectError::HandshakeRefused(
                        "the dialer presented no Ed25519 key".into(),
                    ))
                }
            }
            (tokio_rustls::TlsStream::Server(stream), yamux::Mode::Server)
        }
    };
    let (open_tx, open_rx) = mpsc::channel(16);
    let (inbound_tx, inbound_rx) = mpsc::channel(64);
    let (closed_tx, closed_rx) = watch::channel(None);
    let (close_tx, close_rx) = oneshot::channel();
    let connection = yamux::Connection::new(conn.compat(), yamux::Config::default(), mode);
    tokio::spawn(drive(connection, open_rx, inbound_tx, close_rx, closed_tx));
    Ok(MuxConnection {
        open: open_tx,
        inbound: tokio::sync::Mutex::new(inbound_rx),
        close: std::sync::Mutex::new(Some(close_tx)),
        closed: closed_rx,
        counts,
        local,
        path,
        _keep: keep,
    })
}

type OpenReply = oneshot::Sender<Result<yamux::Stream, String>>;

/// Runs the yamux connection: opens streams on request, hands out the peer's, closes on
/// request; tells `closed` why it ended.
async fn drive<T>(
    mut connection: yamux::Connection<T>,
    mut open: mpsc::Receiver<OpenReply>,
    inbound: mpsc::Sender<yamux::Stream>,
    mut close: oneshot::Receiver<String>,
    closed: watch::Sender<Option<String>>,
) where
    T: futures_util::AsyncRead + futures_util::AsyncWrite + Unpin,
{
    let mut waiting: std::collections::VecDeque<OpenReply> = Default::default();
    let reason = std::future::poll_fn(|cx| loop {
        if let Poll::Ready(reason) = Pin::new(&mut close).poll(cx) {
            let reason = reason.unwrap_or_else(|_| "connection dropped".into());
            return Poll::Ready(Some(reason));
        }
        let mut progress = false;
        while let Poll::Ready(Some(reply)) = open.poll_recv(cx) {
            waiting.push_back(reply);
        }
        if !waiting.is_empty() {
            match connection.poll_new_outbound(cx) {
                Poll::Ready(Ok(stream)) => {
                    let _ = waiting.pop_front().expect("waiting").send(Ok(stream));
                    progress = true;
                }
                Poll::Ready(Err(e)) => {
                    for reply in waiting.drain(..) {
                        let _ = reply.send(Err(e.to_string()));
                    }
                    return Poll::Ready(Some(e.to_string()));
                }
                Poll::Pending => {}
            }
        }
        match connection.poll_next_inbound(cx) {
            Poll::Ready(Some(Ok(stream))) => {
                // A full queue means nobody accepts: the stream is dropped (reset).
                let _ = inbound.try_send(stream);
                progress = true;
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(e.to_string())),
            Poll::Ready(None) => return Poll::Ready(Some("closed by the peer".to_string())),
            Poll::Pending => {}
        }
        if !progress {
            return Poll::Pending;
        }
    })
    .await;
    if reason.as_deref() != Some("closed by the peer") {
        let _ = std::future::poll_fn(|cx| connection.poll_close(cx)).await;
    }
    for reply in waiting.drain(..) {
        let _ = reply.send(Err("connection closed".into()));
    }
    let _ = closed.send(Some(reason.unwrap_or_default()));
}

/// A connection made by [`secure`].
pub struct MuxConnection {
    open: mpsc::Sender<OpenReply>,
    inbound: tokio::sync::Mutex<mpsc::Receiver<yamux::Stream>>,
    close: std::sync::Mutex<Option<oneshot::Sender<String>>>,
    closed: watch::Receiver<Option<String>>,
    counts: Arc<Counts>,
    local: SocketAddr,
    path: Box<dyn PathInfo>,
    /// What must live as long as the connection (relay allocations, the path watch).
    _keep: Box<dyn std::any::Any + Send + Sync>,
}

impl MuxConnection {
    fn reason(&self) -> String {
        self.closed
            .borrow()
            .clone()
            .unwrap_or_else(|| "connection closed".into())
    }
}

fn halves(stream: yamux::Stream) -> (SendHalf, RecvHalf) {
    let (recv, send) = tokio::io::split(stream.compat());
    (Box::new(send), Box::new(recv))
}

impl TransportConnection for MuxConnection {
    fn open_bi(&self) -> BoxFuture<'_, Result<(SendHalf, RecvHalf), ConnectionError>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.open
                .send(tx)
                .await
                .map_err(|_| ConnectionError::Closed(self.reason()))?;
            match rx.await {
                Ok(Ok(stream)) => Ok(halves(stream)),
                Ok(Err(e)) => Err(ConnectionError::Closed(e)),
                Err(_) => Err(ConnectionError::Closed(self.reason())),
            }
        })
    }

    fn accept_bi(&self) -> BoxFuture<'_, Result<(SendHalf, RecvHalf), ConnectionError>> {
        Box::pin(async move {
            match self.inbound.lock().await.recv().await {
                Some(stream) => Ok(halves(stream)),
                None => Err(ConnectionError::Closed(self.reason())),
            }
        })
    }

    fn counters(&self) -> TransportCounters {
        self.counts.counters()
    }

    fn remote_addr(&self) -> SocketAddr {
        self.path.remote_addr()
    }

    fn relay_addr(&self) -> Option<SocketAddr> {
        self.path.relay_addr()
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn close(&self, reason: &str) {
        if let Some(tx) = self.close.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(reason.to_string());
        }
    }

    fn closed(&self) -> BoxFuture<'_, String> {
        let mut closed = self.closed.clone();
        Box::pin(async move {
            match closed.wait_for(|reason| reason.is_some()).await {
                Ok(reason) => reason.clone().unwrap_or_default(),
                Err(_) => "connection closed".into(),
            }
        })
    }
}

impl Drop for MuxConnection {
    fn drop(&mut self) {
        self.close("connection dropped");
    }
}
