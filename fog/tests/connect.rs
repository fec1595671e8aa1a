//! A signal server and nodes on loopback, driven the way a user drives them.

mod common;

use common::*;
use fog::{ConnectError, Event, PathKind, Protocol};
use futures_util::StreamExt;

#[tokio::test]
async fn connect_by_id_and_echo() {
    let server = server().await;
    let a = node(&server, None).await;
    let b = node(&server, None).await;
    serve_echo(&b);
    let conn = within("connect", 10, a.connect(b.peer_id().to_string()))
        .await
        .expect("connects");
    assert_eq!(conn.peer_id(), b.peer_id());
    assert_eq!(conn.protocol(), Protocol::Quic);
    assert_eq!(conn.path_kind(), PathKind::Direct);
    assert_eq!(conn.remote_addr().port(), b.local_addr().port());
    let reply = within("echo", 10, echo(&conn, b"hello".to_vec())).await;
    assert_eq!(reply, b"hello");
}

#[tokio::test]
async fn connect_by_name_and_the_responder_learns_who_dialled() {
    let server = server().await;
    let a = node(&server, Some("alice")).await;
    let b = node(&server, Some("1e:34:a1:44:2c:1c")).await;
    let mut incoming = b.incoming();
    let conn = within("connect", 10, a.connect("1e:34:a1:44:2c:1c"))
        .await
        .expect("connects by name");
    assert_eq!(conn.peer_id(), b.peer_id());
    let accepted = within("accept", 10, incoming.next())
        .await
        .expect("incoming");
    assert_eq!(accepted.peer_id(), a.peer_id());
    assert_eq!(conn.peer_name(), Some("1e:34:a1:44:2c:1c"));
    assert_eq!(accepted.peer_name(), Some("alice"));
}

#[tokio::test]
async fn a_megabyte_both_ways_on_several_streams_at_once() {
    let server = server().await;
    let a = node(&server, None).await;
    let b = node(&server, None).await;
    serve_echo(&b);
    let conn = within("connect", 10, a.connect(b.peer_id().to_string()))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..4u8 {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let data: Vec<u8> = (0..1_000_000u32).map(|n| (n as u8) ^ i).collect();
            let back = echo(&conn, data.clone()).await;
            assert!(back == data, "stream {i} came back different");
        }));
    }
    within("four 1 MB echoes", 30, async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
    let stats = conn.stats();
    assert!(stats.bytes_sent >= 4_000_000, "{stats:?}");
    assert!(stats.bytes_received >= 4_000_000, "{stats:?}");
}

#[tokio::test]
async fn an_unknown_peer_fails_fast_and_clearly() {
    let server = server().await;
    let a = node(&server, None).await;
    let stranger = fog::Identity::generate().peer_id();
    let started = std::time::Instant::now();
    let err = a.connect(stranger.to_string()).await.unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert!(
        matches!(
            ConnectError::find(&*err),
            Some(ConnectError::PeerUnknown(_))
        ),
        "{err}"
    );
    let err = a.connect("nobody-here").await.unwrap_err();
    assert!(
        matches!(
            ConnectError::find(&*err),
            Some(ConnectError::PeerUnknown(_))
        ),
        "{err}"
    );
}

#[tokio::test]
async fn an_offline_peer_is_reported_as_offline() {
    let server = server().await;
    let a = node(&server, None).await;
    let b = node(&server, Some("leaves")).await;
    let b_id = b.peer_id();
    b.shutdown().await;
    // The server notices the closed session; until then the offer may still be routed.
    let err = within("offline verdict", 15, async {
        loop {
            let err = a.connect("leaves").await.unwrap_err();
            match ConnectError::find(&*err) {
                Some(ConnectError::PeerOffline(_)) => return err,
                _ => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    assert!(err.to_string().contains("offline"), "{err}");
    let _ = b_id;
}

#[tokio::test]
async fn a_taken_name_is_refused_clearly() {
    let server = server().await;
    let _a = node(&server, Some("taken")).await;
    let err = fog::Node::builder()
        .signal(server.url())
        .name("taken")
        .bind()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("held by another key"), "{err}");
}

#[tokio::test]
async fn an_unreachable_signal_server_is_named() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let err = fog::Node::builder()
        .signal(format!("ws://127.0.0.1:{port}/ws"))
        .bind()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("signal server unreachable"),
        "{err}"
    );
}

#[tokio::test]
async fn events_tell_the_story_of_a_connection() {
    let server = server().await;
    let a = node(&server, None).await;
    let b = node(&server, None).await;
    serve_echo(&b);
    let mut events = a.events();
    let conn = within("connect", 10, a.connect(b.peer_id().to_string()))
        .await
        .unwrap();
    echo(&conn, b"x".to_vec()).await;
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    let has = |f: &dyn Fn(&Event) -> bool| seen.iter().any(f);
    assert!(
        has(&|e| matches!(e, Event::CandidateGathered { .. })),
        "{seen:?}"
    );
    assert!(has(&|e| matches!(e, Event::OfferSent { .. })));
    assert!(has(&|e| matches!(e, Event::AnswerReceived { .. })));
    assert!(has(&|e| matches!(e, Event::CheckSent { .. })));
    assert!(has(&|e| matches!(e, Event::CheckSucceeded { .. })));
    assert!(has(&|e| matches!(e, Event::PathSelected { .. })));
    assert!(has(&|e| matches!(e, Event::ProtocolSelected { .. })));
    assert!(has(&|e| matches!(e, Event::Connected { .. })));
    assert!(has(&|e| matches!(e, Event::StreamOpened { .. })));
}

#[tokio::test]
async fn registration_is_an_event_for_those_who_subscribe_before_binding() {
    let server = server().await;
    let builder = fog::Node::builder()
        .signal(server.url())
        .name("early")
        .bind_addr("127.0.0.1:0".parse().unwrap());
    let mut events = builder.subscribe();
    let node = builder.bind().await.unwrap();
    assert_eq!(
        events.try_recv().unwrap(),
        Event::Registered {
            peer: node.peer_id(),
            name: Some("early".into())
        }
    );
}

#[tokio::test]
async fn both_sides_hear_of_a_closed_connection() {
    let server = server().await;
    let a = node(&server, None).await;
    let b = node(&server, None).await;
    let mut incoming = b.incoming();
    let mut b_events = b.events();
    let conn = within("connect", 10, a.connect(b.peer_id().to_string()))
        .await
        .unwrap();
    let accepted = within("accept", 10, incoming.next()).await.unwrap();
    let mut a_events = a.events();
    conn.close("bye");
    // The responder learns it from its stream call, and says so as an event.
    let err = within("accept_bi ends", 10, accepted.accept_bi())
        .await
        .err()
        .expect("the closed connection yields no stream");
    assert!(err.to_string().contains("closed"), "{err}");
    within("responder disconnected event", 10, async {
        loop {
            if let Ok(Event::Disconnected { peer, .. }) = b_events.recv().await {
                assert_eq!(peer, a.peer_id());
                break;
            }
        }
    })
    .await;
    drop(conn);
    within("dialer disconnected event", 10, async {
        loop {
            if let Ok(Event::Disconnected { peer, .. }) = a_events.recv().await {
                assert_eq!(peer, b.peer_id());
                break;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn nodes_learn_their_nat_from_the_announced_stun_server_and_offer_it() {
    let stun = fog::server::stun::StunServer::bind(fog::server::stun::StunConfig {
        primary: "127.0.0.1:0".parse().unwrap(),
        alternate: None,
    })
    .await
    .unwrap();
    let server = fog::server::SignalServer::bind(fog::server::SignalConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        stun: vec![stun.primary().to_string()],
        ..Default::default()
    })
    .await
    .unwrap();
    let builder = fog::Node::builder()
        .signal(server.url())
        .bind_addr("127.0.0.1:0".parse().unwrap());
    let mut a_events = builder.subscribe();
    let a = builder.bind().await.unwrap();
    assert_eq!(a.registration().stun, vec![stun.primary().to_string()]);
    let b = node(&server, None).await;
    serve_echo(&b);
    let report = within("nat verdict", 10, a.nat_profile())
        .await
        .expect("a verdict");
    assert_eq!(report.profile.public.unwrap().ip().to_string(), "127.0.0.1");
    within("nat event", 10, async {
        loop {
            if let Ok(Event::NatChanged { profile }) = a_events.recv().await {
                assert_eq!(profile, report.profile);
                break;
            }
        }
    })
    .await;
    // The NAT probe layer is now part of a's stack, and connecting still works.
    let conn = within("connect", 10, a.connect(b.peer_id().to_string()))
        .await
        .unwrap();
    assert_eq!(echo(&conn, b"nat".to_vec()).await, b"nat");
}
