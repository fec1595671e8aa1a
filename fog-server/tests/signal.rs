//! The signal server, driven over real WebSockets: registration by signature challenge, names,
//! offer/answer routing, and error replies to malformed, oversized and out-of-order messages.

use std::future::Future;
use std::time::Duration;

use fog_core::signal::{
    registration_message, ClientMessage, ErrorCode, ServerMessage, MAX_MESSAGE, PROTOCOL_VERSION,
};
use fog_core::{Identity, PeerId, SessionDescription};
use fog_server::{SignalConfig, SignalServer};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Bound on one whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on waiting for one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Runs a test body, failing it instead of hanging.
async fn bounded<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .expect("test timed out");
}

async fn server() -> SignalServer {
    SignalServer::bind(SignalConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
    .await
    .expect("bind the signal server")
}

/// A session id: 16 bytes as 32 hex characters.
fn session(n: u8) -> String {
    fog_core::hex::encode(&[n; 16])
}

/// A connected WebSocket client that has read its challenge.
struct Client {
    ws: Ws,
    nonce: [u8; 32],
}

impl Client {
    /// Connects and reads the challenge.
    async fn connect(url: &str) -> Client {
        let (mut ws, _) =
            tokio::time::timeout(REPLY_TIMEOUT, tokio_tungstenite::connect_async(url))
                .await
                .expect("connect timed out")
                .expect("connect to the signal server");
        let challenge = next_message(&mut ws).await;
        let ServerMessage::Challenge { nonce, version } = challenge else {
            panic!("expected a challenge, got {challenge:?}");
        };
        assert_eq!(version, PROTOCOL_VERSION);
        let nonce = fog_core::hex::decode_array::<32>(&nonce).expect("the nonce is 32 hex bytes");
        Client { ws, nonce }
    }

    /// Connects and registers `identity` under `name`, asserting success.
    async fn registered(url: &str, identity: &Identity, name: Option<&str>) -> Client {
        let mut client = Client::connect(url).await;
        let reply = client.register(identity, name).await;
        match reply {
            ServerMessage::Registered {
                peer, name: got, ..
            } => {
                assert_eq!(peer, identity.peer_id());
                assert_eq!(got.as_deref(), name);
            }
            other => panic!("expected registered, got {other:?}"),
        }
        client
    }

    /// Sends a correctly signed registration and returns the reply.
    async fn register(&mut self, identity: &Identity, name: Option<&str>) -> ServerMessage {
        let peer = identity.peer_id();
        let signature = identity.sign(&registration_message(&self.nonce, &peer));
        self.send(&ClientMessage::Register {
            peer,
            name: name.map(str::to_string),
            signature: fog_core::hex::encode(&signature),
        })
        .await;
        self.recv().await
    }

    async fn send(&mut self, message: &ClientMessage) {
        let text = serde_json::to_string(message).unwrap();
        self.send_raw(Message::Text(text)).await;
    }

    async fn send_raw(&mut self, message: Message) {
        tokio::time::timeout(REPLY_TIMEOUT, self.ws.send(message))
            .await
            .expect("send timed out")
            .expect("send to the signal server");
    }

    async fn recv(&mut self) -> ServerMessage {
        next_message(&mut self.ws).await
    }

    /// Reads the next message and asserts it is an error with `code`.
    async fn expect_error(&mut self, code: ErrorCode) -> ServerMessage {
        let reply = self.recv().await;
        match &reply {
            ServerMessage::Error { code: got, .. } if *got == code => {}
            other => panic!("expected error {code:?}, got {other:?}"),
        }
        reply
    }

    /// Resolves `name` and asserts it is bound to `peer`.
    async fn expect_resolves(&mut self, id: u64, name: &str, peer: PeerId) {
        self.send(&ClientMessage::Resolve {
            id,
            name: name.to_string(),
        })
        .await;
        match self.recv().await {
            ServerMessage::Resolved {
                id: got_id,
                name: got_name,
                peer: got_peer,
            } => {
                assert_eq!(got_id, id);
                assert_eq!(got_name, name);
                assert_eq!(got_peer, peer);
            }
            other => panic!("expected resolved, got {other:?}"),
        }
    }

    async fn offer(&mut self, to: &str, session: &str) {
        self.send(&ClientMessage::Offer {
            to: to.to_string(),
            session: session.to_string(),
            body: SessionDescription::default(),
        })
        .await;
    }

    /// Offers to `to` and asserts that the reply is an error with `code` for `session`.
    async fn offer_fails(&mut self, to: &str, session: &str, code: ErrorCode) {
        self.offer(to, session).await;
        let reply = self.expect_error(code).await;
        if let ServerMessage::Error { session: got, .. } = reply {
            assert_eq!(got.as_deref(), Some(session));
        }
    }

    /// Offers from `self` to `to`, and checks that `to` sees it stamped with `from`, answers it,
    /// and that the answer comes back stamped with `to_id`.
    async fn exchange(
        &mut self,
        from: PeerId,
        to_client: &mut Client,
        to: PeerId,
        target: &str,
        session: &str,
    ) {
        self.offer(target, session).await;
        match to_client.recv().await {
            ServerMessage::Offer {
                from: got,
                session: got_session,
                ..
            } => {
                assert_eq!(got, from);
                assert_eq!(got_session, session);
            }
            other => panic!("expected an offer, got {other:?}"),
        }
        to_client
            .send(&ClientMessage::Answer {
                to: from,
                session: session.to_string(),
                body: SessionDescription::default(),
            })
            .await;
        match self.recv().await {
            ServerMessage::Answer {
                from: got,
                session: got_session,
                ..
            } => {
                assert_eq!(got, to);
                assert_eq!(got_session, session);
            }
            other => panic!("expected an answer, got {other:?}"),
        }
    }
}

/// The next JSON message from the server, skipping control frames.
async fn next_message(ws: &mut Ws) -> ServerMessage {
    loop {
        let frame = tokio::time::timeout(REPLY_TIMEOUT, ws.next())
            .await
            .expect("no reply from the signal server")
            .expect("the signal server closed the connection")
            .expect("websocket error");
        match frame {
            Message::Text(text) => {
                return serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("server sent a non-fog message {text:?}: {e}"))
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame from the server: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_errors_and_the_session_survives() {
    bounded(async {
        let server = server().await;
        let mut client = Client::connect(&server.url()).await;

        client.send_raw(Message::Text("{not json".into())).await;
        client.expect_error(ErrorCode::BadMessage).await;

        client
            .send_raw(Message::Text(r#"{"type":"nope","id":1}"#.into()))
            .await;
        client.expect_error(ErrorCode::BadMessage).await;

        client.send_raw(Message::Binary(vec![1, 2, 3, 4])).await;
        client.expect_error(ErrorCode::BadMessage).await;

        // Above MAX_MESSAGE, below the frame limit: an error, not a closed connection.
        let big = format!(
            r#"{{"type":"resolve","id":1,"name":"{}"}}"#,
            "a".repeat(100 * 1024)
        );
        assert!(big.len() > MAX_MESSAGE);
        client.send_raw(Message::Text(big)).await;
        client.expect_error(ErrorCode::TooLarge).await;

        // The same session still registers and resolves.
        let identity = Identity::generate();
        match client.register(&identity, Some("survivor")).await {
            ServerMessage::Registered { peer, name, .. } => {
                assert_eq!(peer, identity.peer_id());
                assert_eq!(name.as_deref(), Some("survivor"));
            }
            other => panic!("expected registered, got {other:?}"),
        }
        client
            .expect_resolves(7, "survivor", identity.peer_id())
            .await;

        // An unknown name is peer_unknown, with the request id echoed.
        client
            .send(&ClientMessage::Resolve {
                id: 8,
                name: "nobody".into(),
            })
            .await;
        match client.expect_error(ErrorCode::PeerUnknown).await {
            ServerMessage::Error { id, .. } => assert_eq!(id, Some(8)),
            _ => unreachable!(),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_before_registering_and_double_registration_are_refused() {
    bounded(async {
        let server = server().await;
        let other = Identity::generate();
        let mut client = Client::connect(&server.url()).await;

        client
            .send(&ClientMessage::Resolve {
                id: 1,
                name: "anyone".into(),
            })
            .await;
        client.expect_error(ErrorCode::NotRegistered).await;

        client
            .offer(&other.peer_id().to_string(), &session(1))
            .await;
        client.expect_error(ErrorCode::NotRegistered).await;

        client
            .send(&ClientMessage::Answer {
                to: other.peer_id(),
                session: session(1),
                body: SessionDescription::default(),
            })
            .await;
        client.expect_error(ErrorCode::NotRegistered).await;

        let identity = Identity::generate();
        assert!(matches!(
            client.register(&identity, None).await,
            ServerMessage::Registered { .. }
        ));
        // Once more with the same key, and with another key: both refused.
        for (identity, name) in [(&identity, None), (&other, Some("second"))] {
            let reply = client.register(identity, name).await;
            assert!(
                matches!(
                    reply,
                    ServerMessage::Error {
                        code: ErrorCode::AlreadyRegistered,
                        ..
                    }
                ),
                "{reply:?}"
            );
        }
        // The refused key was not registered by the attempt.
        client
            .send(&ClientMessage::Resolve {
                id: 2,
                name: "second".into(),
            })
            .await;
        client.expect_error(ErrorCode::PeerUnknown).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_are_refused_and_the_key_stays_unreachable() {
    bounded(async {
        let server = server().await;
        let url = server.url();
        let watcher = Identity::generate();
        let mut registered = Client::registered(&url, &watcher, None).await;

        let victim = Identity::generate();
        let attacker = Identity::generate();
        let mut client = Client::connect(&url).await;
        let bad_register = |signature: Vec<u8>, name: &str| ClientMessage::Register {
            peer: victim.peer_id(),
            name: Some(name.to_string()),
            signature: fog_core::hex::encode(&signature),
        };

        // Claims the victim's key, signed by another key.
        let forged = attacker.sign(&registration_message(&client.nonce, &victim.peer_id()));
        client.send(&bad_register(forged.to_vec(), "victim")).await;
        client.expect_error(ErrorCode::BadSignature).await;

        // The victim's own key, but over another nonce (a replayed or stale challenge).
        let mut wrong_nonce = client.nonce;
        wrong_nonce[0] ^= 1;
        let stale = victim.sign(&registration_message(&wrong_nonce, &victim.peer_id()));
        client.send(&bad_register(stale.to_vec(), "victim")).await;
        client.expect_error(ErrorCode::BadSignature).await;

        // A signature valid on another session does not carry over to this one.
        let other = Client::connect(&url).await;
        let replayed = victim.sign(&registration_message(&other.nonce, &victim.peer_id()));
        client
            .send(&bad_register(replayed.to_vec(), "victim"))
            .await;
        client.expect_error(ErrorCode::BadSignature).await;

        // Not hex, and too short.
        client
            .send(&ClientMessage::Register {
                peer: victim.peer_id(),
                name: None,
                signature: "zz".repeat(64),
            })
            .await;
        client.expect_error(ErrorCode::BadSignature).await;
        client.send(&bad_register(vec![0; 10], "victim")).await;
        client.expect_error(ErrorCode::BadSignature).await;

        // None of the attempts registered the key or bound the name.
        registered
            .offer_fails(
                &victim.peer_id().to_string(),
                &session(3),
                ErrorCode::PeerUnknown,
            )
            .await;
        registered
            .offer_fails("victim", &session(4), ErrorCode::PeerUnknown)
            .await;
        registered
            .send(&ClientMessage::Resolve {
                id: 5,
                name: "victim".into(),
            })
            .await;
        registered.expect_error(ErrorCode::PeerUnknown).await;
        assert_eq!(server.state().online(), 1);

        // The session that failed may still register its own key, and is then reachable.
        assert!(matches!(
            client.register(&attacker, None).await,
            ServerMessage::Registered { .. }
        ));
        registered
            .exchange(
                watcher.peer_id(),
                &mut client,
                attacker.peer_id(),
                &attacker.peer_id().to_string(),
                &session(6),
            )
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_belong_to_the_first_key_and_must_be_valid() {
    bounded(async {
        let server = server().await;
        let url = server.url();
        let alice = Identity::generate();
        let mallory = Identity::generate();
        let mut a = Client::registered(&url, &alice, Some("alice")).await;

        let mut m = Client::connect(&url).await;
        let reply = m.register(&mallory, Some("alice")).await;
        assert!(
            matches!(
                reply,
                ServerMessage::Error {
                    code: ErrorCode::NameTaken,
                    ..
                }
            ),
            "{reply:?}"
        );
        let too_long = "n".repeat(65);
        for name in ["bad name", "", "é", "a/b", too_long.as_str()] {
            let reply = m.register(&mallory, Some(name)).await;
            assert!(
                matches!(
                    reply,
                    ServerMessage::Error {
                        code: ErrorCode::InvalidName,
                        ..
                    }
                ),
                "name {name:?}: {reply:?}"
            );
        }
        // After the refusals the session registers under a free name.
        match m.register(&mallory, Some("mallory")).await {
            ServerMessage::Registered { name, .. } => assert_eq!(name.as_deref(), Some("mallory")),
            other => panic!("expected registered, got {other:?}"),
        }
        m.expect_resolves(1, "alice", alice.peer_id()).await;
        a.expect_resolves(2, "mallory", mallory.peer_id()).await;

        // The name stays bound to alice's key while alice is offline...
        a.ws.close(None).await.ok();
        drop(a);
        let mut m2 = Client::connect(&url).await;
        let reply = m2.register(&mallory, Some("alice")).await;
        assert!(
            matches!(
                reply,
                ServerMessage::Error {
                    code: ErrorCode::NameTaken,
                    ..
                }
            ),
            "{reply:?}"
        );
        m.expect_resolves(3, "alice", alice.peer_id()).await;
        // ...and alice's key takes it again.
        let _a = Client::registered(&url, &alice, Some("alice")).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_and_answers_are_routed_with_the_verified_sender() {
    bounded(async {
        let server = server().await;
        let url = server.url();
        let alice = Identity::generate();
        let bob = Identity::generate();
        let carol = Identity::generate();
        let mut a = Client::registered(&url, &alice, Some("alice")).await;
        let mut b = Client::registered(&url, &bob, Some("bob")).await;

        // By name, with a forged "from" that the server must ignore.
        let forged = serde_json::json!({
            "type": "offer",
            "to": "bob",
            "from": carol.peer_id().to_string(),
            "from_name": "carol",
            "session": session(1),
            "body": {"secret": "00ff", "candidates": [], "protocols": []},
        });
        a.send_raw(Message::Text(forged.to_string())).await;
        match b.recv().await {
            ServerMessage::Offer {
                from,
                from_name,
                session: got,
                body,
            } => {
                assert_eq!(from, alice.peer_id());
                assert_eq!(from_name.as_deref(), Some("alice"));
                assert_eq!(got, session(1));
                assert_eq!(body.secret.as_deref(), Some("00ff"));
            }
            other => panic!("expected an offer, got {other:?}"),
        }
        b.send(&ClientMessage::Answer {
            to: alice.peer_id(),
            session: session(1),
            body: SessionDescription::default(),
        })
        .await;
        match a.recv().await {
            ServerMessage::Answer {
                from,
                from_name,
                session: got,
                ..
            } => {
                assert_eq!(from, bob.peer_id());
                assert_eq!(from_name.as_deref(), Some("bob"));
                assert_eq!(got, session(1));
            }
            other => panic!("expected an answer, got {other:?}"),
        }

        // By id, and the other way round.
        a.exchange(
            alice.peer_id(),
            &mut b,
            bob.peer_id(),
            &bob.peer_id().to_string(),
            &session(2),
        )
        .await;
        b.exchange(bob.peer_id(), &mut a, alice.peer_id(), "alice", &session(3))
            .await;

        // A rejection reaches the offerer, stamped too.
        a.offer("bob", &session(4)).await;
        assert!(matches!(b.recv().await, ServerMessage::Offer { .. }));
        b.send(&ClientMessage::Reject {
            to: alice.peer_id(),
            session: session(4),
            reason: "busy".into(),
        })
        .await;
        match a.recv().await {
            ServerMessage::Reject {
                from,
                session: got,
                reason,
            } => {
                assert_eq!(from, bob.peer_id());
                assert_eq!(got, session(4));
                assert_eq!(reason, "busy");
            }
            other => panic!("expected a reject, got {other:?}"),
        }

        // Malformed sessions.
        for bad in ["", "abc", &"0".repeat(31), &"0".repeat(34), &"g".repeat(32)] {
            a.offer("bob", bad).await;
            a.expect_error(ErrorCode::BadMessage).await;
            b.send(&ClientMessage::Answer {
                to: alice.peer_id(),
                session: bad.to_string(),
                body: SessionDescription::default(),
            })
            .await;
            b.expect_error(ErrorCode::BadMessage).await;
        }

        // Never seen: by id, by name, and a target that is neither.
        a.offer_fails(
            &carol.peer_id().to_string(),
            &session(5),
            ErrorCode::PeerUnknown,
        )
        .await;
        a.offer_fails("carol", &session(6), ErrorCode::PeerUnknown)
            .await;
        a.offer_fails("not a peer!", &session(7), ErrorCode::PeerUnknown)
            .await;
        a.send(&ClientMessage::Answer {
            to: carol.peer_id(),
            session: session(8),
            body: SessionDescription::default(),
        })
        .await;
        // An answer needs an open offer from its target: none was made.
        a.expect_error(ErrorCode::BadMessage).await;

        // Registered, then gone: offline. Retry until the server has seen the disconnect; each
        // round ends with a resolve, whose reply shows that the offer before it was handled.
        let mut c = Client::registered(&url, &carol, Some("carol")).await;
        c.ws.close(None).await.ok();
        drop(c);
        let mut offline = false;
        for round in 0..1000u64 {
            a.offer(&carol.peer_id().to_string(), &session(9)).await;
            a.send(&ClientMessage::Resolve {
                id: round,
                name: "alice".into(),
            })
            .await;
            match a.recv().await {
                ServerMessage::Resolved { id, .. } => {
                    assert_eq!(id, round);
                    continue;
                }
                ServerMessage::Error {
                    code: ErrorCode::PeerOffline,
                    session: got,
                    ..
                } => {
                    assert_eq!(got, Some(session(9)));
                    assert!(matches!(a.recv().await, ServerMessage::Resolved { .. }));
                    offline = true;
                    break;
                }
                other => panic!("expected resolved or peer_offline, got {other:?}"),
            }
        }
        assert!(offline, "the server never noticed carol leaving");
        a.offer_fails("carol", &session(10), ErrorCode::PeerOffline)
            .await;
        a.send(&ClientMessage::Answer {
            to: carol.peer_id(),
            session: session(11),
            body: SessionDescription::default(),
        })
        .await;
        a.expect_error(ErrorCode::BadMessage).await;

        // Alice and bob are unaffected.
        a.exchange(alice.peer_id(), &mut b, bob.peer_id(), "bob", &session(12))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_clients_do_not_disturb_others() {
    bounded(async {
        let server = server().await;
        let url = server.url();
        let third = Identity::generate();
        let fourth = Identity::generate();
        let mut c3 = Client::registered(&url, &third, Some("third")).await;

        // Not even HTTP.
        let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
        raw.write_all(b"\x00\xffGARBAGE\r\n\r\n\x16\x03\x01")
            .await
            .unwrap();
        raw.shutdown().await.ok();

        // A WebSocket client sending garbage.
        let mut garbage = Client::connect(&url).await;
        garbage
            .send_raw(Message::Text("\u{0}\u{1}]]]".into()))
            .await;
        garbage.expect_error(ErrorCode::BadMessage).await;
        garbage.send_raw(Message::Binary(vec![0xff; 4096])).await;
        garbage.expect_error(ErrorCode::BadMessage).await;

        // A registered client sending a 2 MiB frame: its connection is closed.
        let huge_sender = Identity::generate();
        let mut huge = Client::registered(&url, &huge_sender, Some("huge")).await;
        let _ = huge
            .ws
            .send(Message::Text("x".repeat(2 * 1024 * 1024)))
            .await;
        loop {
            let frame = tokio::time::timeout(REPLY_TIMEOUT, huge.ws.next())
                .await
                .expect("the server did not close the 2 MiB sender");
            match frame {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("expected the connection to close, got {other:?}"),
            }
        }

        // The third client is still served, and exchanges with a fourth that joins now.
        let mut c4 = Client::registered(&url, &fourth, Some("fourth")).await;
        c3.exchange(
            third.peer_id(),
            &mut c4,
            fourth.peer_id(),
            "fourth",
            &session(1),
        )
        .await;
        c4.exchange(
            fourth.peer_id(),
            &mut c3,
            third.peer_id(),
            &third.peer_id().to_string(),
            &session(2),
        )
        .await;
        c3.expect_resolves(1, "fourth", fourth.peer_id()).await;
        // The garbage sender's session is also still usable.
        let late = Identity::generate();
        assert!(matches!(
            garbage.register(&late, None).await,
            ServerMessage::Registered { .. }
        ));
        garbage.expect_resolves(2, "third", third.peer_id()).await;
        drop(raw);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_are_refused() {
    bounded(async {
        let server = server().await;
        let addr = server.local_addr();
        for path in ["/other", "/", "/ws/extra"] {
            let result = tokio::time::timeout(
                REPLY_TIMEOUT,
                tokio_tungstenite::connect_async(format!("ws://{addr}{path}")),
            )
            .await
            .expect("connect timed out");
            match result {
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    assert_eq!(response.status(), 404, "{path}")
                }
                Err(other) => panic!("{path}: expected an HTTP refusal, got {other}"),
                Ok(_) => panic!("{path}: the server accepted a WebSocket off /ws"),
            }
        }
        // /ws still works.
        let identity = Identity::generate();
        let _client = Client::registered(&server.url(), &identity, None).await;
    })
    .await;
}

#[tokio::test]
async fn only_the_peer_an_offer_went_to_may_answer_it_and_only_once() {
    bounded(async {
        let server = server().await;
        let url = server.url();
        let (alice, bob, mallory) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let mut a = Client::registered(&url, &alice, Some("alice")).await;
        let mut b = Client::registered(&url, &bob, Some("bob")).await;
        let mut m = Client::registered(&url, &mallory, None).await;

        a.offer("bob", &session(20)).await;
        assert!(matches!(b.recv().await, ServerMessage::Offer { .. }));

        // Mallory saw nothing, but guesses the session: refused, and alice hears nothing of it.
        m.send(&ClientMessage::Answer {
            to: alice.peer_id(),
            session: session(20),
            body: SessionDescription::default(),
        })
        .await;
        m.expect_error(ErrorCode::BadMessage).await;
        m.send(&ClientMessage::Reject {
            to: alice.peer_id(),
            session: "not-hex".into(),
            reason: "x".into(),
        })
        .await;
        m.expect_error(ErrorCode::BadMessage).await;

        // Bob answers once; a second answer to the same offer is refused.
        b.send(&ClientMessage::Answer {
            to: alice.peer_id(),
            session: session(20),
            body: SessionDescription::default(),
        })
        .await;
        match a.recv().await {
            ServerMessage::Answer {
                from, session: s, ..
            } => {
                assert_eq!(from, bob.peer_id());
                assert_eq!(s, session(20));
            }
            other => panic!("expected bob's answer, got {other:?}"),
        }
        b.send(&ClientMessage::Answer {
            to: alice.peer_id(),
            session: session(20),
            body: SessionDescription::default(),
        })
        .await;
        b.expect_error(ErrorCode::BadMessage).await;
    })
    .await;
}

#[tokio::test]
async fn trickled_candidates_flow_only_between_the_two_peers_of_an_offer() {
    bounded(async {
        let server = server().await;
        let url = server.url();
        let (alice, bob, mallory) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let mut a = Client::registered(&url, &alice, Some("alice-t")).await;
        let mut b = Client::registered(&url, &bob, Some("bob-t")).await;
        let mut m = Client::registered(&url, &mallory, None).await;
        let srflx = |port| fog_core::Candidate::srflx(([203, 0, 113, 7], port).into());
        let trickle = |to: &str, session: String, port, done| ClientMessage::Candidates {
            to: to.to_string(),
            session,
            candidates: vec![srflx(port)],
            done,
        };

        // Before any offer there is no session to trickle into.
        a.send(&trickle("bob-t", session(30), 1, false)).await;
        a.expect_error(ErrorCode::BadMessage).await;

        a.offer("bob-t", &session(30)).await;
        assert!(matches!(b.recv().await, ServerMessage::Offer { .. }));
        // The offerer trickles by name before the answer; the server stamps the sender.
        a.send(&trickle("bob-t", session(30), 2, false)).await;
        match b.recv().await {
            ServerMessage::Candidates {
                from,
                session: s,
                candidates,
                done,
            } => {
                assert_eq!(from, alice.peer_id());
                assert_eq!(s, session(30));
                assert_eq!(candidates, vec![srflx(2)]);
                assert!(!done);
            }
            other => panic!("expected candidates, got {other:?}"),
        }
        // The answerer trickles back after answering, and says it is done.
        b.send(&ClientMessage::Answer {
            to: alice.peer_id(),
            session: session(30),
            body: SessionDescription::default(),
        })
        .await;
        assert!(matches!(a.recv().await, ServerMessage::Answer { .. }));
        b.send(&trickle(&alice.peer_id().to_string(), session(30), 3, true))
            .await;
        match a.recv().await {
            ServerMessage::Candidates { from, done, .. } => {
                assert_eq!(from, bob.peer_id());
                assert!(done);
            }
            other => panic!("expected candidates, got {other:?}"),
        }

        // A third peer that knows the session cannot inject candidates into it, either way.
        m.send(&trickle("bob-t", session(30), 4, false)).await;
        m.expect_error(ErrorCode::BadMessage).await;
        m.send(&trickle(
            &alice.peer_id().to_string(),
            session(30),
            5,
            false,
        ))
        .await;
        m.expect_error(ErrorCode::BadMessage).await;

        // Too many candidates in one message are refused.
        a.send(&ClientMessage::Candidates {
            to: "bob-t".into(),
            session: session(30),
            candidates: (0..100).map(srflx).collect(),
            done: false,
        })
        .await;
        a.expect_error(ErrorCode::BadMessage).await;

        // Nothing of the refused messages reached alice or bob: the next thing each sees is
        // this fresh offer.
        b.offer("alice-t", &session(31)).await;
        match a.recv().await {
            ServerMessage::Offer { session: s, .. } => assert_eq!(s, session(31)),
            other => panic!("expected the fresh offer, got {other:?}"),
        }
    })
    .await;
}
