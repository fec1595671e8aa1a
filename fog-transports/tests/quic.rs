//! The QUIC transport between real sockets on loopback: key pinning both ways.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fog_core::{
    Attempt, Candidate, ConnectError, EventBus, Identity, PathKind, PeerId, RemoteInfo,
    SelectedPath, SessionKeys,
};
use fog_transports::{FogSocket, QuicTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

struct Side {
    identity: Identity,
    socket: Arc<FogSocket>,
    transport: QuicTransport,
}

async fn side() -> Side {
    let identity = Identity::generate();
    let socket = FogSocket::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let transport = QuicTransport::new(socket.clone(), identity.clone()).unwrap();
    Side {
        identity,
        socket,
        transport,
    }
}

fn path(from: SocketAddr, to: SocketAddr) -> Option<SelectedPath> {
    Some(SelectedPath {
        remote: Candidate::host(to),
        local: from,
        kind: PathKind::Direct,
        rtt: Duration::from_millis(1),
    })
}

/// A dialling attempt from `me` that expects `expected` at `to`.
fn dial(me: &Side, expected: PeerId, to: &Side, session: SessionKeys) -> Attempt {
    let mut attempt = Attempt::dial(me.identity.peer_id(), expected.into(), EventBus::new());
    attempt.session = session;
    attempt.path = path(me.socket.local_addr(), to.socket.local_addr());
    attempt
}

/// The answering attempt of `me`, for an offer that came from `from`.
fn respond(me: &Side, from: PeerId, dialer: &Side, session: SessionKeys) -> Attempt {
    let remote = RemoteInfo {
        peer_id: from,
        name: None,
        candidates: vec![Candidate::host(dialer.socket.local_addr())],
        nat: None,
        protocols: vec![fog_core::Protocol::Quic],
        trickle: false,
    };
    let mut attempt = Attempt::respond(me.identity.peer_id(), session, remote, EventBus::new());
    attempt.path = path(me.socket.local_addr(), dialer.socket.local_addr());
    attempt
}

fn cause(e: &fog_core::BoxError) -> ConnectError {
    ConnectError::find(&**e).unwrap_or_else(|| panic!("no ConnectError in {e}"))
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), f)
        .await
        .expect("step finished within 15 s")
}

#[tokio::test]
async fn the_right_keys_connect_and_carry_streams() {
    let (a, b) = (side().await, side().await);
    let session = SessionKeys::generate();
    let answering = tokio::spawn(b.transport.clone().oneshot(respond(
        &b,
        a.identity.peer_id(),
        &a,
        session,
    )));
    let dialled = bounded(
        a.transport
            .clone()
            .oneshot(dial(&a, b.identity.peer_id(), &b, session)),
    )
    .await
    .expect("dial succeeds");
    let answered = bounded(answering).await.unwrap().expect("answer succeeds");
    assert_eq!(dialled.peer_id(), b.identity.peer_id());
    assert_eq!(answered.peer_id(), a.identity.peer_id());

    let (mut send, mut recv) = dialled.open_bi().await.unwrap();
    send.write_all(b"over quic").await.unwrap();
    send.shutdown().await.unwrap();
    let (mut back_send, mut back_recv) = bounded(answered.accept_bi()).await.unwrap();
    let mut got = Vec::new();
    back_recv.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"over quic");
    back_send.write_all(b"ok").await.unwrap();
    back_send.shutdown().await.unwrap();
    let mut reply = Vec::new();
    recv.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"ok");
}

#[tokio::test]
async fn datagrams_arrive_encrypted_and_oversized_ones_are_refused() {
    let (a, b) = (side().await, side().await);
    let session = SessionKeys::generate();
    let answering = tokio::spawn(b.transport.clone().oneshot(respond(
        &b,
        a.identity.peer_id(),
        &a,
        session,
    )));
    let dialled = bounded(
        a.transport
            .clone()
            .oneshot(dial(&a, b.identity.peer_id(), &b, session)),
    )
    .await
    .unwrap();
    let answered = bounded(answering).await.unwrap().unwrap();
    let max = dialled.max_datagram_size().expect("QUIC has datagrams");
    assert!(max >= 1000, "{max}");
    // Loopback loses nothing, but send a few in case the first one races the handshake's end.
    for i in 0..3u8 {
        dialled.send_datagram(&[i; 100]).unwrap();
    }
    let got = bounded(answered.recv_datagram()).await.unwrap();
    assert_eq!(got.len(), 100);
    answered.send_datagram(b"pong").unwrap();
    assert_eq!(bounded(dialled.recv_datagram()).await.unwrap(), b"pong");
    let err = dialled.send_datagram(&vec![0u8; max + 1]).unwrap_err();
    assert!(
        matches!(err, fog_core::ConnectionError::TooLarge { size, .. } if size == max + 1),
        "{err}"
    );
}

#[tokio::test]
async fn a_dialer_refuses_a_server_with_the_wrong_key() {
    let (a, b) = (side().await, side().await);
    let someone_else = Identity::generate().peer_id();
    let session = SessionKeys::generate();
    let answering = tokio::spawn(b.transport.clone().oneshot(respond(
        &b,
        a.identity.peer_id(),
        &a,
        session,
    )));
    let err = bounded(
        a.transport
            .clone()
            .oneshot(dial(&a, someone_else, &b, session)),
    )
    .await
    .expect_err("a server without the expected key is refused");
    assert!(
        matches!(cause(&err), ConnectError::HandshakeRefused(_)),
        "{err}"
    );
    let err = bounded(answering)
        .await
        .unwrap()
        .expect_err("the responder fails too");
    assert!(
        matches!(cause(&err), ConnectError::HandshakeRefused(_)),
        "{err}"
    );
}

#[tokio::test]
async fn a_responder_refuses_a_dialer_that_is_not_the_offering_peer() {
    let (alice, bob, mallory) = (side().await, side().await, side().await);
    let session = SessionKeys::generate();
    // Bob expects Alice (the signal server introduced her); Mallory dials with her own key.
    let answering = tokio::spawn(bob.transport.clone().oneshot(respond(
        &bob,
        alice.identity.peer_id(),
        &mallory,
        session,
    )));
    let mallory_result = bounded(mallory.transport.clone().oneshot(dial(
        &mallory,
        bob.identity.peer_id(),
        &bob,
        session,
    )))
    .await;
    let err = bounded(answering)
        .await
        .unwrap()
        .expect_err("Bob refuses Mallory");
    assert!(
        matches!(cause(&err), ConnectError::HandshakeRefused(_)),
        "{err}"
    );
    assert!(err.to_string().contains("presented key"), "{err}");
    // Whatever Mallory got, Bob closed it: she can open nothing.
    if let Ok(conn) = mallory_result {
        let reason = bounded(conn.closed()).await;
        assert!(reason.contains("unexpected peer key"), "{reason}");
    }
}

#[tokio::test]
async fn without_a_path_the_transport_says_what_is_missing() {
    let a = side().await;
    let attempt = Attempt::dial(
        a.identity.peer_id(),
        Identity::generate().peer_id().into(),
        EventBus::new(),
    );
    let err = a.transport.clone().oneshot(attempt).await.unwrap_err();
    assert!(
        matches!(
            cause(&err),
            ConnectError::MissingInput {
                layer: "QuicTransport",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(a.socket.local_addr().ip().to_string(), "127.0.0.1");
}
