//! The signal protocol: JSON messages over a WebSocket between nodes and the signal server, and
//! the [`Signaller`] a signal layer uses to exchange offers and answers.

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::attempt::{Candidate, NatProfile, PeerRef, Protocol, SessionKeys};
use crate::error::ConnectError;
use crate::identity::PeerId;

/// Default WebSocket path of the signal server.
pub const SIGNAL_PATH: &str = "/ws";
/// Default signal server port.
pub const SIGNAL_PORT: u16 = 7600;
/// Largest message the server handles; larger ones are answered with `too_large`.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Protocol version sent in the challenge.
pub const PROTOCOL_VERSION: u32 = 1;

/// The bytes a node signs to register: a domain tag, the server's nonce, the node's key.
pub fn registration_message(nonce: &[u8], peer: &PeerId) -> Vec<u8> {
    let mut message = b"fog-register-v1:".to_vec();
    message.extend_from_slice(nonce);
    message.extend_from_slice(peer.as_bytes());
    message
}

/// One side's half of a session: candidates, protocols and (in offers) the check secret.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDescription {
    /// The connectivity-check secret, hex; only in offers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Candidate addresses.
    #[serde(default)]
    pub candidates: Vec<Candidate>,
    /// Accepted protocols, preferred first.
    #[serde(default)]
    pub protocols: Vec<Protocol>,
    /// NAT profile, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatProfile>,
    /// More candidates follow in `candidates` messages, the last one marked `done`.
    #[serde(default)]
    pub trickle: bool,
    /// A WebRTC offer or answer (the `rtc` protocol brings its own ICE, so it needs no
    /// candidates of fog's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtc: Option<RtcDescription>,
}

/// A WebRTC session description, signed with the sender's node key so that its DTLS
/// fingerprint (and all else in it) is bound to that key: the signal server can pass it on
/// but not replace it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtcDescription {
    /// The SDP, with all ICE candidates gathered.
    pub sdp: String,
    /// Hex Ed25519 signature over [`rtc_signed_message`].
    pub signature: String,
}

/// The bytes a peer signs for its WebRTC description: a domain tag, the session id (hex) and
/// the SDP. The session id keeps a description from being replayed into another session.
pub fn rtc_signed_message(session_hex: &str, sdp: &str) -> Vec<u8> {
    let mut message = b"fog-rtc-v1:".to_vec();
    message.extend_from_slice(session_hex.as_bytes());
    message.push(b':');
    message.extend_from_slice(sdp.as_bytes());
    message
}

/// Error codes the server sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not a known message.
    BadMessage,
    /// Larger than [`MAX_MESSAGE`].
    TooLarge,
    /// A request that needs registration came first.
    NotRegistered,
    /// A second registration on one connection.
    AlreadyRegistered,
    /// The challenge signature does not verify.
    BadSignature,
    /// The name is held by another key.
    NameTaken,
    /// The name is not a valid peer name.
    InvalidName,
    /// No such peer id or name.
    PeerUnknown,
    /// Known, but not connected now.
    PeerOffline,
}

/// Messages from a node to the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Answer to the challenge: proves the node holds `peer`'s key.
    Register {
        /// The node's key.
        peer: PeerId,
        /// Optional name to bind to the key.
        #[serde(default)]
        name: Option<String>,
        /// Hex signature over [`registration_message`].
        signature: String,
    },
    /// Look up a name.
    Resolve {
        /// Request id, echoed in the reply.
        id: u64,
        /// The name.
        name: String,
    },
    /// An offer to a peer (by id or name).
    Offer {
        /// Peer id or name.
        to: String,
        /// Session id, hex.
        session: String,
        /// Our half.
        body: SessionDescription,
    },
    /// The answer to an offer.
    Answer {
        /// The offering peer.
        to: PeerId,
        /// Session id, hex.
        session: String,
        /// Our half.
        body: SessionDescription,
    },
    /// Refusal of an offer.
    Reject {
        /// The offering peer.
        to: PeerId,
        /// Session id, hex.
        session: String,
        /// Why.
        reason: String,
    },
    /// Candidates found after the offer or answer went out (trickle), for the other peer of
    /// an offered session.
    Candidates {
        /// The other peer (id or name, as in the offer).
        to: String,
        /// Session id, hex.
        session: String,
        /// The new candidates.
        candidates: Vec<Candidate>,
        /// Nothing more will follow.
        #[serde(default)]
        done: bool,
    },
    /// New relayed candidates for a connection that is up (its relay allocation was made
    /// again), to its peer. Unlike [`Candidates`](Self::Candidates) it needs no open offer:
    /// connections outlive offers, and the server's restarts. The receiver takes it only for a
    /// session of its own with the sender, whom the server names.
    PathUpdate {
        /// The other peer of the connection.
        to: PeerId,
        /// Session id, hex.
        session: String,
        /// The candidates that replace the sender's relayed ones.
        candidates: Vec<Candidate>,
    },
    /// Asks for relay credentials to reach `peer`. The server grants them only to registered
    /// nodes, and only for a peer that is registered and online now, so a relay allocation is
    /// always on the way to a real peer.
    RelayCredentials {
        /// Request id, echoed in the reply.
        id: u64,
        /// The peer to reach: its peer id or name.
        peer: String,
    },
}

/// Credentials for one relay (TURN REST API scheme: the relay checks them against a secret it
/// shares with the signal server).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayGrant {
    /// The relay (RFC 7065), e.g. `turn:203.0.113.1:3478?transport=udp`.
    pub url: String,
    /// `"<expires>:<peer-id>"`: the node the relay counts quotas against.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))`.
    pub password: String,
    /// Unix seconds after which the relay refuses these credentials.
    pub expires: u64,
}

/// Messages from the server to a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Sent on connect: sign this nonce to register.
    Challenge {
        /// 32 random bytes, hex.
        nonce: String,
        /// Protocol version.
        version: u32,
    },
    /// Registration accepted.
    Registered {
        /// The node's key.
        peer: PeerId,
        /// Its name.
        name: Option<String>,
        /// STUN servers to use (`host:port`).
        stun: Vec<String>,
        /// Relay servers to use.
        relays: Vec<String>,
    },
    /// A name lookup's result.
    Resolved {
        /// The request id.
        id: u64,
        /// The name.
        name: String,
        /// Its key.
        peer: PeerId,
    },
    /// A peer's offer.
    Offer {
        /// The offering peer, as the server verified it.
        from: PeerId,
        /// Its name, when it has one.
        from_name: Option<String>,
        /// Session id.
        session: String,
        /// Its half.
        body: SessionDescription,
    },
    /// A peer's answer.
    Answer {
        /// The answering peer, as the server verified it.
        from: PeerId,
        /// Its name, when it has one.
        from_name: Option<String>,
        /// Session id.
        session: String,
        /// Its half.
        body: SessionDescription,
    },
    /// A peer refused our offer.
    Reject {
        /// The refusing peer.
        from: PeerId,
        /// Session id.
        session: String,
        /// Why.
        reason: String,
    },
    /// The other peer's new relayed candidates for a connection that is up.
    PathUpdate {
        /// The sending peer, as the server verified it.
        from: PeerId,
        /// Session id.
        session: String,
        /// The candidates that replace its relayed ones.
        candidates: Vec<Candidate>,
    },
    /// The other peer's trickled candidates.
    Candidates {
        /// The sending peer, as the server verified it.
        from: PeerId,
        /// Session id.
        session: String,
        /// The new candidates.
        candidates: Vec<Candidate>,
        /// Nothing more will follow.
        done: bool,
    },
    /// A request failed.
    Error {
        /// What failed.
        code: ErrorCode,
        /// In words.
        message: String,
        /// The request id, for `resolve`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The session, for `offer` / `answer`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<String>,
    },
    /// Relay credentials for a `relay_credentials` request; empty when the server knows no
    /// relay.
    RelayCredentials {
        /// The request id.
        id: u64,
        /// One grant per relay URL.
        relays: Vec<RelayGrant>,
    },
}

/// What the peer answered to an offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerFrom {
    /// The answering peer, as the signal server verified it.
    pub peer: PeerId,
    /// Its name.
    pub name: Option<String>,
    /// Its half of the session.
    pub body: SessionDescription,
}

/// How a signal layer reaches the remote peer. The WebSocket client of the `fog` crate
/// implements it; tests implement it in memory.
pub trait Signaller: Send + Sync + 'static {
    /// Sends an offer for `session` to `target` and waits for its answer.
    fn offer(
        &self,
        target: PeerRef,
        session: SessionKeys,
        body: SessionDescription,
    ) -> BoxFuture<'static, Result<AnswerFrom, ConnectError>>;

    /// Sends our answer to `to`'s offer.
    fn answer(
        &self,
        to: PeerId,
        session: SessionKeys,
        body: SessionDescription,
    ) -> BoxFuture<'static, Result<(), ConnectError>>;

    /// Sends candidates found after the offer or answer to the other peer of `session`
    /// (`done` when no more follow). A signaller without trickle support drops them, and
    /// [`subscribe_candidates`](Self::subscribe_candidates) says so to the other side.
    fn trickle(
        &self,
        to: PeerRef,
        session: SessionKeys,
        candidates: Vec<Candidate>,
        done: bool,
    ) -> BoxFuture<'static, Result<(), ConnectError>> {
        let _ = (to, session, candidates, done);
        Box::pin(async { Ok(()) })
    }

    /// Sends `candidates` (our relayed ones, made again) to `to`, the peer of the connection
    /// of `session`, which replaces our old relayed candidates with them. A signaller that
    /// cannot fails.
    fn update_path(
        &self,
        to: PeerId,
        session: SessionKeys,
        candidates: Vec<Candidate>,
    ) -> BoxFuture<'static, Result<(), ConnectError>> {
        let _ = (to, session, candidates);
        Box::pin(async {
            Err(ConnectError::SignalRefused(
                "path updates are not supported".into(),
            ))
        })
    }

    /// Relay credentials for reaching `peer`, from the signal server; empty when it knows no
    /// relay (or this signaller cannot ask).
    fn relay_credentials(
        &self,
        peer: PeerRef,
    ) -> BoxFuture<'static, Result<Vec<RelayGrant>, ConnectError>> {
        let _ = peer;
        Box::pin(async { Ok(Vec::new()) })
    }

    /// The other peer's trickled candidates for `session`, from before this call on; `None`
    /// when this signaller cannot receive them.
    fn subscribe_candidates(
        &self,
        session: &SessionKeys,
    ) -> Option<tokio::sync::watch::Receiver<crate::trickle::CandidateList>> {
        let _ = session;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_json() {
        let m = ClientMessage::Resolve {
            id: 3,
            name: "n".into(),
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#"{"type":"resolve","id":3,"name":"n"}"#);
        assert_eq!(serde_json::from_str::<ClientMessage>(&json).unwrap(), m);
    }

    #[test]
    fn relay_credentials_are_tagged_json() {
        let ask = ClientMessage::RelayCredentials {
            id: 7,
            peer: "1e:34".into(),
        };
        let json = serde_json::to_string(&ask).unwrap();
        assert_eq!(
            json,
            r#"{"type":"relay_credentials","id":7,"peer":"1e:34"}"#
        );
        assert_eq!(serde_json::from_str::<ClientMessage>(&json).unwrap(), ask);
        let grant = ServerMessage::RelayCredentials {
            id: 7,
            relays: vec![RelayGrant {
                url: "turn:203.0.113.1:3478?transport=udp".into(),
                username: "1700000000:abc".into(),
                password: "cGFzcw==".into(),
                expires: 1_700_000_000,
            }],
        };
        let json = serde_json::to_string(&grant).unwrap();
        assert_eq!(
            json,
            r#"{"type":"relay_credentials","id":7,"relays":[{"url":"turn:203.0.113.1:3478?transport=udp","username":"1700000000:abc","password":"cGFzcw==","expires":1700000000}]}"#
        );
        assert_eq!(serde_json::from_str::<ServerMessage>(&json).unwrap(), grant);
    }

    #[test]
    fn unknown_and_malformed_messages_are_errors() {
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"nope"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"offer"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>("[1,2").is_err());
    }
}
