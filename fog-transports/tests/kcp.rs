//! The KCP transport (KCP on the shared socket, TLS, yamux) between real sockets on loopback:
//! streams, a transfer that arrives intact, and key pinning both ways.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fog_core::Protocol;
use fog_core::{
    Attempt, Candidate, ConnectError, EventBus, Identity, PathKind, PeerId, RemoteInfo,
    SelectedPath, SessionKeys,
};
use fog_transports::{FogSocket, KcpTransport, QuicTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

struct Side {
    identity: Identity,
    socket: Arc<FogSocket>,
    transport: KcpTransport,
    /// Its endpoint reads the socket, for every transport on it.
    _quic: QuicTransport,
}

async fn side() -> Side {
    let identity = Identity::generate();
    let socket = FogSocket::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let quic = QuicTransport::new(socket.clone(), identity.clone()).unwrap();
    let transport = KcpTransport::new(socket.clone(), identity.clone());
    Side {
        identity,
        socket,
        transport,
        _quic: quic,
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
    attempt.protocols = vec![Protocol::Kcp];
    attempt.protocol = Some(Protocol::Kcp);
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
        protocols: vec![Protocol::Kcp],
        trickle: false,
    };
    let mut attempt = Attempt::respond(me.identity.peer_id(), session, remote, EventBus::new());
    attempt.protocol = Some(Protocol::Kcp);
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

/// Pseudo-random bytes.
fn data(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn the_right_keys_connect_and_carry_streams_and_a_transfer_intact() {
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
    assert_eq!(dialled.protocol(), Protocol::Kcp);
    assert_eq!(dialled.remote_addr(), b.socket.local_addr());

    // The answering side echoes every stream.
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = answered.accept_bi().await {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut recv, &mut send).await;
                let _ = send.shutdown().await;
            });
        }
    });
    // Three streams at once, one of them 4 MiB.
    let big = data(4 * 1024 * 1024);
    let mut runs = Vec::new();
    for payload in [b"one".to_vec(), big.clone(), b"three".to_vec()] {
        let (mut send, mut recv) = bounded(dialled.open_bi()).await.unwrap();
        runs.push(tokio::spawn(async move {
            let writer = tokio::spawn(async move {
                send.write_all(&payload).await.unwrap();
                send.shutdown().await.unwrap();
                payload
            });
            let mut got = Vec::new();
            recv.read_to_end(&mut got).await.unwrap();
            (writer.await.unwrap(), got)
        }));
    }
    for run in runs {
        let (sent, got) = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the echo within 60 s")
            .unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the echo differs");
    }
    assert!(dialled.stats().bytes_sent >= big.len() as u64);
    // KCP has no datagrams: a clear error, not a silent drop.
    assert_eq!(dialled.max_datagram_size(), None);
    let err = dialled.send_datagram(b"x").unwrap_err();
    assert!(
        matches!(err, fog_core::ConnectionError::Unsupported { .. }),
        "{err}"
    );
    dialled.close("done");
    let reason = bounded(dialled.closed()).await;
    assert!(!reason.is_empty());
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
    let cause = cause(&err);
    assert!(
        matches!(
            cause,
            ConnectError::HandshakeRefused(_) | ConnectError::Timeout(_)
        ),
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
    // Whatever Mallory got, it carries nothing: Bob dropped the session.
    if let Ok(conn) = mallory_result {
        let opened = tokio::time::timeout(Duration::from_secs(45), async {
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(b"hello?")
                .await
                .map_err(|e| fog_core::ConnectionError::Stream(e.to_string()))?;
            send.shutdown()
                .await
                .map_err(|e| fog_core::ConnectionError::Stream(e.to_string()))?;
            let mut got = Vec::new();
            recv.read_to_end(&mut got)
                .await
                .map_err(|e| fog_core::ConnectionError::Stream(e.to_string()))?;
            Ok::<_, fog_core::ConnectionError>(got)
        })
        .await;
        assert!(
            !matches!(opened, Ok(Ok(ref got)) if got == b"hello?"),
            "Mallory was echoed"
        );
    }
}
