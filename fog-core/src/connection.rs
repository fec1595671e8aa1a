//! An established, authenticated, encrypted connection to a peer, whatever its transport.

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::attempt::{Attempt, CandidateKind, PathKind, Protocol, Strategy};
use crate::event::{Event, EventBus};
use crate::identity::PeerId;

/// The sending half of a stream.
pub type SendHalf = Box<dyn AsyncWrite + Send + Unpin>;
/// The receiving half of a stream.
pub type RecvHalf = Box<dyn AsyncRead + Send + Unpin>;

/// Errors of an established connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The connection is closed (by either side, or it timed out).
    #[error("connection closed: {0}")]
    Closed(String),
    /// Stream-level failure.
    #[error("stream error: {0}")]
    Stream(String),
    /// The transport does not offer this.
    #[error("not supported by {protocol}: {what}")]
    Unsupported {
        /// The connection's protocol.
        protocol: &'static str,
        /// What was asked for.
        what: &'static str,
    },
    /// A datagram larger than the path takes now.
    #[error("a datagram of {size} bytes; the path takes at most {max}")]
    TooLarge {
        /// The datagram's size.
        size: usize,
        /// The largest the connection takes now.
        max: usize,
    },
}

/// Byte counters a transport keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportCounters {
    /// Bytes sent on the wire.
    pub bytes_sent: u64,
    /// Bytes received from the wire.
    pub bytes_received: u64,
    /// Current smoothed round trip, when the transport measures one.
    pub rtt: Option<Duration>,
}

/// What a transport implements to become a [`Connection`].
pub trait TransportConnection: Send + Sync + 'static {
    /// Opens a new bidirectional stream.
    fn open_bi(&self) -> BoxFuture<'_, Result<(SendHalf, RecvHalf), ConnectionError>>;
    /// Waits for the peer to open a bidirectional stream.
    fn accept_bi(&self) -> BoxFuture<'_, Result<(SendHalf, RecvHalf), ConnectionError>>;
    /// Byte counters.
    fn counters(&self) -> TransportCounters;
    /// The peer's current address.
    fn remote_addr(&self) -> SocketAddr;
    /// The local address.
    fn local_addr(&self) -> SocketAddr;
    /// Closes the connection, telling the peer why.
    fn close(&self, reason: &str);
    /// Resolves when the connection has ended, with the reason.
    fn closed(&self) -> BoxFuture<'_, String>;
    /// The relay the connection goes through now (ours, or the peer's relayed address).
    fn relay_addr(&self) -> Option<SocketAddr> {
        None
    }
    /// Sends an unreliable datagram, encrypted like the streams.
    fn send_datagram(&self, _datagram: &[u8]) -> Result<(), ConnectionError> {
        Err(ConnectionError::Unsupported {
            protocol: "this transport",
            what: "datagrams",
        })
    }
    /// Waits for the peer's next datagram.
    fn recv_datagram(&self) -> BoxFuture<'_, Result<Vec<u8>, ConnectionError>> {
        Box::pin(async {
            Err(ConnectionError::Unsupported {
                protocol: "this transport",
                what: "datagrams",
            })
        })
    }
    /// The largest datagram the connection takes now, or `None` without datagrams.
    fn max_datagram_size(&self) -> Option<usize> {
        None
    }
}

/// Connection statistics, including the upload and download speed the original FogConnect
/// reported (`fc_get_uploadspeed` / `fc_get_downloadspeed`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ConnectionStats {
    /// Bytes sent on the wire (including transport overhead).
    pub bytes_sent: u64,
    /// Bytes received from the wire.
    pub bytes_received: u64,
    /// Bytes per second sent, over the window since the previous sample (at least 250 ms).
    pub upload_bps: f64,
    /// Bytes per second received, over the same window.
    pub download_bps: f64,
    /// Smoothed round trip, when known.
    pub rtt: Option<Duration>,
}

#[derive(Debug)]
struct RateSample {
    at: Instant,
    sent: u64,
    received: u64,
    upload_bps: f64,
    download_bps: f64,
}

const MIN_RATE_WINDOW: Duration = Duration::from_millis(250);

/// What is known about a connection from the attempt that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The peer's key, checked during the transport handshake.
    pub peer: PeerId,
    /// The name the peer registered at the signal server.
    pub peer_name: Option<String>,
    /// The transport protocol.
    pub protocol: Protocol,
    /// Direct or relayed.
    pub path: PathKind,
    /// The kind of the remote candidate the path goes to.
    pub candidate: CandidateKind,
    /// The plan that was used, when a strategy layer chose one.
    pub strategy: Option<Strategy>,
    /// Connectivity checks sent.
    pub probes: u32,
    /// From the connect request to the established connection.
    pub connect_time: Duration,
}

impl ConnectionInfo {
    /// The info of a connection that `attempt` made over `protocol`.
    pub fn from_attempt(attempt: &Attempt, peer: PeerId, protocol: Protocol) -> Self {
        ConnectionInfo {
            peer,
            peer_name: attempt.remote.as_ref().and_then(|r| r.name.clone()),
            protocol,
            path: attempt.path.map_or(PathKind::Direct, |p| p.kind),
            candidate: attempt.path.map_or(CandidateKind::Host, |p| p.remote.kind),
            strategy: attempt.strategy,
            probes: attempt.probes_sent,
            connect_time: attempt.elapsed(),
        }
    }
}

struct Inner {
    disconnected: std::sync::atomic::AtomicBool,
    transport: Box<dyn TransportConnection>,
    info: ConnectionInfo,
    events: EventBus,
    rate: Mutex<RateSample>,
}

/// An authenticated, encrypted connection to a peer. Cheap to clone; closed when
/// [`close`](Connection::close) is called or the peer goes away.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.inner.info.peer)
            .field("protocol", &self.inner.info.protocol)
            .field("path", &self.inner.info.path)
            .field("remote", &self.remote_addr())
            .finish()
    }
}

impl Inner {
    /// Reports the end of the connection, once.
    fn report_disconnected(&self, reason: &str) {
        if !self
            .disconnected
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            self.events.emit(Event::Disconnected {
                peer: self.info.peer,
                reason: reason.to_string(),
            });
        }
    }

    /// Passes `result` through, reporting a closed connection as `Disconnected`.
    fn observe<T>(&self, result: Result<T, ConnectionError>) -> Result<T, ConnectionError> {
        if let Err(ConnectionError::Closed(reason)) = &result {
            self.report_disconnected(reason);
        }
        result
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.transport.close("connection dropped");
        self.report_disconnected("connection dropped");
    }
}

impl Connection {
    /// Wraps a transport connection whose remote key was checked to be `info.peer`.
    pub fn new(
        transport: Box<dyn TransportConnection>,
        info: ConnectionInfo,
        events: EventBus,
    ) -> Self {
        let counters = transport.counters();
        Connection {
            inner: Arc::new(Inner {
                disconnected: std::sync::atomic::AtomicBool::new(false),
                transport,
                info,
                events,
                rate: Mutex::new(RateSample {
                    at: Instant::now(),
                    sent: counters.bytes_sent,
                    received: counters.bytes_received,
                    upload_bps: 0.0,
                    download_bps: 0.0,
                }),
            }),
        }
    }

    /// Everything known about how the connection was made.
    pub fn info(&self) -> &ConnectionInfo {
        &self.inner.info
    }

    /// The peer's id, checked during the transport handshake.
    pub fn peer_id(&self) -> PeerId {
        self.inner.info.peer
    }

    /// The name the peer registered at the signal server, when it has one.
    pub fn peer_name(&self) -> Option<&str> {
        self.inner.info.peer_name.as_deref()
    }

    /// The transport protocol (the original's `fc_get_connect_protocol`).
    pub fn protocol(&self) -> Protocol {
        self.inner.info.protocol
    }

    /// Direct or relayed, now (a relayed connection moves to a direct path when one is found).
    pub fn path_kind(&self) -> PathKind {
        if self.relay_addr().is_some() {
            PathKind::Relay
        } else {
            PathKind::Direct
        }
    }

    /// Waits up to `limit` for the connection to be on a direct path; true when it is (at once
    /// when it already was). A connection that started on a relay moves to a direct pair as
    /// soon as one answers its checks.
    pub async fn wait_direct(&self, limit: Duration) -> bool {
        use tokio::sync::broadcast::error::RecvError;
        // Subscribe before looking, so that a move between the two is not missed.
        let mut events = self.inner.events.subscribe();
        let moved = async {
            while self.path_kind() != PathKind::Direct {
                if let Err(RecvError::Closed) = events.recv().await {
                    // No more events: the path can no longer change.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(limit, moved).await.is_ok()
    }

    /// The relay the connection goes through now: ours, or the peer's (whose relayed address
    /// we send to); `None` on a direct path.
    pub fn relay_addr(&self) -> Option<SocketAddr> {
        self.inner.transport.relay_addr()
    }

    /// Time from the connect request to the established connection.
    pub fn connect_time(&self) -> Duration {
        self.inner.info.connect_time
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.inner.transport.remote_addr()
    }

    /// The local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.transport.local_addr()
    }

    /// Opens a bidirectional stream to the peer.
    pub async fn open_bi(&self) -> Result<(SendHalf, RecvHalf), ConnectionError> {
        let stream = self.inner.observe(self.inner.transport.open_bi().await)?;
        self.inner.events.emit(Event::StreamOpened {
            peer: self.inner.info.peer,
        });
        Ok(stream)
    }

    /// Waits for the peer to open a bidirectional stream.
    pub async fn accept_bi(&self) -> Result<(SendHalf, RecvHalf), ConnectionError> {
        self.inner.observe(self.inner.transport.accept_bi().await)
    }

    /// Sends an unreliable, unordered datagram to the peer, encrypted and authenticated like
    /// the streams (QUIC datagrams, RFC 9221). It may be lost; it is never delivered twice or
    /// altered. Fails at once when it is larger than [`max_datagram_size`](Self::max_datagram_size)
    /// or the protocol has no datagrams.
    pub fn send_datagram(&self, datagram: &[u8]) -> Result<(), ConnectionError> {
        self.inner.transport.send_datagram(datagram)
    }

    /// Waits for the peer's next datagram.
    pub async fn recv_datagram(&self) -> Result<Vec<u8>, ConnectionError> {
        self.inner.transport.recv_datagram().await
    }

    /// The largest datagram [`send_datagram`](Self::send_datagram) takes now (it depends on
    /// the path), or `None` when the protocol has no datagrams.
    pub fn max_datagram_size(&self) -> Option<usize> {
        self.inner.transport.max_datagram_size()
    }

    /// Byte counts and current speeds.
    pub fn stats(&self) -> ConnectionStats {
        let counters = self.inner.transport.counters();
        let mut rate = self.inner.rate.lock().unwrap_or_else(|e| e.into_inner());
        let window = rate.at.elapsed();
        if window >= MIN_RATE_WINDOW {
            let secs = window.as_secs_f64();
            rate.upload_bps = counters.bytes_sent.saturating_sub(rate.sent) as f64 / secs;
            rate.download_bps = counters.bytes_received.saturating_sub(rate.received) as f64 / secs;
            rate.at = Instant::now();
            rate.sent = counters.bytes_sent;
            rate.received = counters.bytes_received;
        }
        ConnectionStats {
            bytes_sent: counters.bytes_sent,
            bytes_received: counters.bytes_received,
            upload_bps: rate.upload_bps,
            download_bps: rate.download_bps,
            rtt: counters.rtt,
        }
    }

    /// Closes the connection.
    pub fn close(&self, reason: &str) {
        self.inner.transport.close(reason);
    }

    /// Waits until the connection has ended. The end is reported once as a `Disconnected` event:
    /// here, when a stream call finds the connection closed, or when the last handle is dropped.
    pub async fn closed(&self) -> String {
        let reason = self.inner.transport.closed().await;
        self.inner.report_disconnected(&reason);
        reason
    }
}

/// A bidirectional stream as one value that is both `AsyncRead` and `AsyncWrite`, for APIs that
/// want a single IO object.
pub struct BiStream {
    /// Where writes go.
    pub send: SendHalf,
    /// Where reads come from.
    pub recv: RecvHalf,
}

impl std::fmt::Debug for BiStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BiStream").finish_non_exhaustive()
    }
}

impl AsyncRead for BiStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for BiStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.send).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}
