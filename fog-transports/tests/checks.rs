//! Connectivity checks between two real sockets: only the session's secret gets an answer.

use std::time::Duration;

use fog_core::{CheckEvent, Identity, Prober, SessionKeys};
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
    let mut b_events = b.watch(&session);
    let mut replies = a.watch(&session);

    // A forger knows the session id (it is not secret on the wire) but not the secret.
    let forged = SessionKeys {
        id: session.id,
        secret: [0x55; 32],
    };
    a.send_check(&forged, b.local_addr()).unwrap();
    a.send_check(&session, b.local_addr()).unwrap();

    let event = tokio::time::timeout(Duration::from_secs(5), replies.recv())
        .await
        .expect("the genuine check is answered within 5 s")
        .unwrap();
    let CheckEvent::Answered(reply) = event else {
        panic!("expected an answer, got {event:?}");
    };
    assert_eq!(reply.remote, b.local_addr());
    assert!(reply.rtt < Duration::from_secs(5));
    // Loopback keeps order: the forged check arrived first and got nothing.
    assert!(replies.try_recv().is_err(), "the forged check was answered");
    // B saw exactly one valid check, from A's address (a peer-reflexive candidate for it).
    assert_eq!(
        b_events.try_recv().unwrap(),
        CheckEvent::Received {
            from: a.local_addr()
        }
    );
    assert!(
        b_events.try_recv().is_err(),
        "the forged check reached the watcher"
    );
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

#[tokio::test]
async fn the_socket_learns_its_server_reflexive_address_over_stun() {
    let (a, _ta) = socket().await;
    // A minimal STUN server: answers with the source address it saw.
    let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server_addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        let stun = fog_server_answer;
        while let Ok((len, from)) = server.recv_from(&mut buf).await {
            if let Some(reply) = stun(&buf[..len], from) {
                let _ = server.send_to(&reply, from).await;
            }
        }
    });
    let mapped = tokio::time::timeout(Duration::from_secs(5), a.server_reflexive(server_addr))
        .await
        .expect("answered within 5 s");
    assert_eq!(mapped, Some(a.local_addr()));
}

/// A Binding success answer for `request` from `from`, built by hand: header, then
/// XOR-MAPPED-ADDRESS.
fn fog_server_answer(request: &[u8], from: std::net::SocketAddr) -> Option<Vec<u8>> {
    if request.len() < 20 || request[0..2] != [0x00, 0x01] {
        return None;
    }
    let std::net::SocketAddr::V4(v4) = from else {
        return None;
    };
    let mut reply = vec![0x01, 0x01, 0x00, 0x0c];
    reply.extend_from_slice(&request[4..20]);
    let port = v4.port() ^ 0x2112;
    let ip = u32::from(*v4.ip()) ^ 0x2112_a442;
    reply.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0x00, 0x01]);
    reply.extend_from_slice(&port.to_be_bytes());
    reply.extend_from_slice(&ip.to_be_bytes());
    Some(reply)
}

#[tokio::test]
async fn a_captured_check_replayed_from_elsewhere_gets_nothing() {
    use fog_transports::check::{self, CheckKind};
    let (b, _tb) = socket().await;
    let session = SessionKeys::generate();
    let mut b_events = b.watch(&session);
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = [0u8; 128];

    // The peer's genuine check is answered.
    let genuine = check::encode(CheckKind::Request, &session.id, &[1; 12], &session.secret);
    peer.send_to(&genuine, b.local_addr()).await.unwrap();
    let (len, _) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(check::decode(&buf[..len]).unwrap().txid, [1; 12]);

    // A copy of it from another address is ignored; a new check from there is not (so the
    // attacker's socket works and order proves the copy got nothing).
    attacker.send_to(&genuine, b.local_addr()).await.unwrap();
    let fresh = check::encode(CheckKind::Request, &session.id, &[2; 12], &session.secret);
    attacker.send_to(&fresh, b.local_addr()).await.unwrap();
    let (len, _) = tokio::time::timeout(Duration::from_secs(5), attacker.recv_from(&mut buf))
        .await
        .expect("the fresh check is answered")
        .unwrap();
    assert_eq!(
        check::decode(&buf[..len]).unwrap().txid,
        [2; 12],
        "the replay was answered"
    );

    // The watcher heard of the peer, then of the fresh check only.
    let peer_addr = peer.local_addr().unwrap();
    let attacker_addr = attacker.local_addr().unwrap();
    assert_eq!(
        b_events.recv().await.unwrap(),
        CheckEvent::Received { from: peer_addr }
    );
    assert_eq!(
        b_events.recv().await.unwrap(),
        CheckEvent::Received {
            from: attacker_addr
        }
    );
    assert!(b_events.try_recv().is_err());
}

/// A peer's check that left through its relay allocation says so: its source is known as
/// relayed before the punch sees it, even when the peer's relay candidate has not come yet.
#[tokio::test]
async fn a_check_sent_through_the_peers_relay_marks_its_source_relayed() {
    use fog_transports::check::{self, CheckKind};
    let (b, _tb) = socket().await;
    let session = SessionKeys::generate();
    let mut b_events = b.watch(&session);
    let through_relay = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let direct = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = [0u8; 128];

    let relayed = check::encode_relayed(CheckKind::Request, &session.id, &[1; 12], &session.secret);
    through_relay
        .send_to(&relayed, b.local_addr())
        .await
        .unwrap();
    let plain = check::encode(CheckKind::Request, &session.id, &[2; 12], &session.secret);
    direct.send_to(&plain, b.local_addr()).await.unwrap();
    for socket in [&through_relay, &direct] {
        tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
            .await
            .expect("answered")
            .unwrap();
    }
    let relay_addr = through_relay.local_addr().unwrap();
    let direct_addr = direct.local_addr().unwrap();
    assert_eq!(
        b_events.recv().await.unwrap(),
        CheckEvent::Received { from: relay_addr }
    );
    assert!(b.is_relayed(relay_addr), "the flagged source is relayed");
    assert!(
        !b.is_relayed(direct_addr),
        "a plain check's source is direct"
    );
}
