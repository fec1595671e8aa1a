//! One node's WebSocket session.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fog_core::signal::{
    registration_message, ClientMessage, ErrorCode, ServerMessage, MAX_MESSAGE, PROTOCOL_VERSION,
    SIGNAL_PATH,
};
use fog_core::{PeerId, PeerRef};
use futures_util::{SinkExt, StreamExt};
use rand::RngCore;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::state::{RouteError, State};

/// A node must register within this time, or the session is closed.
const REGISTER_WITHIN: Duration = Duration::from_secs(10);
/// Frames above this size break the WebSocket itself; below it, the server answers `too_large`
/// for messages above [`MAX_MESSAGE`] and keeps the session.
const MAX_FRAME: usize = 1024 * 1024;
/// Messages queued for a slow session before further ones are refused.
const QUEUE: usize = 64;

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

fn error(code: ErrorCode, message: impl Into<String>) -> ServerMessage {
    ServerMessage::Error {
        code,
        message: message.into(),
        id: None,
        session: None,
    }
}

fn route_error(e: RouteError, session: Option<String>) -> ServerMessage {
    ServerMessage::Error {
        code: e.code,
        message: e.message,
        id: None,
        session,
    }
}

fn valid_session(session: &str) -> bool {
    fog_core::hex::decode_array::<16>(session).is_some()
}

pub(crate) async fn run(
    stream: TcpStream,
    from: SocketAddr,
    state: Arc<State>,
    mut stopped: watch::Receiver<bool>,
) {
    #[allow(clippy::result_large_err)]
    let check_path = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        if request.uri().path() == SIGNAL_PATH {
            Ok(response)
        } else {
            let mut refusal =
                ErrorResponse::new(Some(format!("fog signal server: connect to {SIGNAL_PATH}")));
            *refusal.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
            Err(refusal)
        }
    };
    let config = WebSocketConfig {
        max_message_size: Some(MAX_FRAME),
        max_frame_size: Some(MAX_FRAME),
        ..Default::default()
    };
    let ws = match tokio::time::timeout(
        REGISTER_WITHIN,
        tokio_tungstenite::accept_hdr_async_with_config(stream, check_path, Some(config)),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%from, error = %e, "websocket handshake failed");
            return;
        }
        Err(_) => return,
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<ServerMessage>(QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            let text = serde_json::to_string(&message).expect("server messages serialize");
            if sink.send(Message::Text(text)).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let mut nonce = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut nonce);
    let session_id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    let _ = tx
        .send(ServerMessage::Challenge {
            nonce: fog_core::hex::encode(&nonce),
            version: PROTOCOL_VERSION,
        })
        .await;

    let mut me: Option<PeerId> = None;
    let register_deadline = tokio::time::sleep(REGISTER_WITHIN);
    tokio::pin!(register_deadline);
    loop {
        let frame = tokio::select! {
            frame = source.next() => frame,
            _ = &mut register_deadline, if me.is_none() => {
                let _ = tx.send(error(ErrorCode::NotRegistered, "register within 10 s")).await;
                break;
            }
            _ = stopped.changed() => break,
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                let _ = tx
                    .send(error(
                        ErrorCode::BadMessage,
                        "binary frames are not fog messages",
                    ))
                    .await;
                continue;
            }
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                tracing::debug!(%from, error = %e, "websocket closed");
                break;
            }
        };
        if text.len() > MAX_MESSAGE {
            let _ = tx
                .send(error(
                    ErrorCode::TooLarge,
                    format!(
                        "messages are at most {MAX_MESSAGE} bytes, got {}",
                        text.len()
                    ),
                ))
                .await;
            continue;
        }
        let message = match serde_json::from_str::<ClientMessage>(&text) {
            Ok(message) => message,
            Err(e) => {
                let _ = tx
                    .send(error(
                        ErrorCode::BadMessage,
                        format!("not a fog message: {e}"),
                    ))
                    .await;
                continue;
            }
        };
        let reply = handle(&state, &tx, &nonce, session_id, &mut me, message);
        if let Some(reply) = reply {
            if tx.send(reply).await.is_err() {
                break;
            }
        }
    }
    if let Some(peer) = me {
        state.unregister(peer, session_id);
    }
    drop(tx);
    let _ = writer.await;
}

fn handle(
    state: &State,
    tx: &mpsc::Sender<ServerMessage>,
    nonce: &[u8; 32],
    session_id: u64,
    me: &mut Option<PeerId>,
    message: ClientMessage,
) -> Option<ServerMessage> {
    let ClientMessage::Register {
        peer,
        name,
        signature,
    } = message
    else {
        let Some(from) = *me else {
            return Some(error(ErrorCode::NotRegistered, "register first"));
        };
        return route(state, from, message);
    };
    if me.is_some() {
        return Some(error(
            ErrorCode::AlreadyRegistered,
            "this session is registered",
        ));
    }
    let signature = match fog_core::hex::decode(&signature) {
        Some(s) => s,
        None => return Some(error(ErrorCode::BadSignature, "signature is not hex")),
    };
    if peer
        .verify(&registration_message(nonce, &peer), &signature)
        .is_err()
    {
        return Some(error(
            ErrorCode::BadSignature,
            "the signature does not prove the key",
        ));
    }
    if let Err(e) = state.register(peer, name.clone(), session_id, tx.clone()) {
        return Some(route_error(e, None));
    }
    *me = Some(peer);
    tracing::debug!(peer = %peer, ?name, "registered");
    Some(ServerMessage::Registered {
        peer,
        name,
        stun: state.stun(),
        relays: state.relays(),
    })
}

fn route(state: &State, from: PeerId, message: ClientMessage) -> Option<ServerMessage> {
    let from_name = state.name_of(&from);
    match message {
        ClientMessage::Register { .. } => unreachable!("handled by the caller"),
        ClientMessage::Resolve { id, name } => Some(match state.resolve(&name) {
            Some(peer) => ServerMessage::Resolved { id, name, peer },
            None => ServerMessage::Error {
                code: ErrorCode::PeerUnknown,
                message: format!("no peer has the name {name:?}"),
                id: Some(id),
                session: None,
            },
        }),
        ClientMessage::Offer { to, session, body } => {
            if !valid_session(&session) {
                return Some(error(
                    ErrorCode::BadMessage,
                    "session must be 32 hex characters",
                ));
            }
            let target: PeerRef = match to.parse() {
                Ok(target) => target,
                Err(e) => {
                    return Some(ServerMessage::Error {
                        code: ErrorCode::PeerUnknown,
                        message: e,
                        id: None,
                        session: Some(session),
                    })
                }
            };
            let offer = ServerMessage::Offer {
                from,
                from_name,
                session: session.clone(),
                body,
            };
            state
                .offer(from, &target, session.clone(), offer)
                .err()
                .map(|e| route_error(e, Some(session)))
        }
        ClientMessage::Answer { to, session, body } => {
            if !valid_session(&session) {
                return Some(error(
                    ErrorCode::BadMessage,
                    "session must be 32 hex characters",
                ));
            }
            let answer = ServerMessage::Answer {
                from,
                from_name,
                session: session.clone(),
                body,
            };
            state
                .reply(from, to, &session, answer)
                .err()
                .map(|e| route_error(e, Some(session)))
        }
        ClientMessage::RelayCredentials { id, peer } => {
            let refused = |e: RouteError| ServerMessage::Error {
                code: e.code,
                message: e.message,
                id: Some(id),
                session: None,
            };
            let target: PeerRef = match peer.parse() {
                Ok(target) => target,
                Err(message) => {
                    return Some(refused(RouteError {
                        code: ErrorCode::PeerUnknown,
                        message,
                    }))
                }
            };
            Some(match state.online_peer(&target) {
                Ok(_) => ServerMessage::RelayCredentials {
                    id,
                    relays: state.relay_grants(&from, crate::relay::credentials::unix_now()),
                },
                Err(e) => refused(e),
            })
        }
        ClientMessage::Reject {
            to,
            session,
            reason,
        } => {
            if !valid_session(&session) {
                return Some(error(
                    ErrorCode::BadMessage,
                    "session must be 32 hex characters",
                ));
            }
            let reject = ServerMessage::Reject {
                from,
                session: session.clone(),
                reason: reason.chars().take(500).collect(),
            };
            state
                .reply(from, to, &session, reject)
                .err()
                .map(|e| route_error(e, Some(session)))
        }
        ClientMessage::Candidates {
            to,
            session,
            candidates,
            done,
        } => {
            if !valid_session(&session) {
                return Some(error(
                    ErrorCode::BadMessage,
                    "session must be 32 hex characters",
                ));
            }
            if candidates.len() > fog_core::trickle::MAX_TRICKLED {
                return Some(error(
                    ErrorCode::BadMessage,
                    format!(
                        "at most {} candidates per message",
                        fog_core::trickle::MAX_TRICKLED
                    ),
                ));
            }
            let target: PeerRef = match to.parse() {
                Ok(target) => target,
                Err(e) => return Some(route_error_of(ErrorCode::PeerUnknown, e, &session)),
            };
            let message = ServerMessage::Candidates {
                from,
                session: session.clone(),
                candidates,
                done,
            };
            state
                .trickle(from, &target, &session, message)
                .err()
                .map(|e| route_error(e, Some(session)))
        }
        ClientMessage::PathUpdate {
            to,
            session,
            candidates,
        } => {
            if !valid_session(&session) {
                return Some(error(
                    ErrorCode::BadMessage,
                    "session must be 32 hex characters",
                ));
            }
            if candidates.len() > MAX_PATH_UPDATE {
                return Some(error(
                    ErrorCode::BadMessage,
                    format!("at most {MAX_PATH_UPDATE} candidates per path update"),
                ));
            }
            let message = ServerMessage::PathUpdate {
                from,
                session: session.clone(),
                candidates,
            };
            state
                .path_update(to, message)
                .err()
                .map(|e| route_error(e, Some(session)))
        }
    }
}

/// Most candidates in one path update: a node's relayed addresses, one per relay.
const MAX_PATH_UPDATE: usize = 8;

fn route_error_of(code: ErrorCode, message: String, session: &str) -> ServerMessage {
    ServerMessage::Error {
        code,
        message,
        id: None,
        session: Some(session.to_string()),
    }
}
