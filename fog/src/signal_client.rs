//! The node's client of the signal server: registers by answering the challenge, then carries
//! offers, answers and lookups. Implements [`Signaller`] for the signal layer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fog_core::signal::{registration_message, ClientMessage, ErrorCode, RelayGrant, ServerMessage};
use fog_core::{
    AnswerFrom, Candidate, CandidateList, ConnectError, Event, EventBus, Identity, PeerId, PeerRef,
    SessionDescription, SessionKeys, Signaller,
};
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

/// How long to wait for the signal server to accept the WebSocket and the registration.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a peer's answer to an offer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// An offer a remote peer sent us.
#[derive(Clone, Debug)]
pub struct IncomingOffer {
    /// The offering peer, as the server verified it.
    pub from: PeerId,
    /// Its name.
    pub from_name: Option<String>,
    /// The session keys from the offer.
    pub session: SessionKeys,
    /// Its half of the session.
    pub body: SessionDescription,
}

/// What the server said when it accepted the registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// This node.
    pub peer: PeerId,
    /// The name bound to it.
    pub name: Option<String>,
    /// STUN servers the server announces.
    pub stun: Vec<String>,
    /// Relays the server announces.
    pub relays: Vec<String>,
}

/// How long trickled candidates of a session are kept for an attempt to pick up.
const TRICKLE_TTL: Duration = Duration::from_secs(60);
/// Most sessions with trickled candidates kept at once.
const MAX_TRICKLE_SESSIONS: usize = 256;

/// The trickled candidates of one session, kept from the first message (which may arrive
/// before the attempt that wants them subscribes).
struct TrickleEntry {
    tx: watch::Sender<CandidateList>,
    /// The peer that sent the first; others are ignored.
    from: Option<PeerId>,
    at: Instant,
}

#[derive(Default)]
struct Pending {
    answers: HashMap<String, oneshot::Sender<Result<AnswerFrom, ConnectError>>>,
    /// Relay-credential requests by id.
    grants: HashMap<u64, oneshot::Sender<Result<Vec<RelayGrant>, ConnectError>>>,
    next_request: u64,
    trickles: HashMap<String, TrickleEntry>,
    closed: Option<String>,
}

impl Pending {
    fn trickle_entry(&mut self, session: &str) -> &mut TrickleEntry {
        if !self.trickles.contains_key(session) && self.trickles.len() >= MAX_TRICKLE_SESSIONS {
            self.trickles
                .retain(|_, e| e.at.elapsed() < TRICKLE_TTL && e.tx.receiver_count() > 0);
            if self.trickles.len() >= MAX_TRICKLE_SESSIONS {
                if let Some(oldest) = self
                    .trickles
                    .iter()
                    .min_by_key(|(_, e)| e.at)
                    .map(|(k, _)| k.clone())
                {
                    self.trickles.remove(&oldest);
                }
            }
        }
        self.trickles
            .entry(session.to_string())
            .or_insert_with(|| TrickleEntry {
                tx: watch::channel(CandidateList::default()).0,
                from: None,
                at: Instant::now(),
            })
    }
}

struct Inner {
    out: mpsc::UnboundedSender<ClientMessage>,
    pending: Mutex<Pending>,
    registration: Registration,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// A registered connection to the signal server. Cheap to clone.
#[derive(Clone)]
pub struct SignalClient {
    inner: Arc<Inner>,
}

fn refused(code: ErrorCode, message: String) -> ConnectError {
    match code {
        ErrorCode::PeerUnknown => ConnectError::PeerUnknown(message),
        ErrorCode::PeerOffline => ConnectError::PeerOffline(message),
        _ => ConnectError::SignalRefused(message),
    }
}

impl SignalClient {
    /// Connects to `url`, registers `identity` (and `name`), and returns the client with the
    /// stream of offers other peers send us.
    pub async fn connect(
        url: &str,
        identity: &Identity,
        name: Option<String>,
        events: EventBus,
    ) -> Result<(SignalClient, mpsc::Receiver<IncomingOffer>), ConnectError> {
        let unreachable = |e: String| ConnectError::SignalUnreachable(format!("{url}: {e}"));
        let (ws, _) = tokio::time::timeout(REGISTER_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| unreachable("no answer within 5 s".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sink, mut source) = ws.split();

        let registration = tokio::time::timeout(REGISTER_TIMEOUT, async {
            let nonce = match next_message(&mut source).await? {
                ServerMessage::Challenge { nonce, .. } => fog_core::hex::decode(&nonce)
                    .ok_or_else(|| unreachable("malformed challenge".into()))?,
                other => return Err(unreachable(format!("expected a challenge, got {other:?}"))),
            };
            let peer = identity.peer_id();
            let signature = identity.sign(&registration_message(&nonce, &peer));
            let register = ClientMessage::Register {
                peer,
                name: name.clone(),
                signature: fog_core::hex::encode(&signature),
            };
            sink.send(Message::Text(to_json(&register)))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            match next_message(&mut source).await? {
                ServerMessage::Registered {
                    peer,
                    name,
                    stun,
                    relays,
                } => Ok(Registration {
                    peer,
                    name,
                    stun,
                    relays,
                }),
                ServerMessage::Error { code, message, .. } => Err(ConnectError::SignalRefused(
                    format!("registration refused ({code:?}): {message}"),
                )),
                other => Err(unreachable(format!("unexpected reply {other:?}"))),
            }
        })
        .await
        .map_err(|_| unreachable("registration not answered within 5 s".into()))??;
        events.emit(Event::Registered {
            peer: registration.peer,
            name: registration.name.clone(),
        });

        let (out, mut out_rx) = mpsc::unbounded_channel::<ClientMessage>();
        let writer = tokio::spawn(async move {
            while let Some(message) = out_rx.recv().await {
                if sink.send(Message::Text(to_json(&message))).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let (offers_tx, offers_rx) = mpsc::channel(64);
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<Inner>| {
            let weak = weak.clone();
            let reader = tokio::spawn(async move {
                let reason = loop {
                    let message = match source.next().await {
                        Some(Ok(Message::Text(text))) => match serde_json::from_str(&text) {
                            Ok(message) => message,
                            Err(e) => {
                                tracing::debug!(error = %e, "unreadable signal message");
                                continue;
                            }
                        },
                        Some(Ok(Message::Close(_))) | None => {
                            break "the signal server closed the connection".to_string()
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => break e.to_string(),
                    };
                    let Some(inner) = weak.upgrade() else { return };
                    inner.dispatch(message, &offers_tx).await;
                };
                if let Some(inner) = weak.upgrade() {
                    inner.fail_all(&reason);
                }
                events.emit(Event::SignalDisconnected { reason });
            });
            Inner {
                out,
                pending: Mutex::new(Pending::default()),
                registration,
                reader,
                writer,
            }
        });
        Ok((SignalClient { inner }, offers_rx))
    }

    /// What the server said at registration.
    pub fn registration(&self) -> &Registration {
        &self.inner.registration
    }

    /// Refuses `to`'s offer for `session`, so the dialer fails at once instead of timing out.
    pub fn reject(&self, to: PeerId, session: &SessionKeys, reason: &str) {
        let _ = self.inner.out.send(ClientMessage::Reject {
            to,
            session: session.id_hex(),
            reason: reason.to_string(),
        });
    }
}

fn to_json(message: &ClientMessage) -> String {
    serde_json::to_string(message).expect("client messages serialize")
}

async fn next_message<S>(source: &mut S) -> Result<ServerMessage, ConnectError>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match source.next().await {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(&text).map_err(|e| {
                    ConnectError::SignalUnreachable(format!("not a fog signal server: {e}"))
                })
            }
            Some(Ok(Message::Close(_))) | None => {
                return Err(ConnectError::SignalUnreachable(
                    "the signal server closed the connection".into(),
                ))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(ConnectError::SignalUnreachable(e.to_string())),
        }
    }
}

impl Inner {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn settle(&self, session: &str, result: Result<AnswerFrom, ConnectError>) {
        if let Some(tx) = self.pending().answers.remove(session) {
            let _ = tx.send(result);
        }
    }

    async fn dispatch(&self, message: ServerMessage, offers: &mpsc::Sender<IncomingOffer>) {
        match message {
            ServerMessage::Offer {
                from,
                from_name,
                session,
                body,
            } => {
                let keys = body
                    .secret
                    .as_deref()
                    .and_then(|secret| SessionKeys::from_hex(&session, secret));
                match keys {
                    Some(session) => {
                        let _ = offers
                            .send(IncomingOffer {
                                from,
                                from_name,
                                session,
                                body,
                            })
                            .await;
                    }
                    None => {
                        let _ = self.out.send(ClientMessage::Reject {
                            to: from,
                            session,
                            reason: "malformed session keys in the offer".into(),
                        });
                    }
                }
            }
            ServerMessage::Answer {
                from,
                from_name,
                session,
                body,
            } => self.settle(
                &session,
                Ok(AnswerFrom {
                    peer: from,
                    name: from_name,
                    body,
                }),
            ),
            ServerMessage::Reject {
                session, reason, ..
            } => self.settle(&session, Err(ConnectError::Refused(reason))),
            ServerMessage::Error {
                code,
                message,
                id: Some(id),
                ..
            } => {
                if let Some(tx) = self.pending().grants.remove(&id) {
                    let _ = tx.send(Err(refused(code, message)));
                }
            }
            ServerMessage::RelayCredentials { id, relays } => {
                if let Some(tx) = self.pending().grants.remove(&id) {
                    let _ = tx.send(Ok(relays));
                }
            }
            ServerMessage::Error {
                code,
                message,
                session: Some(session),
                ..
            } => self.settle(&session, Err(refused(code, message))),
            ServerMessage::Error { code, message, .. } => {
                tracing::warn!(?code, %message, "signal server error");
            }
            ServerMessage::Candidates {
                from,
                session,
                candidates,
                done,
            } => {
                let mut pending = self.pending();
                let entry = pending.trickle_entry(&session);
                if *entry.from.get_or_insert(from) != from {
                    return;
                }
                entry
                    .tx
                    .send_if_modified(|list| list.extend(&candidates, done));
            }
            ServerMessage::Challenge { .. }
            | ServerMessage::Registered { .. }
            | ServerMessage::Resolved { .. } => {}
        }
    }

    fn fail_all(&self, reason: &str) {
        let mut pending = self.pending();
        pending.closed = Some(reason.to_string());
        for (_, tx) in pending.answers.drain() {
            let _ = tx.send(Err(ConnectError::SignalUnreachable(reason.to_string())));
        }
        for (_, tx) in pending.grants.drain() {
            let _ = tx.send(Err(ConnectError::SignalUnreachable(reason.to_string())));
        }
    }
}

impl Signaller for SignalClient {
    fn offer(
        &self,
        target: PeerRef,
        session: SessionKeys,
        body: SessionDescription,
    ) -> BoxFuture<'static, Result<AnswerFrom, ConnectError>> {
        // Queued at once, not when first polled: trickled candidates sent after this call
        // must reach the server after the offer.
        let inner = self.inner.clone();
        let session_hex = session.id_hex();
        let (tx, rx) = oneshot::channel();
        let queued = {
            let mut pending = inner.pending();
            match &pending.closed {
                Some(reason) => Err(ConnectError::SignalUnreachable(reason.clone())),
                None => {
                    pending.answers.insert(session_hex.clone(), tx);
                    Ok(())
                }
            }
        }
        .and_then(|()| {
            inner
                .out
                .send(ClientMessage::Offer {
                    to: target.to_string(),
                    session: session_hex.clone(),
                    body,
                })
                .map_err(|_| {
                    inner.pending().answers.remove(&session_hex);
                    ConnectError::SignalUnreachable("signal connection closed".into())
                })
        });
        Box::pin(async move {
            queued?;
            match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(ConnectError::Shutdown),
                Err(_) => {
                    inner.pending().answers.remove(&session_hex);
                    Err(ConnectError::Timeout(format!(
                        "{target} did not answer the offer within {ANSWER_TIMEOUT:?}"
                    )))
                }
            }
        })
    }

    fn answer(
        &self,
        to: PeerId,
        session: SessionKeys,
        body: SessionDescription,
    ) -> BoxFuture<'static, Result<(), ConnectError>> {
        let sent = self.inner.out.send(ClientMessage::Answer {
            to,
            session: session.id_hex(),
            body,
        });
        Box::pin(async move {
            sent.map_err(|_| ConnectError::SignalUnreachable("signal connection closed".into()))
        })
    }

    fn trickle(
        &self,
        to: PeerRef,
        session: SessionKeys,
        candidates: Vec<Candidate>,
        done: bool,
    ) -> BoxFuture<'static, Result<(), ConnectError>> {
        let sent = self.inner.out.send(ClientMessage::Candidates {
            to: to.to_string(),
            session: session.id_hex(),
            candidates,
            done,
        });
        Box::pin(async move {
            sent.map_err(|_| ConnectError::SignalUnreachable("signal connection closed".into()))
        })
    }

    fn relay_credentials(
        &self,
        peer: PeerRef,
    ) -> BoxFuture<'static, Result<Vec<RelayGrant>, ConnectError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let id = {
                let mut pending = inner.pending();
                if let Some(reason) = &pending.closed {
                    return Err(ConnectError::SignalUnreachable(reason.clone()));
                }
                pending.next_request += 1;
                let id = pending.next_request;
                pending.grants.insert(id, tx);
                id
            };
            let sent = inner.out.send(ClientMessage::RelayCredentials {
                id,
                peer: peer.to_string(),
            });
            if sent.is_err() {
                inner.pending().grants.remove(&id);
                return Err(ConnectError::SignalUnreachable(
                    "signal connection closed".into(),
                ));
            }
            match tokio::time::timeout(REGISTER_TIMEOUT, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(ConnectError::Shutdown),
                Err(_) => {
                    inner.pending().grants.remove(&id);
                    Err(ConnectError::Timeout("relay credentials".into()))
                }
            }
        })
    }

    fn subscribe_candidates(
        &self,
        session: &SessionKeys,
    ) -> Option<watch::Receiver<CandidateList>> {
        let mut pending = self.inner.pending();
        Some(pending.trickle_entry(&session.id_hex()).tx.subscribe())
    }
}
