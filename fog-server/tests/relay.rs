//! The TURN relay, driven over real loopback sockets with the `turn` crate's client: credentials,
//! quotas, relaying both ways, TURN over TCP, and relay credentials from the signal server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fog_core::signal::{registration_message, ClientMessage, ErrorCode, ServerMessage};
use fog_core::{Identity, PeerId};
use fog_server::relay::credentials::{issue, unix_now};
use fog_server::relay::tcp::{frame, read_frame};
use fog_server::relay::{QuotaConfig, RelayConfig, RelaySecret, RelayServer};
use fog_server::{SignalConfig, SignalServer};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

/// Bound on one whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one expected datagram or reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer that receives nothing for this long has received everything that will come.
const QUIET: Duration = Duration::from_millis(500);

/// Runs a test body, failing it instead of hanging.
async fn bounded<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .expect("test timed out");
}

fn secret() -> RelaySecret {
    RelaySecret::new("relay-test-secret").unwrap()
}

async fn relay_with(quota: QuotaConfig, tcp: bool) -> RelayServer {
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), secret());
    config.tcp = tcp.then(|| "127.0.0.1:0".parse().unwrap());
    config.quota = quota;
    config.allow_loopback_peers = true;
    RelayServer::bind(config).await.expect("bind the relay")
}

async fn relay() -> RelayServer {
    relay_with(QuotaConfig::default(), false).await
}

/// Credentials for a fresh node, valid for ten minutes.
fn node_credentials() -> (PeerId, String, String) {
    let node = Identity::generate().peer_id();
    let c = issue(&secret(), &node, unix_now(), Duration::from_secs(600));
    (node, c.username, c.password)
}

/// A TURN client over `conn` to the relay at `server`, listening.
async fn turn_client_over(
    conn: Arc<dyn Conn + Send + Sync>,
    server: SocketAddr,
    username: &str,
    password: &str,
) -> Client {
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.to_string(),
        password: password.to_string(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .expect("make a turn client");
    client.listen().await.expect("the turn client listens");
    client
}

/// A TURN client over UDP.
async fn turn_client(server: SocketAddr, username: &str, password: &str) -> Client {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    turn_client_over(Arc::new(socket), server, username, password).await
}

async fn allocate(client: &Client) -> Result<impl Conn, String> {
    tokio::time::timeout(REPLY_TIMEOUT, client.allocate())
        .await
        .map_err(|_| "allocate timed out".to_string())?
        .map_err(|e| e.to_string())
}

/// Waits (bounded) until `check` holds, looking every few milliseconds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let wait = async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(REPLY_TIMEOUT, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

async fn recv_from_socket(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 2048];
    let (n, from) = tokio::time::timeout(REPLY_TIMEOUT, socket.recv_from(&mut buf))
        .await
        .expect("peer receive timed out")
        .unwrap();
    buf.truncate(n);
    (buf, from)
}

async fn recv_from_relay(conn: &impl Conn) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 2048];
    let (n, from) = tokio::time::timeout(REPLY_TIMEOUT, conn.recv_from(&mut buf))
        .await
        .expect("relayed receive timed out")
        .unwrap();
    buf.truncate(n);
    (buf, from)
}

/// Relays one datagram each way between the client's relayed socket and a plain UDP peer.
async fn relay_both_ways(relayed: &impl Conn, peer: &UdpSocket) {
    let relayed_addr = relayed.local_addr().unwrap();
    let peer_addr = peer.local_addr().unwrap();
    // The client's first send creates the permission for the peer.
    relayed.send_to(b"hello peer", peer_addr).await.unwrap();
    let (data, from) = recv_from_socket(peer).await;
    assert_eq!(data, b"hello peer");
    assert_eq!(from, relayed_addr, "the peer sees the relayed address");
    peer.send_to(b"hello client", relayed_addr).await.unwrap();
    let (data, from) = recv_from_relay(relayed).await;
    assert_eq!(data, b"hello client");
    assert_eq!(from, peer_addr, "the client sees the peer's address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_credentials_allocate_and_relay_both_ways() {
    bounded(async {
        let relay = relay().await;
        let (node, username, password) = node_credentials();
        let client = turn_client(relay.udp_addr(), &username, &password).await;
        let relayed = allocate(&client).await.expect("allocate");
        let relayed_addr = relayed.local_addr().unwrap();
        assert_eq!(relayed_addr.ip(), relay.relay_ip());
        assert_ne!(relayed_addr.port(), relay.udp_addr().port());
        assert_eq!(relay.allocations(&node), 1);

        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        relay_both_ways(&relayed, &peer).await;
        // More of the same, both ways, in order.
        for i in 0..5u8 {
            relayed
                .send_to(&[i; 100], peer.local_addr().unwrap())
                .await
                .unwrap();
            assert_eq!(recv_from_socket(&peer).await.0, vec![i; 100]);
            peer.send_to(&[i; 200], relayed_addr).await.unwrap();
            assert_eq!(recv_from_relay(&relayed).await.0, vec![i; 200]);
        }

        // Closing the allocation gives the quota back.
        relayed.close().await.unwrap();
        eventually("the allocation is released", || {
            relay.allocations(&node) == 0
        })
        .await;
        client.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_expired_and_unknown_credentials_are_refused_with_401() {
    bounded(async {
        let relay = relay().await;
        let node = Identity::generate().peer_id();
        let good = issue(&secret(), &node, unix_now(), Duration::from_secs(600));
        let expired = issue(&secret(), &node, unix_now() - 3600, Duration::from_secs(60));
        let other_secret = issue(
            &RelaySecret::new("another secret").unwrap(),
            &node,
            unix_now(),
            Duration::from_secs(600),
        );
        let cases = [
            (
                "wrong password",
                good.username.clone(),
                "d3Jvbmc=".to_string(),
            ),
            (
                "expired",
                expired.username.clone(),
                expired.password.clone(),
            ),
            (
                "another secret",
                other_secret.username,
                other_secret.password,
            ),
            ("unknown user", "alice".to_string(), "secret".to_string()),
            (
                "another node's password",
                format!("{}:{}", good.expires, Identity::generate().peer_id()),
                good.password.clone(),
            ),
        ];
        for (what, username, password) in cases {
            let client = turn_client(relay.udp_addr(), &username, &password).await;
            let refused = allocate(&client).await.err().unwrap_or_else(|| {
                panic!("{what}: allocated");
            });
            assert!(refused.contains("401"), "{what}: {refused}");
            client.close().await.unwrap();
        }
        assert_eq!(relay.allocations(&node), 0);

        // The good credentials still work.
        let client = turn_client(relay.udp_addr(), &good.username, &good.password).await;
        allocate(&client).await.expect("allocate");
        client.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_over_the_node_quota_are_refused_with_486() {
    bounded(async {
        let relay = relay_with(
            QuotaConfig {
                max_allocations: 2,
                ..Default::default()
            },
            false,
        )
        .await;
        let (node, username, password) = node_credentials();
        let first = turn_client(relay.udp_addr(), &username, &password).await;
        let first_relayed = allocate(&first).await.expect("first allocation");
        let second = turn_client(relay.udp_addr(), &username, &password).await;
        let _second_relayed = allocate(&second).await.expect("second allocation");
        assert_eq!(relay.allocations(&node), 2);

        let third = turn_client(relay.udp_addr(), &username, &password).await;
        let refused = allocate(&third).await.err().expect("over quota");
        assert!(refused.contains("486"), "{refused}");
        assert!(refused.contains("Allocation Quota Reached"), "{refused}");
        third.close().await.unwrap();
        assert_eq!(relay.allocations(&node), 2);

        // Another node has its own quota.
        let (other, other_user, other_password) = node_credentials();
        let elsewhere = turn_client(relay.udp_addr(), &other_user, &other_password).await;
        allocate(&elsewhere).await.expect("another node allocates");
        assert_eq!(relay.allocations(&other), 1);

        // Ending an allocation makes room again.
        first_relayed.close().await.unwrap();
        eventually("the first allocation is released", || {
            relay.allocations(&node) == 1
        })
        .await;
        let fourth = turn_client(relay.udp_addr(), &username, &password).await;
        allocate(&fourth).await.expect("room after a release");
        for client in [first, second, elsewhere, fourth] {
            client.close().await.unwrap();
        }
    })
    .await;
}

/// Receives datagrams until the peer has been quiet for [`QUIET`]; returns their count and bytes.
async fn drain(peer: &UdpSocket) -> (usize, usize) {
    let mut buf = vec![0u8; 2048];
    let (mut count, mut bytes) = (0, 0);
    while let Ok(Ok((n, _))) = tokio::time::timeout(QUIET, peer.recv_from(&mut buf)).await {
        count += 1;
        bytes += n;
    }
    (count, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_over_the_byte_rate_are_dropped() {
    bounded(async {
        const RATE: u64 = 4000;
        const SIZE: usize = 1000;
        const SENT: usize = 40;
        let relay = relay_with(
            QuotaConfig {
                max_bytes_per_sec: RATE,
                ..Default::default()
            },
            false,
        )
        .await;
        let (_, username, password) = node_credentials();
        let client = turn_client(relay.udp_addr(), &username, &password).await;
        let relayed = allocate(&client).await.expect("allocate");
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = peer.local_addr().unwrap();

        let started = Instant::now();
        for _ in 0..SENT {
            relayed.send_to(&[7u8; SIZE], peer_addr).await.unwrap();
        }
        let sending = started.elapsed().as_secs_f64();
        let (count, bytes) = drain(&peer).await;
        // One second's worth passes at once, then the rate; the rest is dropped.
        let allowed = RATE as f64 * (1.0 + sending);
        assert!(count >= 1, "nothing passed");
        assert!(
            (bytes as f64) <= allowed,
            "{bytes} bytes passed in {sending:.3} s at {RATE} B/s"
        );
        assert!(count < SENT, "nothing was dropped");

        // The peer's direction is counted against the same node.
        let relayed_addr = relayed.local_addr().unwrap();
        let started = Instant::now();
        for _ in 0..SENT {
            peer.send_to(&[9u8; SIZE], relayed_addr).await.unwrap();
        }
        let mut received = 0;
        let mut buf = vec![0u8; 2048];
        while let Ok(Ok((n, _))) = tokio::time::timeout(QUIET, relayed.recv_from(&mut buf)).await {
            received += n;
        }
        let elapsed = started.elapsed().as_secs_f64();
        assert!(
            (received as f64) <= RATE as f64 * (1.0 + elapsed),
            "{received} bytes relayed to the client in {elapsed:.3} s"
        );
        assert!(
            received < SENT * SIZE,
            "nothing was dropped towards the client"
        );
        client.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_end_at_the_maximum_lifetime() {
    bounded(async {
        let relay = relay_with(
            QuotaConfig {
                max_lifetime: Duration::from_secs(1),
                ..Default::default()
            },
            false,
        )
        .await;
        let (node, username, password) = node_credentials();
        let client = turn_client(relay.udp_addr(), &username, &password).await;
        let started = Instant::now();
        let relayed = allocate(&client).await.expect("allocate");
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        relay_both_ways(&relayed, &peer).await;
        eventually("the allocation reached its lifetime", || {
            relay.allocations(&node) == 0
        })
        .await;
        // Not earlier: the client's refreshes keep it until the deadline.
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "ended after {:?}",
            started.elapsed()
        );
        // The relayed address no longer relays.
        peer.send_to(b"too late", relayed.local_addr().unwrap())
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(
            tokio::time::timeout(QUIET, relayed.recv_from(&mut buf))
                .await
                .map_or(true, |r| r.is_err()),
            "relayed after the deadline"
        );
        // Closing an allocation that is gone is answered at once (437), not left to time out.
        let closing = Instant::now();
        relayed.close().await.unwrap();
        assert!(
            closing.elapsed() < Duration::from_secs(2),
            "{:?}",
            closing.elapsed()
        );
        client.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_on_the_relay_host_are_refused_by_default() {
    bounded(async {
        let config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), secret());
        let relay = RelayServer::bind(config).await.unwrap();
        let (_, username, password) = node_credentials();
        let client = turn_client(relay.udp_addr(), &username, &password).await;
        let relayed = allocate(&client).await.expect("allocate");
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let refused = tokio::time::timeout(
            REPLY_TIMEOUT,
            relayed.send_to(b"to the relay's host", peer.local_addr().unwrap()),
        )
        .await
        .expect("send timed out")
        .expect_err("a loopback peer is refused");
        assert!(refused.to_string().contains("403"), "{refused}");
        client.close().await.unwrap();
    })
    .await;
}

/// Two nodes that can only reach the relay (UDP-blocked, on TURN over TCP) meet allocation to
/// allocation, even on a relay that refuses its own host; every other port of the host stays
/// refused, and a datagram from one is seen by the other as from the sender's relayed address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_allocations_of_the_relay_reach_each_other_and_no_other_local_port() {
    bounded(async {
        let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), secret());
        config.tcp = Some("127.0.0.1:0".parse().unwrap());
        let relay = RelayServer::bind(config).await.unwrap();
        let tcp = relay.tcp_addr().unwrap();
        let (_, user_a, pass_a) = node_credentials();
        let (_, user_b, pass_b) = node_credentials();
        let client_a = turn_client_over(
            Arc::new(TcpClientConn::connect(tcp).await),
            tcp,
            &user_a,
            &pass_a,
        )
        .await;
        let client_b = turn_client_over(
            Arc::new(TcpClientConn::connect(tcp).await),
            tcp,
            &user_b,
            &pass_b,
        )
        .await;
        let a = allocate(&client_a).await.expect("allocate a");
        let b = allocate(&client_b).await.expect("allocate b");
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        assert_eq!(a_addr.ip(), b_addr.ip());

        // Each opens a permission for the other (the first send does), then both ways.
        a.send_to(b"a opens", b_addr).await.expect("a's permission");
        b.send_to(b"b to a", a_addr).await.expect("b's permission");
        let (data, from) = recv_from_relay(&a).await;
        assert_eq!((data.as_slice(), from), (&b"b to a"[..], b_addr));
        a.send_to(b"a to b", b_addr).await.unwrap();
        // "a opens" may have come in too, when b's permission was made before b read it.
        let (mut data, mut from) = recv_from_relay(&b).await;
        if data == b"a opens" {
            (data, from) = recv_from_relay(&b).await;
        }
        assert_eq!((data.as_slice(), from), (&b"a to b"[..], a_addr));

        // Another port of the relay's host is still refused: a permission for it gets 403, and
        // with the permission for the relay's IP that a holds, datagrams to it are dropped.
        let local = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (_, user_c, pass_c) = node_credentials();
        let client_c = turn_client_over(
            Arc::new(TcpClientConn::connect(tcp).await),
            tcp,
            &user_c,
            &pass_c,
        )
        .await;
        let c = allocate(&client_c).await.expect("allocate c");
        let refused = tokio::time::timeout(
            REPLY_TIMEOUT,
            c.send_to(b"into the host", local.local_addr().unwrap()),
        )
        .await
        .expect("send timed out")
        .expect_err("a permission for another local port is refused");
        assert!(refused.to_string().contains("403"), "{refused}");
        a.send_to(b"into the host", local.local_addr().unwrap())
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(
            tokio::time::timeout(QUIET, local.recv_from(&mut buf))
                .await
                .is_err(),
            "a datagram reached another port of the relay's host"
        );
        client_c.close().await.unwrap();

        client_a.close().await.unwrap();
        client_b.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_listener_needs_a_relay_ip() {
    let config = RelayConfig::new("0.0.0.0:0".parse().unwrap(), secret());
    let refused = RelayServer::bind(config).await.err().expect("refused");
    assert!(refused.to_string().contains("relay_ip"), "{refused}");
    let mut config = RelayConfig::new("0.0.0.0:0".parse().unwrap(), secret());
    config.relay_ip = Some("127.0.0.1".parse().unwrap());
    let relay = RelayServer::bind(config)
        .await
        .expect("bind with a relay IP");
    let port = relay.udp_addr().port();
    assert_eq!(
        relay.urls(),
        vec![format!("turn:127.0.0.1:{port}?transport=udp")]
    );
}

/// The client side of TURN over TCP: messages framed on one stream to the relay.
struct TcpClientConn {
    reader: Mutex<OwnedReadHalf>,
    writer: Mutex<OwnedWriteHalf>,
    local: SocketAddr,
    server: SocketAddr,
}

impl TcpClientConn {
    async fn connect(server: SocketAddr) -> Self {
        let stream = TcpStream::connect(server).await.unwrap();
        let local = stream.local_addr().unwrap();
        let (reader, writer) = stream.into_split();
        TcpClientConn {
            reader: Mutex::new(reader),
            writer: Mutex::new(writer),
            local,
            server,
        }
    }
}

#[async_trait]
impl Conn for TcpClientConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.recv_from(buf).await.map(|(n, _)| n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let message = read_frame(&mut *self.reader.lock().await).await?;
        let n = message.len().min(buf.len());
        buf[..n].copy_from_slice(&message[..n]);
        Ok((n, self.server))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.send_to(buf, self.server).await
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        self.writer.lock().await.write_all(&frame(buf)).await?;
        Ok(buf.len())
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.server)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.writer.lock().await.shutdown().await?;
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_over_tcp_allocates_relays_and_ends_with_the_connection() {
    bounded(async {
        let relay = relay_with(QuotaConfig::default(), true).await;
        let tcp = relay.tcp_addr().expect("a tcp listener");
        let port = tcp.port();
        assert!(relay
            .urls()
            .contains(&format!("turn:127.0.0.1:{port}?transport=tcp")));
        let (node, username, password) = node_credentials();

        // Bad credentials are refused over TCP too.
        let conn = Arc::new(TcpClientConn::connect(tcp).await);
        let client = turn_client_over(conn, tcp, &username, "d3Jvbmc=").await;
        let refused = allocate(&client).await.err().expect("refused");
        assert!(refused.contains("401"), "{refused}");
        client.close().await.unwrap();

        let conn = Arc::new(TcpClientConn::connect(tcp).await);
        let client = turn_client_over(conn.clone(), tcp, &username, &password).await;
        let relayed = allocate(&client).await.expect("allocate over tcp");
        assert_eq!(relay.allocations(&node), 1);
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        relay_both_ways(&relayed, &peer).await;
        // Odd sizes exercise ChannelData padding on the stream.
        for size in [1usize, 2, 3, 5, 999] {
            relayed
                .send_to(&vec![size as u8; size], peer.local_addr().unwrap())
                .await
                .unwrap();
            assert_eq!(recv_from_socket(&peer).await.0, vec![size as u8; size]);
            peer.send_to(&vec![size as u8; size], relayed.local_addr().unwrap())
                .await
                .unwrap();
            assert_eq!(recv_from_relay(&relayed).await.0, vec![size as u8; size]);
        }

        // Closing the TCP connection ends the allocation (RFC 8656 §3.1).
        conn.close().await.unwrap();
        eventually("the allocation ends with its connection", || {
            relay.allocations(&node) == 0
        })
        .await;
        client.close().await.unwrap();
    })
    .await;
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A node registered at the signal server over a raw WebSocket.
struct Node {
    ws: Ws,
    peer: PeerId,
}

impl Node {
    async fn connect(url: &str) -> (Ws, [u8; 32]) {
        let (mut ws, _) =
            tokio::time::timeout(REPLY_TIMEOUT, tokio_tungstenite::connect_async(url))
                .await
                .expect("connect timed out")
                .expect("connect to the signal server");
        let ServerMessage::Challenge { nonce, .. } = next_message(&mut ws).await else {
            panic!("expected a challenge");
        };
        (ws, fog_core::hex::decode_array::<32>(&nonce).unwrap())
    }

    async fn register(url: &str, name: Option<&str>) -> Node {
        let (mut ws, nonce) = Node::connect(url).await;
        let identity = Identity::generate();
        let peer = identity.peer_id();
        send(
            &mut ws,
            &ClientMessage::Register {
                peer,
                name: name.map(str::to_string),
                signature: fog_core::hex::encode(
                    &identity.sign(&registration_message(&nonce, &peer)),
                ),
            },
        )
        .await;
        match next_message(&mut ws).await {
            ServerMessage::Registered { .. } => {}
            other => panic!("expected registered, got {other:?}"),
        }
        Node { ws, peer }
    }

    async fn ask(&mut self, id: u64, peer: &str) -> ServerMessage {
        send(
            &mut self.ws,
            &ClientMessage::RelayCredentials {
                id,
                peer: peer.to_string(),
            },
        )
        .await;
        next_message(&mut self.ws).await
    }
}

async fn send(ws: &mut Ws, message: &ClientMessage) {
    let text = serde_json::to_string(message).unwrap();
    tokio::time::timeout(REPLY_TIMEOUT, ws.send(Message::Text(text)))
        .await
        .expect("send timed out")
        .unwrap();
}

async fn next_message(ws: &mut Ws) -> ServerMessage {
    loop {
        let frame = tokio::time::timeout(REPLY_TIMEOUT, ws.next())
            .await
            .expect("no reply in time")
            .expect("the server closed the connection")
            .expect("websocket error");
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).expect("a server message");
        }
    }
}

fn expect_error(reply: ServerMessage, code: ErrorCode, id: u64) {
    match reply {
        ServerMessage::Error {
            code: got,
            id: got_id,
            ..
        } if got == code && got_id == Some(id) => {}
        other => panic!("expected error {code:?} for request {id}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signal_server_grants_relay_credentials_to_registered_nodes() {
    bounded(async {
        let relay = relay_with(QuotaConfig::default(), true).await;
        let signal = SignalServer::bind(SignalConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            relays: relay.urls(),
            relay_secret: Some(relay.secret().clone()),
            ..Default::default()
        })
        .await
        .unwrap();
        let url = signal.url();

        // Registration announces the relays.
        let (mut ws, nonce) = Node::connect(&url).await;
        let identity = Identity::generate();
        let me = identity.peer_id();
        // Not registered yet: no credentials.
        send(
            &mut ws,
            &ClientMessage::RelayCredentials {
                id: 1,
                peer: me.to_string(),
            },
        )
        .await;
        match next_message(&mut ws).await {
            ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::NotRegistered),
            other => panic!("expected not_registered, got {other:?}"),
        }
        send(
            &mut ws,
            &ClientMessage::Register {
                peer: me,
                name: None,
                signature: fog_core::hex::encode(
                    &identity.sign(&registration_message(&nonce, &me)),
                ),
            },
        )
        .await;
        match next_message(&mut ws).await {
            ServerMessage::Registered { relays, .. } => assert_eq!(relays, relay.urls()),
            other => panic!("expected registered, got {other:?}"),
        }
        let mut node = Node { ws, peer: me };

        let target = Node::register(&url, Some("1e:34:a1:44:2c:1c")).await;
        // By peer id and by name.
        for (id, peer) in [
            (2, target.peer.to_string()),
            (3, "1e:34:a1:44:2c:1c".to_string()),
        ] {
            let ServerMessage::RelayCredentials { id: got, relays } = node.ask(id, &peer).await
            else {
                panic!("expected relay credentials");
            };
            assert_eq!(got, id);
            let urls: Vec<_> = relays.iter().map(|g| g.url.clone()).collect();
            assert_eq!(urls, relay.urls());
            for grant in &relays {
                assert_eq!(grant.username, format!("{}:{}", grant.expires, node.peer));
                assert!(grant.expires > unix_now());
            }
        }

        // A grant allocates on the relay, over UDP and over TCP, counted against the node.
        let ServerMessage::RelayCredentials { relays, .. } =
            node.ask(4, &target.peer.to_string()).await
        else {
            panic!("expected relay credentials");
        };
        let udp = relays.iter().find(|g| g.url.ends_with("udp")).unwrap();
        let client = turn_client(relay.udp_addr(), &udp.username, &udp.password).await;
        let relayed = allocate(&client).await.expect("allocate with the grant");
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        relay_both_ways(&relayed, &peer).await;
        let tcp = relays.iter().find(|g| g.url.ends_with("tcp")).unwrap();
        let tcp_addr = relay.tcp_addr().unwrap();
        let conn = Arc::new(TcpClientConn::connect(tcp_addr).await);
        let tcp_client = turn_client_over(conn, tcp_addr, &tcp.username, &tcp.password).await;
        allocate(&tcp_client)
            .await
            .expect("allocate over tcp with the grant");
        assert_eq!(relay.allocations(&node.peer), 2);

        // Unknown peers, unparsable ones, and peers gone offline get errors.
        let stranger = Identity::generate().peer_id().to_string();
        expect_error(node.ask(5, &stranger).await, ErrorCode::PeerUnknown, 5);
        expect_error(node.ask(6, "nobody:here").await, ErrorCode::PeerUnknown, 6);
        expect_error(node.ask(7, "").await, ErrorCode::PeerUnknown, 7);
        let gone = target.peer;
        drop(target);
        let offline = async {
            loop {
                match node.ask(8, &gone.to_string()).await {
                    ServerMessage::RelayCredentials { .. } => continue,
                    reply => return reply,
                }
            }
        };
        expect_error(offline.await, ErrorCode::PeerOffline, 8);

        client.close().await.unwrap();
        tcp_client.close().await.unwrap();
        signal.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_relay_secret_the_grant_list_is_empty() {
    bounded(async {
        let signal = SignalServer::bind(SignalConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut a = Node::register(&signal.url(), None).await;
        let b = Node::register(&signal.url(), None).await;
        match a.ask(1, &b.peer.to_string()).await {
            ServerMessage::RelayCredentials { id: 1, relays } => assert!(relays.is_empty()),
            other => panic!("expected an empty grant, got {other:?}"),
        }
        signal.shutdown().await;
    })
    .await;
}

/// A coturn process, killed when dropped.
struct Coturn(std::process::Child);

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The grants follow the TURN REST API scheme that coturn checks with `use-auth-secret`: a coturn
/// sharing the secret accepts them, and refuses a wrong password. Skipped where coturn is not
/// installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_accepts_the_same_credentials() {
    let Some(turnserver) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("turnserver"))
            .find(|path| path.is_file())
    }) else {
        eprintln!("skipped: coturn (turnserver) is not installed");
        return;
    };
    bounded(async {
        // A free port for coturn: bound, read, released.
        let port = UdpSocket::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pidfile = std::env::temp_dir().join(format!("fog-coturn-{}.pid", std::process::id()));
        let _coturn = Coturn(
            std::process::Command::new(turnserver)
                .args([
                    "-n",
                    "--listening-ip=127.0.0.1",
                    "--relay-ip=127.0.0.1",
                    &format!("--listening-port={port}"),
                    "--use-auth-secret",
                    &format!(
                        "--static-auth-secret={}",
                        std::str::from_utf8(secret().as_bytes()).unwrap()
                    ),
                    "--realm=fog",
                    "--no-tls",
                    "--no-dtls",
                    "--no-tcp",
                    "--no-cli",
                    "--allow-loopback-peers",
                    "--no-stdout-log",
                    "--log-file=/dev/null",
                ])
                .arg(format!("--pidfile={}", pidfile.display()))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start coturn"),
        );
        let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let (_, username, password) = node_credentials();
        // coturn may still be starting: the client's retransmissions cover the first moments,
        // and a few fresh attempts the rest.
        let mut relayed = None;
        for _ in 0..10 {
            let client = turn_client(server, &username, &password).await;
            match allocate(&client).await {
                Ok(conn) => {
                    relayed = Some((client, conn));
                    break;
                }
                Err(e) => {
                    client.close().await.unwrap();
                    eprintln!("coturn not ready: {e}");
                }
            }
        }
        let (client, relayed) = relayed.expect("coturn allocates with fog credentials");
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        relay_both_ways(&relayed, &peer).await;
        client.close().await.unwrap();

        let wrong = turn_client(server, &username, "d3Jvbmc=").await;
        let refused = allocate(&wrong).await.err().expect("coturn refuses");
        assert!(refused.contains("401"), "{refused}");
        wrong.close().await.unwrap();
        let _ = std::fs::remove_file(pidfile);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_relay_closes_tcp_clients() {
    bounded(async {
        let relay = relay_with(QuotaConfig::default(), true).await;
        let tcp = relay.tcp_addr().unwrap();
        let (_, username, password) = node_credentials();
        let conn = Arc::new(TcpClientConn::connect(tcp).await);
        let client = turn_client_over(conn, tcp, &username, &password).await;
        allocate(&client).await.expect("allocate over tcp");
        client.close().await.unwrap();
        // A second, idle connection that never sent anything.
        let mut idle = TcpStream::connect(tcp).await.unwrap();
        relay.close().await;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(
            REPLY_TIMEOUT,
            tokio::io::AsyncReadExt::read(&mut idle, &mut buf),
        )
        .await
        .expect("the relay keeps the connection open after stopping");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    })
    .await;
}
