//! KCP as a fog transport: a KCP session on the node's socket ([`KcpMux`]), TLS with both keys
//! pinned and yamux streams over it ([`mux::secure`](crate::mux::secure)).
//!
//! The session follows the peer's route like QUIC does, so it runs over direct and relayed
//! paths and moves with them. KCP retransmits what a path change lost, so a stream survives
//! the move (after a retransmission timeout).

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use fog_core::{Attempt, BoxError, ConnectError, Connection, Identity, Protocol};
use futures_util::future::BoxFuture;
use tower_service::Service;

use crate::kcp_stream::KcpMux;
use crate::mux::{secure_attempt, ByteStreamTransport};
use crate::socket::FogSocket;

/// The KCP transport service: turns an [`Attempt`] with a selected path into a [`Connection`].
#[derive(Clone)]
pub struct KcpTransport {
    socket: Arc<FogSocket>,
    identity: Identity,
    mux: KcpMux,
}

impl KcpTransport {
    /// KCP sessions on `socket`, presenting `identity`. Must be called inside a tokio runtime.
    pub fn new(socket: Arc<FogSocket>, identity: Identity) -> Self {
        KcpTransport {
            mux: KcpMux::new(socket.clone()),
            socket,
            identity,
        }
    }
}

/// The KCP conversation of an attempt: both peers derive it from the session id.
pub fn conversation(attempt: &Attempt) -> u32 {
    let id = attempt.session.id;
    u32::from_le_bytes([id[0], id[1], id[2], id[3]])
}

impl ByteStreamTransport for KcpTransport {
    type Io = tokio::io::DuplexStream;
    const PROTOCOL: Protocol = Protocol::Kcp;
    const LAYER: &'static str = "KcpTransport";

    fn socket(&self) -> &Arc<FogSocket> {
        &self.socket
    }

    fn identity(&self) -> &Identity {
        &self.identity
    }

    async fn open(&self, attempt: &Attempt, to: SocketAddr) -> Result<Self::Io, ConnectError> {
        Ok(self.mux.open(conversation(attempt), to))
    }
}

impl Service<Attempt> for KcpTransport {
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
