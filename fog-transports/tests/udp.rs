//! The raw UDP transport on loopback: sealed datagrams both ways, with streams beside them;
//! a datagram replayed or forged by a party on the path is dropped; oversized ones are
//! refused before they leave; closing ends the wait for datagrams.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use fog_core::{ConnectionError, Protocol, SessionKeys};
use fog_transports::udp::{MAX_UDP_DATAGRAM, UDP_PROTOCOL};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

/// fog's tag of a transport datagram: a marker byte, then the protocol.
const TRANSPORT_TAG: u8 = 0x3a;

/// A forwarder on the path from the dialer to `to` (and back) that keeps a copy of every raw
/// UDP datagram the dialer sends.
struct Tap {
    socket: Arc<UdpSocket>,
    captured: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Tap {
    async fn start(to: SocketAddr) -> Tap {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let captured: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let (io, kept) = (socket.clone(), captured.clone());
        let task = tokio::spawn(async move {
            let mut dialer = None;
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = io.recv_from(&mut buf).await {
                let datagram = &buf[..n];
                if from == to {
                    if let Some(dialer) = dialer {
                        let _ = io.send_to(datagram, dialer).await;
                    }
                } else {
                    dialer = Some(from);
                    if datagram.starts_with(&[TRANSPORT_TAG, UDP_PROTOCOL]) {
                        kept.lock().unwrap().push(datagram.to_vec());
                    }
                    let _ = io.send_to(datagram, to).await;
                }
            }
        });
        Tap {
            socket,
            captured,
            task,
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn datagrams_cross_sealed_and_replays_and_forgeries_are_dropped() {
    let (a, b) = (side().await, side().await);
    let b_addr = b.socket.local_addr();
    let tap = Tap::start(b_addr).await;
    let session = SessionKeys::generate();
    let answer = respond_over(Protocol::Udp, &b, a.identity.peer_id(), &a, session);
    let mut dial = dial_over(Protocol::Udp, &a, b.identity.peer_id(), &b, session);
    dial.path.as_mut().unwrap().remote.addr = tap.socket.local_addr().unwrap();
    let answering = tokio::spawn(async move { run(&b, answer).await.map(|conn| (conn, b)) });
    let dialled = bounded(run(&a, dial)).await.expect("dial succeeds");
    let (answered, _b) = bounded(answering).await.unwrap().expect("answer succeeds");
    assert_eq!(dialled.protocol(), Protocol::Udp);
    assert_eq!(answered.peer_id(), a.identity.peer_id());
    assert_eq!(dialled.max_datagram_size(), Some(MAX_UDP_DATAGRAM));

    // Both ways, the largest size included.
    let big = vec![0xabu8; MAX_UDP_DATAGRAM];
    dialled.send_datagram(&big).unwrap();
    assert_eq!(bounded(answered.recv_datagram()).await.unwrap(), big);
    answered.send_datagram(b"pong").unwrap();
    assert_eq!(bounded(dialled.recv_datagram()).await.unwrap(), b"pong");

    // Streams work beside the datagrams.
    let (mut send, _recv) = bounded(dialled.open_bi()).await.unwrap();
    send.write_all(b"over a stream").await.unwrap();
    send.shutdown().await.unwrap();
    let (_send, mut peer_recv) = bounded(answered.accept_bi()).await.unwrap();
    let mut got = Vec::new();
    bounded(peer_recv.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"over a stream");

    // What the tap saw is sealed: the payload is not on the wire.
    dialled.send_datagram(b"secret payload").unwrap();
    assert_eq!(
        bounded(answered.recv_datagram()).await.unwrap(),
        b"secret payload"
    );
    let captured = tap.captured.lock().unwrap().clone();
    assert_eq!(captured.len(), 2, "two datagrams crossed the tap");
    assert!(!captured[1]
        .windows(b"secret payload".len())
        .any(|w| w == b"secret payload"));

    // The tap replays a captured datagram and forges one (a real one with a flipped bit);
    // neither reaches the application, the next real datagram does.
    let mut forged = captured[1].clone();
    *forged.last_mut().unwrap() ^= 1;
    for attack in [&captured[1], &captured[0], &forged] {
        tap.socket.send_to(attack, b_addr).await.unwrap();
    }
    dialled.send_datagram(b"after").unwrap();
    assert_eq!(
        bounded(answered.recv_datagram()).await.unwrap(),
        b"after",
        "the replays and the forgery were dropped"
    );

    let err = dialled
        .send_datagram(&vec![0u8; MAX_UDP_DATAGRAM + 1])
        .unwrap_err();
    assert!(
        matches!(err, ConnectionError::TooLarge { size, max } if size == MAX_UDP_DATAGRAM + 1 && max == MAX_UDP_DATAGRAM),
        "{err}"
    );

    // Closing ends the peer's wait for datagrams with a clear error.
    dialled.close("done");
    let waited = tokio::time::timeout(Duration::from_secs(15), answered.recv_datagram())
        .await
        .expect("the wait ends when the connection closes");
    assert!(
        matches!(waited, Err(ConnectionError::Closed(_))),
        "{waited:?}"
    );
}
