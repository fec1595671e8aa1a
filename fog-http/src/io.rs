//! One stream to or from a peer, as the IO that hyper, tonic and axum want.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use fog::{BiStream, Connection, PeerId};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Who is on the other end of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's id: its key, verified by the connection's handshake.
    pub peer: PeerId,
    /// The name the peer registered, when it has one.
    pub name: Option<String>,
    /// The peer's address on the path in use when the stream opened.
    pub remote: SocketAddr,
}

impl PeerInfo {
    /// The peer of `conn`.
    pub fn of(conn: &Connection) -> Self {
        PeerInfo {
            peer: conn.peer_id(),
            name: conn.peer_name().map(str::to_string),
            remote: conn.remote_addr(),
        }
    }
}

/// A stream on a fog connection: tokio's `AsyncRead`/`AsyncWrite` and hyper's `Read`/`Write`.
pub struct FogIo {
    io: TokioIo<BiStream>,
    info: PeerInfo,
}

impl FogIo {
    /// `stream`, opened on or accepted from the connection to `info.peer`.
    pub fn new(stream: BiStream, info: PeerInfo) -> Self {
        FogIo {
            io: TokioIo::new(stream),
            info,
        }
    }

    /// Who is on the other end.
    pub fn peer(&self) -> &PeerInfo {
        &self.info
    }
}

impl std::fmt::Debug for FogIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FogIo").field("peer", &self.info).finish()
    }
}

impl hyper::rt::Read for FogIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for FogIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        hyper::rt::Write::poll_write(Pin::new(&mut self.io), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        hyper::rt::Write::poll_flush(Pin::new(&mut self.io), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        hyper::rt::Write::poll_shutdown(Pin::new(&mut self.io), cx)
    }
}

impl AsyncRead for FogIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(self.io.inner_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for FogIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(self.io.inner_mut()).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.io.inner_mut()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.io.inner_mut()).poll_shutdown(cx)
    }
}

impl hyper_util::client::legacy::connect::Connection for FogIo {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

impl tonic::transport::server::Connected for FogIo {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

/// A hyper service that puts the stream's [`PeerInfo`] in every request's extensions, so that
/// handlers find the caller as tonic's and axum's do.
///
/// ```no_run
/// # async fn run(mut listener: fog_http::FogListener) {
/// use hyper::service::service_fn;
/// while let Some(io) = listener.accept().await {
///     let service = fog_http::WithPeer::new(io.peer().clone(), service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
///         let caller = req.extensions().get::<fog_http::PeerInfo>().map(|p| p.peer.to_string());
///         Ok::<_, std::convert::Infallible>(hyper::Response::new(caller.unwrap_or_default()))
///     }));
///     tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct WithPeer<S> {
    info: PeerInfo,
    inner: S,
}

impl<S> WithPeer<S> {
    /// `inner`, with `info` added to each request.
    pub fn new(info: PeerInfo, inner: S) -> Self {
        WithPeer { info, inner }
    }
}

impl<S, B> hyper::service::Service<http::Request<B>> for WithPeer<S>
where
    S: hyper::service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut request: http::Request<B>) -> Self::Future {
        request.extensions_mut().insert(self.info.clone());
        self.inner.call(request)
    }
}
