//! KCP as a fog transport: a KCP session on the node's socket ([`KcpMux`]), TLS with both keys
//! pinned and yamux streams over it ([`mux::secure`](crate::mux::secure)).
//!
//! The session follows the peer's route like QUIC does, so it runs over direct and relayed
//! paths and moves with them. KCP retransmits what a path change lost, so a stream survives
//! the move (after a retransmission timeout).

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use fog_core::{
    Attempt, BoxError, ConnectError, Connection, ConnectionInfo, Event, Identity, Protocol, Role,
};
use futures_util::future::BoxFuture;
use tower_service::Service;

use crate::kcp_stream::KcpMux;
use crate::mux::{secure, Carried, Handshake, PathInfo, Side};
use crate::socket::FogSocket;

/// How long the TLS handshake over KCP may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The path of a session: whatever the peer's stand-in points at now.
struct RoutedPath {
    socket: Arc<FogSocket>,
    to: SocketAddr,
}

impl PathInfo for RoutedPath {
    fn remote_addr(&self) -> SocketAddr {
        self.socket.peer_behind(self.to).0
    }

    fn relay_addr(&self) -> Option<SocketAddr> {
        self.socket.peer_behind(self.to).1
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
            let path = attempt.path.ok_or(ConnectError::MissingInput {
                layer: "KcpTransport",
                needs: "a selected path (PunchLayer or a relay layer)",
            })?;
            let peer = attempt.remote_peer().ok_or(ConnectError::MissingInput {
                layer: "KcpTransport",
                needs: "the remote peer id (SignalLayer resolves names)",
            })?;
            if attempt.protocol.is_some_and(|p| p != Protocol::Kcp) {
                return Err(ConnectError::NoCommonProtocol {
                    ours: "kcp".into(),
                    theirs: attempt.protocol.map(|p| p.to_string()).unwrap_or_default(),
                }
                .into());
            }
            if attempt.path_socket.is_some() {
                return Err(ConnectError::NoPath(
                    "KCP runs on the node's socket, and this path was found by birthday \
                     spraying on another one: use QUIC for this pair"
                        .into(),
                )
                .into());
            }
            let to = this.socket.route_of(&peer).unwrap_or(path.remote.addr);
            let stream = this.mux.open(conversation(&attempt), to);
            let side = match attempt.role {
                Role::Dialer => Side::Client,
                Role::Responder => Side::Server,
            };
            let keep = Box::new((attempt.relays.clone(), attempt.lifeline.clone()));
            let conn = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                secure(
                    stream,
                    Handshake {
                        side,
                        identity: &this.identity,
                        peer,
                        session: &attempt.session.id_hex(),
                    },
                    Carried {
                        local: path.local,
                        path: Box::new(RoutedPath {
                            socket: this.socket.clone(),
                            to,
                        }),
                        keep,
                    },
                ),
            )
            .await
            .map_err(|_| ConnectError::Timeout("the TLS handshake over KCP".into()))??;
            let connection = Connection::new(
                Box::new(conn),
                ConnectionInfo::from_attempt(&attempt, peer, Protocol::Kcp),
                attempt.events.clone(),
            );
            attempt.emit(Event::Connected {
                peer,
                remote: connection.remote_addr(),
                protocol: Protocol::Kcp,
                path: path.kind,
                elapsed: attempt.elapsed(),
            });
            Ok(connection)
        })
    }
}
