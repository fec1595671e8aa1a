//! A better pair found after the connection is up takes it over, and open streams carry on.
//!
//! Two nodes on loopback first reach each other only through a slow forwarder (40 ms each
//! way), the way a pair through a far-away NAT path would be; the direct pair reaches the
//! dialer later as a trickled candidate. The connection must start on the slow pair, move to
//! the direct one while a stream is open, lose no byte, and stop using the forwarder.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use fog::layers::{GatherLayer, ProtocolSelectLayer, PunchLayer, SignalLayer};
use fog::{Attempt, Event, Node, Protocol, StackParts};
use fog_core::{Candidate, CandidateList, RemoteTrickle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;

const SLOW_PATH_DELAY: Duration = Duration::from_millis(40);

/// A UDP forwarder between two fixed addresses, adding a delay each way: packets from `a` to
/// `front` leave `back` for `b`, and packets from `b` to `back` leave `front` for `a`. Counts
/// the datagrams larger than a connectivity check (QUIC packets).
struct SlowPath {
    front: SocketAddr,
    back: SocketAddr,
    quic_packets: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SlowPath {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl SlowPath {
    async fn new(a: SocketAddr, b: SocketAddr) -> SlowPath {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let quic_packets = Arc::new(AtomicU64::new(0));
        let pump = |from: Arc<UdpSocket>, to: Arc<UdpSocket>, dest: SocketAddr| {
            let counter = quic_packets.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let Ok((len, _)) = from.recv_from(&mut buf).await else {
                        continue;
                    };
                    if len > 100 {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    let datagram = buf[..len].to_vec();
                    let to = to.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(SLOW_PATH_DELAY).await;
                        let _ = to.send_to(&datagram, dest).await;
                    });
                }
            })
        };
        let tasks = vec![
            pump(front.clone(), back.clone(), b),
            pump(back.clone(), front.clone(), a),
        ];
        SlowPath {
            front: front.local_addr().unwrap(),
            back: back.local_addr().unwrap(),
            quic_packets,
            tasks,
        }
    }
}

/// The default layers, with the peer's candidates replaced by `seen` (the forwarder), and
/// `late` trickled after `after`, as a peer whose direct candidate is found late would.
fn stack_seeing(
    parts: &StackParts,
    seen: SocketAddr,
    late: Option<(SocketAddr, Duration)>,
) -> fog::Stack {
    let detour = move |mut attempt: Attempt| {
        if let Some(remote) = attempt.remote.as_mut() {
            remote.candidates = vec![Candidate::srflx(seen)];
            remote.trickle = late.is_some();
        }
        if let Some((addr, after)) = late {
            let (tx, rx) = tokio::sync::watch::channel(CandidateList::default());
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                tx.send_modify(|list| {
                    list.extend(&[Candidate::host(addr)], true);
                });
                // Keep the sender until the attempt is long done.
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
            attempt.remote_trickle = Some(RemoteTrickle::new(rx));
        }
        attempt
    };
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(GatherLayer::new(parts.socket.local_addr()))
            .layer(SignalLayer::new(parts.signaller.clone()))
            .map_request(detour)
            .layer(PunchLayer::new(parts.prober()))
            .layer(ProtocolSelectLayer::new([Protocol::Quic]))
            .service(parts.transport.clone()),
    )
}

async fn loopback_node(
    server: &fog::server::SignalServer,
    socket: std::net::UdpSocket,
    make: impl Fn(&StackParts) -> fog::Stack + Send + Sync + 'static,
) -> Node {
    let addr = socket.local_addr().unwrap();
    drop(socket);
    Node::builder()
        .signal(server.url())
        .bind_addr(addr)
        .stack(make)
        .bind()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faster_pair_found_later_takes_over_without_breaking_the_stream() {
    let server = server().await;
    // Reserve both nodes' ports first: the forwarder needs them, the stacks need it.
    let a_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let b_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let a_addr = a_socket.local_addr().unwrap();
    let b_addr = b_socket.local_addr().unwrap();
    let slow = SlowPath::new(a_addr, b_addr).await;
    let (front, back) = (slow.front, slow.back);

    let a = loopback_node(&server, a_socket, move |parts| {
        stack_seeing(parts, front, Some((b_addr, Duration::from_millis(400))))
    })
    .await;
    let b = loopback_node(&server, b_socket, move |parts| {
        stack_seeing(parts, back, None)
    })
    .await;
    serve_echo(&b);
    let mut events = a.events();

    let conn = within("connect", 10, a.connect(b.peer_id().to_string()))
        .await
        .expect("connects over the slow pair");
    assert_eq!(conn.remote_addr(), front, "the first pair is the forwarder");

    // A stream that stays open across the move: its bytes go out before, during and after.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let expected = data.clone();
    let reader = tokio::spawn(async move {
        let mut back = Vec::new();
        recv.read_to_end(&mut back).await.map(|_| back)
    });
    send.write_all(&data[..100_000]).await.unwrap();

    let moved = within("the move to the direct pair", 10, async {
        loop {
            if let Ok(Event::PathChanged { from, to, .. }) = events.recv().await {
                break (from, to);
            }
        }
    })
    .await;
    assert_eq!(moved, (front, b_addr));
    assert_eq!(conn.remote_addr(), b_addr);

    send.write_all(&data[100_000..]).await.unwrap();
    send.shutdown().await.unwrap();
    let back = within("the echo of the whole stream", 20, reader)
        .await
        .unwrap()
        .expect("the stream survives the move");
    assert!(back == expected, "the echo differs after the move");

    // Once moved, the QUIC packets no longer take the forwarder.
    let before = slow.quic_packets.load(Ordering::Relaxed);
    assert_eq!(
        echo(&conn, vec![5u8; 1_000_000]).await.len(),
        1_000_000,
        "a second stream after the move"
    );
    let through_forwarder = slow.quic_packets.load(Ordering::Relaxed) - before;
    assert!(
        through_forwarder < 10,
        "{through_forwarder} QUIC packets still took the slow pair"
    );
}
