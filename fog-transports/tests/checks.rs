//! Connectivity checks between two real sockets: only the session's secret gets an answer.

use std::time::Duration;

use fog_core::{Identity, Prober, SessionKeys};
use fog_transports::{FogSocket, QuicTransport};

async fn socket() -> (std::sync::Arc<FogSocket>, QuicTransport) {
    let socket = FogSocket::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // The endpoint's receive loop is what reads the socket and answers checks.
    let transport = QuicTransport::new(socket.clone(), Identity::generate()).unwrap();
    (socket, transport)
}

#[tokio::test]
async fn a_check_with_the_session_secret_is_answered_and_a_forged_one_is_not() {
    let (a, _ta) = socket().await;
    let (b, _tb) = socket().await;
    let session = SessionKeys::generate();
    let _b_answers = b.watch(&session);
    let mut replies = a.watch(&session);

    // A forger knows the session id (it is not secret on the wire) but not the secret.
    let forged = SessionKeys {
        id: session.id,
        secret: [0x55; 32],
    };
    a.send_check(&forged, b.local_addr()).unwrap();
    a.send_check(&session, b.local_addr()).unwrap();

    let reply = tokio::time::timeout(Duration::from_secs(5), replies.recv())
        .await
        .expect("the genuine check is answered within 5 s")
        .unwrap();
    assert_eq!(reply.remote, b.local_addr());
    assert!(reply.rtt < Duration::from_secs(5));
    // Loopback keeps order: the forged check arrived first and got nothing.
    assert!(replies.try_recv().is_err(), "the forged check was answered");
}

#[tokio::test]
async fn checks_of_an_unknown_session_are_ignored() {
    let (a, _ta) = socket().await;
    let (b, _tb) = socket().await;
    let known = SessionKeys::generate();
    let unknown = SessionKeys::generate();
    let _b_answers = b.watch(&known);
    let mut unknown_replies = a.watch(&unknown);
    let mut known_replies = a.watch(&known);
    a.send_check(&unknown, b.local_addr()).unwrap();
    a.send_check(&known, b.local_addr()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), known_replies.recv())
        .await
        .expect("the known session is answered")
        .unwrap();
    assert!(unknown_replies.try_recv().is_err());
}
