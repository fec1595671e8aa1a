//! `SignalLayer`: exchanges offer and answer with the remote peer through a [`Signaller`].
//!
//! A dialer sends its candidates, protocols and the check secret, and waits for the answer; a
//! responder (whose attempt already carries the offer) sends its answer. Either way the attempt
//! leaves with `remote` filled in. Candidates still being looked up (`local_gathering`) follow
//! the offer or answer as they come in (trickle), and the peer's late ones reach the attempt
//! through `remote_trickle`; a signaller that cannot carry them gets everything at once instead.

use std::sync::Arc;
use std::task::{Context, Poll};

use fog_core::{
    Attempt, BoxError, ConnectError, Connection, Event, PeerRef, RemoteInfo, RemoteTrickle, Role,
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
        trickle: !attempt.local_gathering.is_empty(),
        rtc: None,
    }
}

/// Sends each background lookup's candidates to the peer as soon as it is in, then `done`.
/// Runs on its own task: the attempt goes on meanwhile.
fn forward_trickle(signaller: Arc<dyn Signaller>, to: PeerRef, attempt: &Attempt) {
    let session = attempt.session;
    let lookups: Vec<_> = attempt.local_gathering.iter().map(|g| g.result()).collect();
    tokio::spawn(async move {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let mut lookups: FuturesUnordered<_> = lookups.into_iter().collect();
        while let Some(found) = lookups.next().await {
            if !found.is_empty() {
                let _ = signaller.trickle(to.clone(), session, found, false).await;
            }
        }
        let _ = signaller.trickle(to, session, Vec::new(), true).await;
    });
}

/// Without a way to receive the peer's trickle, nothing is trickled: the lookups are awaited
/// and their candidates go into the offer or answer.
async fn settle_gathering(attempt: &mut Attempt) {
    let found = fog_core::trickle::gathered(&attempt.local_gathering).await;
    attempt.local_gathering.clear();
    for candidate in found {
        if !attempt
            .local_candidates
            .iter()
            .any(|c| c.addr == candidate.addr)
        {
            attempt.local_candidates.push(candidate);
        }
    }
}

async fn exchange(
    signaller: Arc<dyn Signaller>,
    attempt: &mut Attempt,
) -> Result<(), ConnectError> {
    let remote_trickle = signaller.subscribe_candidates(&attempt.session);
    if remote_trickle.is_none() {
        settle_gathering(attempt).await;
    }
    match attempt.role {
        Role::Dialer => {
            attempt.emit(Event::OfferSent {
                target: attempt.target.to_string(),
            });
            let offer = signaller.offer(attempt.target.clone(), attempt.session, describe(attempt));
            if !attempt.local_gathering.is_empty() {
                // The offer is queued first, so the server knows the session when these come.
                forward_trickle(signaller.clone(), attempt.target.clone(), attempt);
            }
            let answer = offer.await?;
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
                trickle: answer.body.trickle,
            });
        }
        Role::Responder => {
            let remote = attempt.remote.as_ref().ok_or(ConnectError::MissingInput {
                layer: "SignalLayer",
                needs: "the peer's offer in a responder attempt",
            })?;
            let peer = remote.peer_id;
            signaller
                .answer(peer, attempt.session, describe(attempt))
                .await?;
            if !attempt.local_gathering.is_empty() {
                forward_trickle(signaller.clone(), PeerRef::Id(peer), attempt);
            }
        }
    }
    if attempt.remote.as_ref().is_some_and(|r| r.trickle) {
        attempt.remote_trickle = remote_trickle.map(RemoteTrickle::new);
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
