//! A 50 MB stream over QUIC between two nodes behind port-restricted cone NATs, whose path
//! changes in the middle: it starts on the relay while the direct pair is blocked and moves to
//! the direct pair once it opens; or it starts direct and falls back to the relay when the
//! direct pair is cut. Either way the stream stays open and the bytes arrive with the same
//! SHA-256. Over QUIC, KCP and uTP.

mod lab;

use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use fog::{Event, Node, PathKind, Protocol};
use fog_natlab::{Host, Lab, Link, NatBehaviour};
use futures_util::StreamExt;
use lab::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOTAL: usize = 50 * 1024 * 1024;
const CHUNK: usize = 256 * 1024;
/// Where the path change happens.
const HALFWAY: usize = 20 * 1024 * 1024;

/// The test data: a cheap pseudo-random stream, so that a lost, repeated or reordered chunk
/// changes the digest.
fn chunk(index: usize) -> Vec<u8> {
    let mut x = (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..CHUNK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What the sending side saw.
#[derive(Debug)]
struct Sent {
    path_at_start: PathKind,
    path_at_end: PathKind,
    changes: Vec<(PathKind, std::net::SocketAddr)>,
    digest: Vec<u8>,
    echoed_digest: Vec<u8>,
    received: u64,
}

/// Serves one connection in `host`: hashes its first stream and answers with the digest and
/// the byte count.
fn receiver(host: &Host, name: String) -> std::thread::JoinHandle<()> {
    let host = host.clone();
    std::thread::spawn(move || {
        host.run(move || async move {
            let node = Node::builder()
                .signal(SIGNAL)
                .name(name)
                .bind()
                .await
                .expect("receiver registers");
            let conn = tokio::time::timeout(Duration::from_secs(30), node.incoming().next())
                .await
                .expect("a connection within 30 s")
                .expect("incoming stays open");
            let (mut send, mut recv) = conn.accept_bi().await.expect("a stream");
            let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
            let mut count = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = recv.read(&mut buf).await.expect("the stream survives");
                if n == 0 {
                    break;
                }
                digest.update(&buf[..n]);
                count += n as u64;
            }
            send.write_all(digest.finish().as_ref()).await.unwrap();
            send.write_all(&count.to_be_bytes()).await.unwrap();
            send.shutdown().await.unwrap();
            // Until the sender has read the answer and closed.
            let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
            node.shutdown().await;
        })
        .expect("receiver runs");
    })
}

/// Sends the 50 MB to `name` from `host`; halfway, says so on `halfway` and waits for `go`.
fn send_all(
    host: &Host,
    name: String,
    halfway: std_mpsc::Sender<()>,
    go: std_mpsc::Receiver<()>,
    protocol: Protocol,
    start_on: PathKind,
) -> Sent {
    host.run(move || async move {
        let node = Node::builder()
            .signal(SIGNAL)
            .protocols([protocol])
            .bind()
            .await
            .expect("sender registers");
        let mut events = node.events();
        let mut moves = node.events();
        let conn = tokio::time::timeout(Duration::from_secs(20), node.connect(&name))
            .await
            .expect("connects within 20 s")
            .expect("connects");
        assert_eq!(conn.protocol(), protocol);
        // With a relay at hand the first answer may come through it (a busy machine); the
        // direct pair takes over when it answers. The transfer starts on the path it is about.
        let settled = tokio::time::timeout(Duration::from_secs(10), async {
            while conn.path_kind() != start_on {
                let _ = moves.recv().await;
            }
        })
        .await;
        let path_at_start = conn.path_kind();
        assert!(settled.is_ok(), "not on the {start_on:?} path within 10 s");
        let (mut send, mut recv) = conn.open_bi().await.expect("a stream");
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut go = Some(go);
        for index in 0..TOTAL / CHUNK {
            let data = chunk(index);
            digest.update(&data);
            send.write_all(&data)
                .await
                .expect("the stream survives the move");
            if (index + 1) * CHUNK == HALFWAY {
                halfway.send(()).unwrap();
                let go = go.take().unwrap();
                tokio::task::spawn_blocking(move || go.recv().unwrap())
                    .await
                    .unwrap();
            }
        }
        send.shutdown().await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), recv.read_to_end(&mut answer))
            .await
            .expect("the receiver's answer within 60 s")
            .expect("the answer arrives");
        let mut changes = Vec::new();
        while let Ok(event) = events.try_recv() {
            if let Event::PathChanged { kind, to, .. } = event {
                changes.push((kind, to));
            }
        }
        let path_at_end = conn.path_kind();
        conn.close("done");
        node.shutdown().await;
        Sent {
            path_at_start,
            path_at_end,
            changes,
            digest: digest.finish().as_ref().to_vec(),
            echoed_digest: answer[..32.min(answer.len())].to_vec(),
            received: u64::from_be_bytes(answer[32..40].try_into().expect("8 bytes of count")),
        }
    })
    .expect("sender runs")
}

/// Two port-restricted cones, a sender and a receiver, and the block between them.
fn setup(lab: &mut Lab, access: Link) -> (Host, Host, DirectBlock) {
    let ra = lab
        .router(NatBehaviour::PortRestrictedCone, Link::default())
        .unwrap();
    let a = lab.host(&ra, access).unwrap();
    let rb = lab
        .router(NatBehaviour::PortRestrictedCone, Link::default())
        .unwrap();
    let b = lab.host(&rb, access).unwrap();
    let block = DirectBlock::new(&ra, &rb);
    (a, b, block)
}

fn transfer(
    a: &Host,
    b: &Host,
    name: &str,
    protocol: Protocol,
    start_on: PathKind,
    change: impl FnOnce(),
) -> Sent {
    let receiver = receiver(b, name.to_string());
    let (halfway_tx, halfway_rx) = std_mpsc::channel();
    let (go_tx, go_rx) = std_mpsc::channel();
    let sent = std::thread::scope(|scope| {
        // Owned here, so that a panic in `change` drops it and the sender stops waiting.
        let go_tx = go_tx;
        let sender =
            scope.spawn(|| send_all(a, name.to_string(), halfway_tx, go_rx, protocol, start_on));
        if halfway_rx.recv_timeout(Duration::from_secs(60)).is_ok() {
            change();
            go_tx.send(()).unwrap();
        }
        sender.join().unwrap()
    });
    receiver.join().unwrap();
    sent
}

fn assert_intact(sent: &Sent) {
    assert_eq!(sent.received, TOTAL as u64, "{sent:?}");
    assert!(
        sent.digest == sent.echoed_digest,
        "SHA-256 differs: {sent:?}"
    );
}

fn upgrade(protocol: Protocol) {
    let (mut lab, _server) = lab_with_fog_server(true);
    let (a, b, block) = setup(&mut lab, Link::default());
    block.on();
    let name = format!("upgrade-receiver-{protocol}");
    let sent = transfer(&a, &b, &name, protocol, PathKind::Relay, || block.off());
    assert_eq!(sent.path_at_start, PathKind::Relay, "{sent:?}");
    assert_eq!(sent.path_at_end, PathKind::Direct, "{sent:?}");
    assert!(
        sent.changes
            .iter()
            .any(|(kind, _)| *kind == PathKind::Direct),
        "no upgrade event: {sent:?}"
    );
    assert_intact(&sent);
}

fn downgrade(protocol: Protocol) {
    let (mut lab, _server) = lab_with_fog_server(true);
    let (a, b, block) = setup(&mut lab, Link::default());
    let name = format!("downgrade-receiver-{protocol}");
    let sent = transfer(&a, &b, &name, protocol, PathKind::Direct, || block.on());
    assert_eq!(sent.path_at_start, PathKind::Direct, "{sent:?}");
    assert_eq!(sent.path_at_end, PathKind::Relay, "{sent:?}");
    assert!(
        sent.changes
            .iter()
            .any(|(kind, _)| *kind == PathKind::Relay),
        "no downgrade event: {sent:?}"
    );
    assert_intact(&sent);
}

#[test]
fn a_transfer_that_starts_on_the_relay_moves_to_the_direct_pair_and_arrives_intact() {
    upgrade(Protocol::Quic);
}

#[test]
fn a_transfer_whose_direct_pair_is_cut_falls_back_to_the_relay_and_arrives_intact() {
    downgrade(Protocol::Quic);
}

#[test]
fn a_kcp_transfer_moves_from_the_relay_to_the_direct_pair_intact() {
    upgrade(Protocol::Kcp);
}

#[test]
fn a_kcp_transfer_falls_back_to_the_relay_intact() {
    downgrade(Protocol::Kcp);
}

#[test]
fn a_utp_transfer_moves_from_the_relay_to_the_direct_pair_intact() {
    upgrade(Protocol::Utp);
}

#[test]
fn a_utp_transfer_falls_back_to_the_relay_intact() {
    downgrade(Protocol::Utp);
}
