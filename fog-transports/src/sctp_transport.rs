//! SCTP as a fog transport: an SCTP association on the node's socket ([`SctpMux`]), TLS with
//! both keys pinned and yamux streams over its stream 0 ([`mux::secure`](crate::mux::secure)).
//!
//! SCTP itself neither encrypts nor authenticates (WebRTC puts it under DTLS), so fog runs the
//! same pinned TLS as over KCP and uTP. The association follows the peer's route like QUIC
//! does, so it runs over direct and relayed paths and moves with them; SCTP retransmits what a
//! path change lost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use fog_core::{Attempt, BoxError, ConnectError, Connection, Identity, Protocol, Role};
use futures_util::future::BoxFuture;
use tower_service::Service;

use crate::mux::{secure_attempt, ByteStreamTransport};
use crate::sctp_stream::{SctpMux, SctpPorts};
use crate::socket::FogSocket;

/// The SCTP transport service: turns an [`Attempt`] with a selected path into a [`Connection`].
#[derive(Clone)]
pub struct SctpTransport {
    socket: Arc<FogSocket>,
    identity: Identity,
    mux: SctpMux,
}

impl SctpTransport {
    /// SCTP associations on `socket`, presenting `identity`. Must be called inside a tokio
    /// runtime.
    pub fn new(socket: Arc<FogSocket>, identity: Identity) -> Self {
        SctpTransport {
            mux: SctpMux::new(socket.clone()),
            socket,
            identity,
        }
    }
}

impl ByteStreamTransport for SctpTransport {
    type Io = tokio::io::DuplexStream;
    const PROTOCOL: Protocol = Protocol::Sctp;
    const LAYER: &'static str = "SctpTransport";

    fn socket(&self) -> &Arc<FogSocket> {
        &self.socket
    }

    fn identity(&self) -> &Identity {
        &self.identity
    }

    async fn open(&self, attempt: &Attempt, to: SocketAddr) -> Result<Self::Io, ConnectError> {
        let ports = SctpPorts::from_session(&attempt.session.id);
        self.mux
            .open(ports, to, attempt.role == Role::Dialer)
            .await
            .map_err(|reason| ConnectError::HandshakeRefused(format!("SCTP: {reason}")))
    }
}

impl Service<Attempt> for SctpTransport {
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
