//! `SignalLayer`: exchanges offer and answer with the remote peer through a [`Signaller`].
//!
//! A dialer sends its candidates, protocols and the check secret, and waits for the answer; a
//! responder (whose attempt already carries the offer) sends its answer. Either way the attempt
//! leaves with `remote` filled in.

use std::sync::Arc;
use std::task::{Context, Poll};

use fog_core::{
    Attempt, BoxError, ConnectError, Connection, Event, PeerRef, RemoteInfo, Role,
    SessionDescription, Signaller,
};
use tower::{Service, ServiceExt};
use tower_layer::Layer;

use crate::future::{take_inner, ResponseFuture};

/// Exchanges offer and answer through `signaller`.
#[derive(Clone)]
pub struct SignalLayer {
    signaller: Arc<dyn Signaller>,
}

impl SignalLayer {
    /// A layer that signals through `signaller` (for example the node's signal-server client).
    pub fn new(signaller: Arc<dyn Signaller>) -> Self {
        SignalLayer { signaller }
    }
}

impl<S> Layer<S> for SignalLayer {
    type Service = Signal<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Signal {
            inner,
            signaller: self.signaller.clone(),
        }
    }
}

/// The service of [`SignalLayer`].
#[derive(Clone)]
pub struct Signal<S> {
    inner: S,
    signaller: Arc<dyn Signaller>,
}

/// Our half of the session as the attempt knows it.
pub fn describe(attempt: &Attempt) -> SessionDescription {
    SessionDescription {
        secret: match attempt.role {
            Role::Dialer => Some(fog_core::hex::encode(&attempt.session.secret)),
            Role::Responder => None,
        },
        candidates: attempt.local_candidates.clone(),
        protocols: attempt.protocols.clone(),
        nat: attempt.local_nat.clone(),
    }
}

async fn exchange(
    signaller: Arc<dyn Signaller>,
    attempt: &mut Attempt,
) -> Result<(), ConnectError> {
    match attempt.role {
        Role::Dialer => {
            attempt.emit(Event::OfferSent {
                target: attempt.target.to_string(),
            });
            let answer = signaller
                .offer(attempt.target.clone(), attempt.session, describe(attempt))
                .await?;
            if let PeerRef::Id(expected) = attempt.target {
                if answer.peer != expected {
                    return Err(ConnectError::SignalRefused(format!(
                        "asked for {expected}, but {} answered",
                        answer.peer
                    )));
                }
            }
            attempt.emit(Event::AnswerReceived {
                peer: answer.peer,
                candidates: answer.body.candidates.len(),
            });
            attempt.remote = Some(RemoteInfo {
                peer_id: answer.peer,
                name: answer.name,
                candidates: answer.body.candidates,
                nat: answer.body.nat,
                protocols: answer.body.protocols,
            });
        }
        Role::Responder => {
            let remote = attempt.remote.as_ref().ok_or(ConnectError::MissingInput {
                layer: "SignalLayer",
                needs: "the peer's offer in a responder attempt",
            })?;
            signaller
                .answer(remote.peer_id, attempt.session, describe(attempt))
                .await?;
        }
    }
    Ok(())
}

impl<S> Service<Attempt> for Signal<S>
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
        let signaller = self.signaller.clone();
        ResponseFuture::new(async move {
            use tracing::Instrument;
            let span =
                tracing::debug_span!("signal", role = ?attempt.role, target = %attempt.target);
            exchange(signaller, &mut attempt).instrument(span).await?;
            inner.oneshot(attempt).await.map_err(Into::into)
        })
    }
}
