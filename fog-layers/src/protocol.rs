//! `ProtocolSelectLayer`: agrees on the transport protocol with the peer.

use std::task::{Context, Poll};

use fog_core::{Attempt, BoxError, ConnectError, Connection, Event, Protocol, Role};
use tower::{Service, ServiceExt};
use tower_layer::Layer;

use crate::future::{take_inner, ResponseFuture};

/// The protocol both sides pick: the dialer's most preferred protocol that the responder accepts.
/// Both sides compute it from the same two lists, so they agree without another message.
pub fn negotiate(dialer: &[Protocol], responder: &[Protocol]) -> Result<Protocol, ConnectError> {
    dialer
        .iter()
        .copied()
        .find(|p| responder.contains(p))
        .ok_or_else(|| ConnectError::NoCommonProtocol {
            ours: join(dialer),
            theirs: join(responder),
        })
}

fn join(protocols: &[Protocol]) -> String {
    if protocols.is_empty() {
        return "none".into();
    }
    protocols
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Chooses the protocol for the attempt, among those the transports below support.
#[derive(Clone, Debug)]
pub struct ProtocolSelectLayer {
    supported: Vec<Protocol>,
}

impl ProtocolSelectLayer {
    /// A layer over transports that can carry `supported`.
    pub fn new(supported: impl IntoIterator<Item = Protocol>) -> Self {
        ProtocolSelectLayer {
            supported: supported.into_iter().collect(),
        }
    }
}

impl<S> Layer<S> for ProtocolSelectLayer {
    type Service = ProtocolSelect<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ProtocolSelect {
            inner,
            supported: self.supported.clone(),
        }
    }
}

/// The service of [`ProtocolSelectLayer`].
#[derive(Clone, Debug)]
pub struct ProtocolSelect<S> {
    inner: S,
    supported: Vec<Protocol>,
}

fn select(attempt: &Attempt, supported: &[Protocol]) -> Result<Protocol, ConnectError> {
    let remote = attempt.remote.as_ref().ok_or(ConnectError::MissingInput {
        layer: "ProtocolSelectLayer",
        needs: "the peer's protocols (SignalLayer)",
    })?;
    let ours: Vec<Protocol> = attempt
        .protocols
        .iter()
        .copied()
        .filter(|p| supported.contains(p))
        .collect();
    match attempt.role {
        Role::Dialer => negotiate(&ours, &remote.protocols),
        Role::Responder => negotiate(&remote.protocols, &ours),
    }
}

impl<S> Service<Attempt> for ProtocolSelect<S>
where
    S: Service<Attempt, Response = Connection> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    type Response = Connection;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut attempt: Attempt) -> Self::Future {
        let inner = take_inner(&mut self.inner);
        let selected = select(&attempt, &self.supported);
        ResponseFuture::new(async move {
            let protocol = selected?;
            attempt.protocol = Some(protocol);
            attempt.emit(Event::ProtocolSelected { protocol });
            inner.oneshot(attempt).await.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Protocol::*;

    #[test]
    fn the_dialers_preference_wins() {
        assert_eq!(negotiate(&[Kcp, Quic], &[Quic, Kcp]).unwrap(), Kcp);
        assert_eq!(negotiate(&[Sctp, Quic], &[Quic]).unwrap(), Quic);
    }

    #[test]
    fn nothing_in_common_is_a_clear_error() {
        let err = negotiate(&[Kcp], &[Quic, Utp]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no common protocol: we offer kcp, the peer accepts quic,utp"
        );
        assert!(negotiate(&[], &[Quic]).is_err());
    }
}
