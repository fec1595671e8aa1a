//! The QUIC transport between real sockets on loopback: key pinning both ways.

mod common;

use common::*;
use fog_core::{Attempt, ConnectError, EventBus, Identity, PeerId, Protocol, SessionKeys};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

fn dial(me: &Side, expected: PeerId, to: &Side, session: SessionKeys) -> Attempt {
    dial_over(Protocol::Quic, me, expected, to, session)
}

fn respond(me: &Side, from: PeerId, dialer: &Side, session: SessionKeys) -> Attempt {
    respond_over(Protocol::Quic, me, from, dialer, session)
}

#[tokio::test]
async fn the_right_keys_connect_and_carry_streams() {
    let (a, b) = (side().await, side().await);
    let session = SessionKeys::generate();
    let answering = tokio::spawn(b.quic.clone().oneshot(respond(
        &b,
        a.identity.peer_id(),
        &a,
        session,
    )));
    let dialled = bounded(
        a.quic
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
    let answering = tokio::spawn(b.quic.clone().oneshot(respond(
        &b,
        a.identity.peer_id(),
        &a,
        session,
    )));
    let dialled = bounded(
        a.quic
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
async fn without_a_path_the_transport_says_what_is_missing() {
    let a = side().await;
    let attempt = Attempt::dial(
        a.identity.peer_id(),
        Identity::generate().peer_id().into(),
        EventBus::new(),
    );
    let err = a.quic.clone().oneshot(attempt).await.unwrap_err();
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
