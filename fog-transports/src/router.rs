//! [`ProtocolRouter`]: the transport at the bottom of a stack that carries several protocols.

use std::task::{Context, Poll};

use fog_core::{Attempt, BoxError, ConnectError, Connection, Protocol};
use futures_util::future::BoxFuture;
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;
use tower_service::Service;

type Transport = BoxCloneSyncService<Attempt, Connection, BoxError>;

/// Hands each attempt to the transport of the protocol `ProtocolSelectLayer` negotiated (the
/// first one when none was).
///
/// ```no_run
/// # async fn demo() -> Result<(), fog_core::BoxError> {
/// use fog_core::{Identity, Protocol};
/// use fog_transports::{FogSocket, KcpTransport, ProtocolRouter, QuicTransport};
///
/// let socket = FogSocket::bind("0.0.0.0:0".parse()?).await?;
/// let identity = Identity::generate();
/// let transports = ProtocolRouter::new()
///     .route(Protocol::Quic, QuicTransport::new(socket.clone(), identity.clone())?)
///     .route(Protocol::Kcp, KcpTransport::new(socket, identity));
/// assert_eq!(transports.protocols(), [Protocol::Quic, Protocol::Kcp]);
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct ProtocolRouter {
    routes: Vec<(Protocol, Transport)>,
}

impl ProtocolRouter {
    /// No transport yet.
    pub fn new() -> Self {
        ProtocolRouter::default()
    }

    /// Carries `protocol` with `transport` (replacing an earlier one for it).
    pub fn route<S>(mut self, protocol: Protocol, transport: S) -> Self
    where
        S: Service<Attempt, Response = Connection, Error = BoxError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes.retain(|(p, _)| *p != protocol);
        self.routes
            .push((protocol, BoxCloneSyncService::new(transport)));
        self
    }

    /// The protocols it carries, in the order they were added.
    pub fn protocols(&self) -> Vec<Protocol> {
        self.routes.iter().map(|(p, _)| *p).collect()
    }
}

impl Service<Attempt> for ProtocolRouter {
    type Response = Connection;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Connection, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, attempt: Attempt) -> Self::Future {
        let wanted = attempt
            .protocol
            .or_else(|| self.routes.first().map(|(p, _)| *p));
        let transport = self
            .routes
            .iter()
            .find(|(p, _)| Some(*p) == wanted)
            .map(|(_, t)| t.clone());
        let Some(transport) = transport else {
            let refused = ConnectError::NoCommonProtocol {
                ours: self
                    .routes
                    .iter()
                    .map(|(p, _)| p.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                theirs: wanted.map_or("none".into(), |p| p.to_string()),
            };
            return Box::pin(std::future::ready(Err(refused.into())));
        };
        Box::pin(transport.oneshot(attempt))
    }
}
