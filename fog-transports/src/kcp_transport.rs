//! KCP as a fog transport: a KCP session on the node's socket ([`KcpMux`]), TLS with both keys
//! pinned and yamux streams over it ([`mux::secure`](crate::mux::secure)).
//!
//! The session follows the peer's route like QUIC does, so it runs over direct and relayed
//! paths and moves with them. KCP retransmits what a path change lost, so a stream survives
//! the move (after a retransmission timeout).

use std::sync::Arc;
use std::task::{Context, Poll};

use fog_core::{Attempt, BoxError, Connection, Identity, Protocol};
use futures_util::future::BoxFuture;
use tower_service::Service;

use crate::kcp_stream::KcpMux;
use crate::mux::{check_attempt, connect_over};
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

impl Service<Attempt> for KcpTransport {
    type Response = Connection;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Connection, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, attempt: Attempt) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let checked = check_attempt(&attempt, Protocol::Kcp, "KcpTransport", &this.socket)?;
            let stream = this.mux.open(conversation(&attempt), checked.to);
            let io = std::future::ready(Ok(stream));
            let conn = connect_over(
                &attempt,
                Protocol::Kcp,
                checked,
                &this.socket,
                &this.identity,
                io,
            )
            .await?;
            Ok(conn)
        })
    }
}
