//! A serving node never trusts what a peer's service request says: names that leave the inbox,
//! sizes beyond the disk, more bytes than announced, a wrong hash, a node without an inbox, a
//! service that was not exposed. Two nodes and a signal server on loopback, as a peer that
//! speaks the service protocol directly would.

mod lab;

use std::time::Duration;

use fog::service::{
    open_service, read_message, Exposed, Inbox, Reply, Request, ServiceError, Services,
};
use fog::{Connection, Node};
use futures_util::StreamExt;
use lab::sha256_hex;
use tokio::io::AsyncWriteExt;

struct Pair {
    _server: fog::server::SignalServer,
    _serving: Node,
    client: Node,
    conn: Connection,
}

/// A node serving `services`, and a connection to it from another.
async fn pair(services: Services) -> Pair {
    let server = fog::server::SignalServer::bind(fog::server::SignalConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    let serving = Node::builder()
        .signal(server.url())
        .name("serving")
        .bind()
        .await
        .unwrap();
    let mut incoming = serving.incoming();
    tokio::spawn(async move {
        while let Some(conn) = incoming.next().await {
            tokio::spawn(services.clone().serve_connection(conn));
        }
    });
    let client = Node::builder().signal(server.url()).bind().await.unwrap();
    let conn = tokio::time::timeout(Duration::from_secs(10), client.connect("serving"))
        .await
        .expect("connects within 10 s")
        .unwrap();
    Pair {
        _server: server,
        _serving: serving,
        client,
        conn,
    }
}

fn refusal(result: Result<impl std::fmt::Debug, ServiceError>) -> String {
    match result {
        Err(ServiceError::Refused { kind, .. }) => kind,
        other => panic!("not refused: {other:?}"),
    }
}

fn send_request(name: &str, size: u64, sha256: &str) -> Request {
    Request::Send {
        name: name.into(),
        size,
        sha256: sha256.into(),
    }
}

#[tokio::test]
async fn inbox_requests_are_checked_before_and_after_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let p = pair(Services::new().inbox(Inbox::open(dir.path()).unwrap())).await;
    let hash = sha256_hex(b"hello");
    for name in [
        "../escape",
        "/etc/passwd",
        "a/b",
        "..",
        ".fog-partial",
        "x\ny",
    ] {
        let r = open_service(&p.conn, &send_request(name, 5, &hash)).await;
        assert_eq!(refusal(r), "bad_name", "{name:?}");
    }
    let r = open_service(&p.conn, &send_request("a", 5, "../../etc")).await;
    assert_eq!(refusal(r), "bad_request");
    let r = open_service(&p.conn, &send_request("huge", u64::MAX / 2, &hash)).await;
    assert_eq!(refusal(r), "too_large");

    // More bytes than announced: refused, and nothing is kept.
    let (mut stream, offset) = open_service(&p.conn, &send_request("long", 5, &hash))
        .await
        .unwrap();
    assert_eq!(offset, Some(0));
    stream.write_all(b"hello, and more").await.unwrap();
    let _ = stream.shutdown().await;
    match read_message::<_, Reply>(&mut stream).await.unwrap() {
        Reply::Error { kind, .. } => assert_eq!(kind, "too_long"),
        other => panic!("{other:?}"),
    }

    // The bytes do not match the announced hash: refused, nothing saved.
    let (mut stream, _) = open_service(&p.conn, &send_request("liar", 5, &hash))
        .await
        .unwrap();
    stream.write_all(b"HELLO").await.unwrap();
    stream.shutdown().await.unwrap();
    match read_message::<_, Reply>(&mut stream).await.unwrap() {
        Reply::Error { kind, .. } => assert_eq!(kind, "hash_mismatch"),
        other => panic!("{other:?}"),
    }

    // A short transfer keeps its part and says so; the next one goes on from it.
    let (mut stream, _) = open_service(&p.conn, &send_request("ok.txt", 5, &hash))
        .await
        .unwrap();
    stream.write_all(b"hel").await.unwrap();
    stream.shutdown().await.unwrap();
    match read_message::<_, Reply>(&mut stream).await.unwrap() {
        Reply::Error { kind, .. } => assert_eq!(kind, "incomplete"),
        other => panic!("{other:?}"),
    }
    let (mut stream, offset) = open_service(&p.conn, &send_request("ok.txt", 5, &hash))
        .await
        .unwrap();
    assert_eq!(offset, Some(3));
    stream.write_all(b"lo").await.unwrap();
    stream.shutdown().await.unwrap();
    match read_message::<_, Reply>(&mut stream).await.unwrap() {
        Reply::Saved { path, bytes, .. } => assert_eq!((path.as_str(), bytes), ("ok.txt", 5)),
        other => panic!("{other:?}"),
    }

    // Nothing but the one good file landed, inside the inbox or out of it.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [".fog-partial", "ok.txt"]);
    assert_eq!(
        std::fs::read_dir(dir.path().join(".fog-partial"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(std::fs::read(dir.path().join("ok.txt")).unwrap(), b"hello");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    drop(p.client);
}

#[tokio::test]
async fn a_node_offers_only_what_it_was_told_to() {
    let web = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let exposed = web.local_addr().unwrap();
    let hidden = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hidden_addr = hidden.local_addr().unwrap();
    let p =
        pair(Services::new().expose(Exposed::resolve(&[exposed.to_string()]).await.unwrap())).await;
    let r = fog::service::forward_stream(&p.conn, Some(&hidden_addr.to_string())).await;
    assert_eq!(refusal(r), "not_exposed");
    let r = fog::service::forward_stream(&p.conn, Some("localhost:22")).await;
    assert_eq!(refusal(r), "not_exposed");
    let r = open_service(&p.conn, &send_request("f", 1, &sha256_hex(b"x"))).await;
    assert_eq!(refusal(r), "no_inbox");
    // The exposed one is reached, by address or as the only one.
    for to in [Some(exposed.to_string()), None] {
        let mut stream = fog::service::forward_stream(&p.conn, to.as_deref())
            .await
            .unwrap();
        let (mut tcp, _) = tokio::time::timeout(Duration::from_secs(5), web.accept())
            .await
            .expect("the exposed service is connected")
            .unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut got)
            .await
            .unwrap();
        assert_eq!(&got, b"ping");
    }
    // The hidden service never saw a connection.
    let accepted = tokio::time::timeout(Duration::from_millis(1), hidden.accept()).await;
    assert!(accepted.is_err(), "the hidden service was reached");
}
