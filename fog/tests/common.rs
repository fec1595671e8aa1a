//! Helpers shared by the node tests: a signal server on loopback and echoing nodes.
#![allow(dead_code)]

use std::time::Duration;

use fog::{Connection, Node};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A signal server on an ephemeral loopback port.
pub async fn server() -> fog::server::SignalServer {
    fog::server::SignalServer::bind(fog::server::SignalConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
    .await
    .expect("signal server binds")
}

/// A node on loopback registered at `server`.
pub async fn node(server: &fog::server::SignalServer, name: Option<&str>) -> Node {
    let mut builder = Node::builder()
        .signal(server.url())
        .bind_addr("127.0.0.1:0".parse().unwrap());
    if let Some(name) = name {
        builder = builder.name(name);
    }
    builder.bind().await.expect("node binds and registers")
}

/// Echoes every stream of every incoming connection of `node`.
pub fn serve_echo(node: &Node) {
    let mut incoming = node.incoming();
    tokio::spawn(async move {
        while let Some(conn) = incoming.next().await {
            tokio::spawn(echo_streams(conn));
        }
    });
}

async fn echo_streams(conn: Connection) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut recv, &mut send).await;
            let _ = send.shutdown().await;
        });
    }
}

/// Sends `data` on a new stream and returns what comes back.
pub async fn echo(conn: &Connection, data: Vec<u8>) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.expect("stream opens");
    let writer = tokio::spawn(async move {
        send.write_all(&data).await.expect("write");
        send.shutdown().await.expect("finish");
    });
    let mut back = Vec::new();
    recv.read_to_end(&mut back).await.expect("read");
    writer.await.unwrap();
    back
}

/// Bounds a test step.
pub async fn within<T>(what: &str, secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {secs} s"))
}
