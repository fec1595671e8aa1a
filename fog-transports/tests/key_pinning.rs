//! Every transport refuses the wrong key, both ways: a dialer refuses a server without the key
//! it dials, and a responder refuses a dialer that is not the peer the signal server
//! introduced. Real sockets on loopback.

mod common;

use common::*;
use fog_core::{ConnectError, Identity, Protocol, SessionKeys};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROTOCOLS: [Protocol; 5] = [
    Protocol::Quic,
    Protocol::Kcp,
    Protocol::Utp,
    Protocol::Sctp,
    Protocol::Udp,
];

#[tokio::test]
async fn a_dialer_refuses_a_server_with_the_wrong_key() {
    for protocol in PROTOCOLS {
        let (a, b) = (side().await, side().await);
        let someone_else = Identity::generate().peer_id();
        let session = SessionKeys::generate();
        let answer = respond_over(protocol, &b, a.identity.peer_id(), &a, session);
        let dial = dial_over(protocol, &a, someone_else, &b, session);
        let answering = tokio::spawn(async move { run(&b, answer).await });
        let err = bounded(run(&a, dial))
            .await
            .expect_err("a server without the expected key is refused");
        assert!(
            matches!(cause(&err), ConnectError::HandshakeRefused(_)),
            "{protocol}: {err}"
        );
        // The responder fails as well: refused, or no handshake it could finish.
        let err = bounded(answering)
            .await
            .unwrap()
            .expect_err("the responder fails too");
        assert!(
            matches!(
                cause(&err),
                ConnectError::HandshakeRefused(_) | ConnectError::Timeout(_)
            ),
            "{protocol}: {err}"
        );
    }
}

#[tokio::test]
async fn a_responder_refuses_a_dialer_that_is_not_the_offering_peer() {
    for protocol in PROTOCOLS {
        let (alice, bob, mallory) = (side().await, side().await, side().await);
        let session = SessionKeys::generate();
        // Bob expects Alice (the signal server introduced her); Mallory dials with her own key.
        let answer = respond_over(protocol, &bob, alice.identity.peer_id(), &mallory, session);
        let dial = dial_over(protocol, &mallory, bob.identity.peer_id(), &bob, session);
        let answering = tokio::spawn(async move {
            let result = run(&bob, answer).await;
            (result, bob)
        });
        let mallory_result = bounded(run(&mallory, dial)).await;
        let (result, _bob) = bounded(answering).await.unwrap();
        let err = result.expect_err("Bob refuses Mallory");
        assert!(
            matches!(cause(&err), ConnectError::HandshakeRefused(_)),
            "{protocol}: {err}"
        );
        assert!(
            err.to_string().contains("presented key"),
            "{protocol}: {err}"
        );
        // Whatever Mallory got carries nothing: Bob dropped it.
        if let Ok(conn) = mallory_result {
            let echoed = tokio::time::timeout(std::time::Duration::from_secs(45), async {
                let (mut send, mut recv) = conn.open_bi().await.ok()?;
                send.write_all(b"hello?").await.ok()?;
                send.shutdown().await.ok()?;
                let mut got = Vec::new();
                recv.read_to_end(&mut got).await.ok()?;
                Some(got)
            })
            .await;
            assert!(
                !matches!(echoed, Ok(Some(ref got)) if !got.is_empty()),
                "{protocol}: Mallory got an answer"
            );
        }
    }
}
