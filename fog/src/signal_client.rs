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
    /// The signal server that accepted it.
    pub url: String,
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

/// How often the node pings the signal server.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);
/// A signal connection that has not been heard from for this long (no answer to two pings'
/// worth of time) is dead, and is made again.
pub const SILENT_FOR: Duration = Duration::from_secs(25);
/// First wait before connecting again after the signal connection broke; it doubles (with
/// jitter) up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between two tries to reach a signal server again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long an offer or a relay-credential request waits for a broken signal connection to
/// come back before it fails with "signal unreachable".
const LINK_WAIT: Duration = Duration::from_secs(10);

/// Where messages to the signal server go while it is connected; `None` while it is not.
type Link = Option<mpsc::UnboundedSender<ClientMessage>>;

struct Inner {
    link: watch::Sender<Link>,
    pending: Mutex<Pending>,
    registration: Registration,
}

/// A registered connection to the signal server that heals: it pings the server, notices a
/// dead or closed connection, and connects and registers again (with the same key and name,
/// to the next of its servers, with capped exponential backoff and jitter) for as long as the
/// client lives. Cheap to clone.
#[derive(Clone)]
pub struct SignalClient {
    inner: Arc<Inner>,
    _supervisor: Arc<AbortOnDrop>,
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn refused(code: ErrorCode, message: String) -> ConnectError {
    match code {
        ErrorCode::PeerUnknown => ConnectError::PeerUnknown(message),
        ErrorCode::PeerOffline => ConnectError::PeerOffline(message),
        _ => ConnectError::SignalRefused(message),
    }
}

type WebSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `url` and registers `identity` (and `name`) on it.
async fn register(
    url: &str,
    identity: &Identity,
    name: Option<String>,
) -> Result<(WebSocket, Registration), ConnectError> {
    let unreachable = |e: String| ConnectError::SignalUnreachable(format!("{url}: {e}"));
    let (mut ws, _) = tokio::time::timeout(REGISTER_TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .map_err(|_| unreachable("no answer within 5 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let registration = tokio::time::timeout(REGISTER_TIMEOUT, async {
        let nonce = match next_message(&mut ws).await? {
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
        ws.send(Message::Text(to_json(&register)))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        match next_message(&mut ws).await? {
            ServerMessage::Registered {
                peer,
                name,
                stun,
                relays,
            } => Ok(Registration {
                url: url.to_string(),
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
    Ok((ws, registration))
}

/// Registers at the first of `urls` (from `start` on, in turn) that accepts; a refusal (a
/// name held by another key) ends the round at once.
async fn register_any(
    urls: &[String],
    start: usize,
    identity: &Identity,
    name: &Option<String>,
) -> Result<(WebSocket, Registration, usize), ConnectError> {
    let mut last = ConnectError::SignalUnreachable("no signal server given".into());
    for k in 0..urls.len() {
        let index = (start + k) % urls.len();
        match register(&urls[index], identity, name.clone()).await {
            Ok((ws, registration)) => return Ok((ws, registration, index)),
            Err(e @ ConnectError::SignalRefused(_)) => return Err(e),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The wait before the `attempt`-th try to connect again: doubling from [`FIRST_BACKOFF`] up
/// to [`MAX_BACKOFF`], with up to a quarter of it as random jitter, so that the nodes of a
/// server that restarts do not all come back at the same instant.
fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF);
    base.mul_f64(0.75 + 0.25 * jitter.clamp(0.0, 1.0))
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
        Self::connect_any(&[url.to_string()], identity, name, events).await
    }

    /// Registers at the first of `urls` that accepts, and fails over between them whenever
    /// the connection breaks. Fails when none accepts now, or one refuses the registration.
    pub async fn connect_any(
        urls: &[String],
        identity: &Identity,
        name: Option<String>,
        events: EventBus,
    ) -> Result<(SignalClient, mpsc::Receiver<IncomingOffer>), ConnectError> {
        let (ws, registration, index) = register_any(urls, 0, identity, &name).await?;
        events.emit(Event::Registered {
            peer: registration.peer,
            name: registration.name.clone(),
        });
        // Connected from the start: the client is usable as soon as it is returned.
        let (out, out_rx) = mpsc::unbounded_channel();
        let (link, _) = watch::channel(Some(out));
        let inner = Arc::new(Inner {
            link,
            pending: Mutex::new(Pending::default()),
            registration,
        });
        let (offers_tx, offers_rx) = mpsc::channel(64);
        let supervisor = tokio::spawn(supervise(
            Arc::downgrade(&inner),
            ws,
            out_rx,
            index,
            urls.to_vec(),
            identity.clone(),
            name,
            events,
            offers_tx,
        ));
        Ok((
            SignalClient {
                inner,
                _supervisor: Arc::new(AbortOnDrop(supervisor)),
            },
            offers_rx,
        ))
    }

    /// What the server said at the first registration.
    pub fn registration(&self) -> &Registration {
        &self.inner.registration
    }

    /// Whether the node is registered at a signal server right now.
    pub fn is_connected(&self) -> bool {
        self.inner.link.borrow().is_some()
    }

    /// Refuses `to`'s offer for `session`, so the dialer fails at once instead of timing out.
    pub fn reject(&self, to: PeerId, session: &SessionKeys, reason: &str) {
        let _ = self.inner.send(ClientMessage::Reject {
            to,
            session: session.id_hex(),
            reason: reason.to_string(),
        });
    }
}

/// Keeps the node registered for as long as the client lives: runs the connection it is
/// given, and when it breaks, fails what waited on it, says so, and registers again.
#[allow(clippy::too_many_arguments)]
async fn supervise(
    inner: std::sync::Weak<Inner>,
    mut ws: WebSocket,
    mut out_rx: mpsc::UnboundedReceiver<ClientMessage>,
    mut index: usize,
    urls: Vec<String>,
    identity: Identity,
    name: Option<String>,
    events: EventBus,
    offers: mpsc::Sender<IncomingOffer>,
) {
    loop {
        let error = run_connection(ws, &mut out_rx, &inner, &offers).await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        strong.link.send_replace(None);
        strong.fail_all(&error);
        drop(strong);
        tracing::warn!(%error, "signal connection lost");
        events.emit(Event::SignalLost { error });
        let mut attempt = 0u32;
        loop {
            tokio::time::sleep(backoff(attempt, rand::random::<f64>())).await;
            attempt = attempt.saturating_add(1);
            if inner.strong_count() == 0 {
                return;
            }
            match register_any(&urls, index + 1, &identity, &name).await {
                Ok((fresh, registration, at)) => {
                    ws = fresh;
                    index = at;
                    let (out, fresh_rx) = mpsc::unbounded_channel();
                    out_rx = fresh_rx;
                    match inner.upgrade() {
                        Some(inner) => inner.link.send_replace(Some(out)),
                        None => return,
                    };
                    tracing::info!(url = %registration.url, "signal connection restored");
                    events.emit(Event::SignalRestored {
                        url: registration.url,
                    });
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "signal server not reached again yet")
                }
            }
        }
    }
}

/// Carries one registered connection until it breaks: messages out, messages in, and pings.
/// Returns why it ended.
async fn run_connection(
    ws: WebSocket,
    out: &mut mpsc::UnboundedReceiver<ClientMessage>,
    inner: &std::sync::Weak<Inner>,
    offers: &mpsc::Sender<IncomingOffer>,
) -> String {
    let (mut sink, mut source) = ws.split();
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            message = source.next() => {
                heard = tokio::time::Instant::now();
                let message = match message {
                    Some(Ok(Message::Text(text))) => match serde_json::from_str(&text) {
                        Ok(message) => message,
                        Err(e) => {
                            tracing::debug!(error = %e, "unreadable signal message");
                            continue;
                        }
                    },
                    Some(Ok(Message::Close(_))) | None => {
                        return "the signal server closed the connection".to_string()
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return e.to_string(),
                };
                let Some(inner) = inner.upgrade() else {
                    return "the node stopped".to_string();
                };
                inner.dispatch(message, offers).await;
            }
            message = out.recv() => {
                let Some(message) = message else {
                    return "the node stopped".to_string();
                };
                if let Err(e) = sink.send(Message::Text(to_json(&message))).await {
                    return e.to_string();
                }
            }
            _ = ping.tick() => {
                if let Err(e) = sink.send(Message::Ping(Vec::new())).await {
                    return e.to_string();
                }
            }
            _ = tokio::time::sleep_until(heard + SILENT_FOR) => {
                return format!("no word from the signal server for {} s", SILENT_FOR.as_secs());
            }
        }
    }
}

fn to_json(message: &ClientMessage) -> String {
    serde_json::to_string(message).expect("client messages serialize")
}

async fn next_message(source: &mut WebSocket) -> Result<ServerMessage, ConnectError> {
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
                        let _ = self.send(ClientMessage::Reject {
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
            ServerMessage::PathUpdate {
                from,
                session,
                candidates,
            } => {
                // Only into a session we keep, from the peer that trickled into it: anyone may
                // send a path update, and a session id is no secret.
                let mut pending = self.pending();
                let Some(entry) = pending.trickles.get_mut(&session) else {
                    tracing::debug!(%from, %session, "path update for no session of ours");
                    return;
                };
                if entry.from != Some(from) {
                    tracing::debug!(%from, %session, "path update from another peer ignored");
                    return;
                }
                entry.at = Instant::now();
                entry
                    .tx
                    .send_if_modified(|list| list.replace_relayed(&candidates));
            }
            ServerMessage::Challenge { .. }
            | ServerMessage::Registered { .. }
            | ServerMessage::Resolved { .. } => {}
        }
    }

    /// Sends `message` on the signal connection; fails while there is none.
    fn send(&self, message: ClientMessage) -> Result<(), ConnectError> {
        match &*self.link.borrow() {
            Some(out) => out
                .send(message)
                .map_err(|_| ConnectError::SignalUnreachable("signal connection closed".into())),
            None => Err(ConnectError::SignalUnreachable(
                "not connected to a signal server (reconnecting)".into(),
            )),
        }
    }

    /// Waits (within [`LINK_WAIT`]) for the signal connection to be up.
    async fn connected(&self) -> Result<(), ConnectError> {
        let mut link = self.link.subscribe();
        let up = tokio::time::timeout(LINK_WAIT, async {
            link.wait_for(|l| l.is_some()).await.is_ok()
        })
        .await;
        if up == Ok(true) {
            return Ok(());
        }
        Err(ConnectError::SignalUnreachable(format!(
            "no signal server reached within {} s",
            LINK_WAIT.as_secs()
        )))
    }

    /// The connection broke: whatever waited on an answer from it fails now.
    fn fail_all(&self, reason: &str) {
        let mut pending = self.pending();
        for (_, tx) in pending.answers.drain() {
            let _ = tx.send(Err(ConnectError::SignalUnreachable(reason.to_string())));
        }
        for (_, tx) in pending.grants.drain() {
            let _ = tx.send(Err(ConnectError::SignalUnreachable(reason.to_string())));
        }
    }
}

impl Inner {
    /// Sends an offer and registers who waits for its answer.
    fn queue_offer(
        &self,
        target: &PeerRef,
        session_hex: &str,
        body: SessionDescription,
    ) -> Result<oneshot::Receiver<Result<AnswerFrom, ConnectError>>, ConnectError> {
        let (tx, rx) = oneshot::channel();
        self.pending().answers.insert(session_hex.to_string(), tx);
        self.send(ClientMessage::Offer {
            to: target.to_string(),
            session: session_hex.to_string(),
            body,
        })
        .inspect_err(|_| {
            self.pending().answers.remove(session_hex);
        })?;
        Ok(rx)
    }
}

impl Signaller for SignalClient {
    fn offer(
        &self,
        target: PeerRef,
        session: SessionKeys,
        body: SessionDescription,
    ) -> BoxFuture<'static, Result<AnswerFrom, ConnectError>> {
        // Queued at once when connected, not when first polled: trickled candidates sent after
        // this call must reach the server after the offer. While the signal connection is
        // being made again, the offer waits for it.
        let inner = self.inner.clone();
        let session_hex = session.id_hex();
        let queued = self
            .is_connected()
            .then(|| inner.queue_offer(&target, &session_hex, body.clone()));
        Box::pin(async move {
            let rx = match queued {
                Some(queued) => queued?,
                None => {
                    inner.connected().await?;
                    inner.queue_offer(&target, &session_hex, body)?
                }
            };
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
        let sent = self.inner.send(ClientMessage::Answer {
            to,
            session: session.id_hex(),
            body,
        });
        Box::pin(async move { sent })
    }

    fn trickle(
        &self,
        to: PeerRef,
        session: SessionKeys,
        candidates: Vec<Candidate>,
        done: bool,
    ) -> BoxFuture<'static, Result<(), ConnectError>> {
        let sent = self.inner.send(ClientMessage::Candidates {
            to: to.to_string(),
            session: session.id_hex(),
            candidates,
            done,
        });
        Box::pin(async move { sent })
    }

    fn update_path(
        &self,
        to: PeerId,
        session: SessionKeys,
        candidates: Vec<Candidate>,
    ) -> BoxFuture<'static, Result<(), ConnectError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            // Waits for the signal link like an offer does: the update matters most right
            // after the signal server (which may be the relay too) came back.
            inner.connected().await?;
            inner.send(ClientMessage::PathUpdate {
                to,
                session: session.id_hex(),
                candidates,
            })
        })
    }

    fn relay_credentials(
        &self,
        peer: PeerRef,
    ) -> BoxFuture<'static, Result<Vec<RelayGrant>, ConnectError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner.connected().await?;
            let (tx, rx) = oneshot::channel();
            let id = {
                let mut pending = inner.pending();
                pending.next_request += 1;
                let id = pending.next_request;
                pending.grants.insert(id, tx);
                id
            };
            let sent = inner.send(ClientMessage::RelayCredentials {
                id,
                peer: peer.to_string(),
            });
            if let Err(e) = sent {
                inner.pending().grants.remove(&id);
                return Err(e);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_at_most_a_quarter_of_jitter() {
        assert_eq!(backoff(0, 1.0), FIRST_BACKOFF);
        assert_eq!(backoff(1, 1.0), FIRST_BACKOFF * 2);
        assert_eq!(backoff(3, 1.0), FIRST_BACKOFF * 8);
        assert_eq!(backoff(20, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(20, 0.0), MAX_BACKOFF.mul_f64(0.75));
        for attempt in 0..40 {
            let wait = backoff(attempt, 0.5);
            assert!(wait <= MAX_BACKOFF && wait >= FIRST_BACKOFF.mul_f64(0.75));
        }
    }
}
