//! hyper, tonic and axum between two peers behind different NATs of the test bed (a
//! restricted cone and a port-restricted cone), through a signal and STUN server on the test
//! bed's public side: a tonic unary and a streaming call, hyper GETs on two HTTP connections
//! that share one P2P connection, and an axum handler that sees the caller's peer id.

use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use bytes::Bytes;
use fog::{Event, Node};
use fog_examples::greeter::greeter_client::GreeterClient;
use fog_examples::greeter::greeter_server::GreeterServer;
use fog_examples::greeter::{CountRequest, HelloRequest};
use fog_examples::PeerGreeter;
use fog_http::{FogConnector, FogListener, PeerInfo};
use fog_natlab::{Host, Lab, Link, NatBehaviour};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const SIGNAL: &str = "ws://203.0.113.9:7600/ws";
/// Bound on each whole scenario.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs a signal server (announcing STUN) and an RFC 5780 STUN server in `host` until the
/// returned sender is dropped.
fn servers(host: &Host) -> std_mpsc::Sender<()> {
    let (ready_tx, ready_rx) = std_mpsc::channel();
    let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
    let host = host.clone();
    std::thread::spawn(move || {
        host.run(move || async move {
            let stun = fog::server::stun::StunServer::bind(fog::server::stun::StunConfig {
                primary: "203.0.113.9:3478".parse().unwrap(),
                alternate: Some("203.0.113.10:3479".parse().unwrap()),
            })
            .await
            .expect("STUN binds");
            let signal = fog::server::SignalServer::bind(fog::server::SignalConfig {
                listen: "203.0.113.9:7600".parse().unwrap(),
                stun: vec!["203.0.113.9:3478".into()],
                ..Default::default()
            })
            .await
            .expect("signal server binds");
            ready_tx.send(()).unwrap();
            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
            signal.shutdown().await;
            drop(stun);
        })
        .expect("servers run");
    });
    ready_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("servers up within 15 s");
    stop_tx
}

/// The test bed with its servers, and a host behind each of two different NATs.
fn setup() -> (Lab, std_mpsc::Sender<()>, Host, Host) {
    let mut lab = Lab::new().expect("the NAT test bed needs root, ip and nft");
    let server = lab
        .server(&[
            Ipv4Addr::new(203, 0, 113, 9),
            Ipv4Addr::new(203, 0, 113, 10),
        ])
        .unwrap();
    let stop = servers(&server);
    let ra = lab
        .router(NatBehaviour::RestrictedCone, Link::default())
        .unwrap();
    let a = lab.host(&ra, Link::default()).unwrap();
    let rb = lab
        .router(NatBehaviour::PortRestrictedCone, Link::default())
        .unwrap();
    let b = lab.host(&rb, Link::default()).unwrap();
    (lab, stop, a, b)
}

/// Runs `serve` on a node named `name` in `host` until the returned sender is dropped.
fn serve_in<F, Fut>(host: &Host, name: &'static str, serve: F) -> std_mpsc::Sender<()>
where
    F: FnOnce(Node) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let (ready_tx, ready_rx) = std_mpsc::channel();
    let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
    let host = host.clone();
    std::thread::spawn(move || {
        host.run(move || async move {
            let node = Node::builder()
                .signal(SIGNAL)
                .name(name)
                .bind()
                .await
                .expect("the server node registers");
            ready_tx.send(()).unwrap();
            tokio::select! {
                _ = serve(node) => {}
                _ = tokio::task::spawn_blocking(move || stop_rx.recv()) => {}
            }
        })
        .expect("the server node runs");
    });
    ready_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the server node up within 15 s");
    stop_tx
}

#[test]
fn tonic_unary_and_streaming_calls_reach_a_peer_behind_another_nat() {
    let (_lab, _servers, a, b) = setup();
    let _grpc = serve_in(&b, "grpc", |node| async move {
        tonic::transport::Server::builder()
            .add_service(GreeterServer::new(PeerGreeter))
            .serve_with_incoming(FogListener::new(&node).into_stream())
            .await
            .expect("the gRPC server runs");
    });
    a.run(|| async {
        tokio::time::timeout(LIMIT, async {
            let node = Node::builder().signal(SIGNAL).bind().await.unwrap();
            let connector = FogConnector::new(node.clone());
            let channel = tonic::transport::Endpoint::from_static("http://grpc.fog")
                .connect_with_connector(connector.clone())
                .await
                .expect("a channel to the peer");
            let mut client = GreeterClient::new(channel);
            let reply = client
                .say_hello(HelloRequest { name: "a".into() })
                .await
                .expect("the unary call")
                .into_inner();
            assert_eq!(reply.message, "hello, a");
            // The server knows who called: the key the connection verified.
            assert_eq!(reply.caller, node.peer_id().to_string());
            let counted: Vec<u32> = client
                .count_to(CountRequest { to: 50 })
                .await
                .expect("the streaming call")
                .into_inner()
                .map(|r| r.expect("a count").n)
                .collect()
                .await;
            assert_eq!(counted, (1..=50).collect::<Vec<_>>());
            let conn = connector.connection("grpc").expect("a P2P connection");
            assert_eq!(conn.path_kind(), fog::PathKind::Direct);
            let err = client
                .count_to(CountRequest { to: 10_001 })
                .await
                .expect_err("the server's refusal comes back");
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
        })
        .await
        .expect("the gRPC calls within 60 s");
    })
    .unwrap();
}

#[test]
fn hyper_gets_share_one_p2p_connection_and_axum_sees_the_caller() {
    let (_lab, _servers, a, b) = setup();
    let _web = serve_in(&b, "web", |node| async move {
        let mut listener = FogListener::new(&node);
        while let Some(io) = listener.accept().await {
            let service = fog_http::WithPeer::new(
                io.peer().clone(),
                hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let caller = req.extensions().get::<PeerInfo>().expect("the caller").peer;
                        let body = format!("{caller} {}", req.uri().path());
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                    },
                ),
            );
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    let _axum = serve_in(&b, "app", |node| async move {
        use axum::extract::ConnectInfo;
        let app = axum::Router::new().route(
            "/who",
            axum::routing::get(|ConnectInfo(caller): ConnectInfo<PeerInfo>| async move {
                format!("axum {}", caller.peer)
            }),
        );
        axum::serve(
            FogListener::new(&node),
            app.into_make_service_with_connect_info::<PeerInfo>(),
        )
        .await
        .expect("axum serves");
    });
    a.run(|| async {
        tokio::time::timeout(LIMIT, async {
            let node = Node::builder().signal(SIGNAL).bind().await.unwrap();
            let me = node.peer_id().to_string();
            let mut events = node.events();
            let connector = FogConnector::new(node.clone());
            // Two clients with their own HTTP connection pools: two HTTP connections to "web".
            for (i, path) in ["/one", "/two"].into_iter().enumerate() {
                let client: Client<_, Empty<Bytes>> =
                    Client::builder(TokioExecutor::new()).build(connector.clone());
                let response = client
                    .get(format!("http://web.fog{path}").parse().unwrap())
                    .await
                    .unwrap_or_else(|e| panic!("GET {i}: {e:?}"));
                assert_eq!(response.status(), 200);
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(String::from_utf8_lossy(&body), format!("{me} {path}"));
            }
            let client: Client<_, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build(connector.clone());
            let response = client
                .get("http://app.fog/who".parse().unwrap())
                .await
                .expect("GET from axum");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(String::from_utf8_lossy(&body), format!("axum {me}"));
            // One P2P connection per peer: two to "web" and "app" together, not three.
            let mut connected = 0;
            while let Ok(event) = events.try_recv() {
                if matches!(event, Event::Connected { .. }) {
                    connected += 1;
                }
            }
            assert_eq!(
                connected, 2,
                "HTTP connections did not share P2P connections"
            );
            // A peer nobody registered: a clear error, no hang.
            let err = client
                .get("http://nobody.fog/".parse().unwrap())
                .await
                .expect_err("no such peer");
            let text = format!("{:?}", err);
            assert!(text.contains("nobody"), "{text}");
        })
        .await
        .expect("the requests within 60 s");
    })
    .unwrap();
}
