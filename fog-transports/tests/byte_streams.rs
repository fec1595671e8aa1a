//! The transports built on a reliable byte stream (KCP and uTP on the shared socket, each with
//! TLS and yamux) between real sockets on loopback: several streams at once, a transfer that
//! arrives intact, the counters, and no datagrams.

mod common;

use std::time::Duration;

use common::*;
use fog_core::{Protocol, SessionKeys};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
async fn kcp_carries_streams_and_a_transfer_intact() {
    streams_and_a_transfer(Protocol::Kcp).await;
}

#[tokio::test]
async fn utp_carries_streams_and_a_transfer_intact() {
    streams_and_a_transfer(Protocol::Utp).await;
}

#[tokio::test]
async fn sctp_carries_streams_and_a_transfer_intact() {
    streams_and_a_transfer(Protocol::Sctp).await;
}

async fn streams_and_a_transfer(protocol: Protocol) {
    let (a, b) = (side().await, side().await);
    let session = SessionKeys::generate();
    let answer = respond_over(protocol, &b, a.identity.peer_id(), &a, session);
    let dial = dial_over(protocol, &a, b.identity.peer_id(), &b, session);
    let b_addr = b.socket.local_addr();
    let answering = tokio::spawn(async move { run(&b, answer).await.map(|conn| (conn, b)) });
    let dialled = bounded(run(&a, dial)).await.expect("dial succeeds");
    let (answered, _b) = bounded(answering).await.unwrap().expect("answer succeeds");
    assert_eq!(answered.peer_id(), a.identity.peer_id());
    assert_eq!(dialled.protocol(), protocol);
    assert_eq!(dialled.remote_addr(), b_addr);

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
    // No datagrams on a byte stream: a clear error, not a silent drop.
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
