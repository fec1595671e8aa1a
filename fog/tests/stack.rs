//! Nodes running custom stacks composed with `ServiceBuilder` and tower's own middleware.

mod common;

use std::time::Duration;

use common::*;
use fog::layers::{GatherLayer, ProtocolSelectLayer, PunchLayer, SignalLayer};
use fog::{ConnectError, Node, Protocol, Stack, StackParts};
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;

fn wrapped_stack(parts: &StackParts) -> Stack {
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .timeout(Duration::from_secs(5))
            .concurrency_limit(8)
            .layer(GatherLayer::new(parts.socket.local_addr()))
            .layer(SignalLayer::new(parts.signaller.clone()))
            .layer(PunchLayer::new(parts.prober()))
            .layer(ProtocolSelectLayer::new([Protocol::Quic]))
            .service(parts.transport.clone()),
    )
}

fn stack_without_punch(parts: &StackParts) -> Stack {
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(GatherLayer::new(parts.socket.local_addr()))
            .layer(SignalLayer::new(parts.signaller.clone()))
            .service(parts.transport.clone()),
    )
}

async fn node_with(server: &fog::server::SignalServer, make: fn(&StackParts) -> Stack) -> Node {
    Node::builder()
        .signal(server.url())
        .bind_addr("127.0.0.1:0".parse().unwrap())
        .stack(make)
        .bind()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_custom_stack_with_timeout_and_concurrency_limit_connects() {
    let server = server().await;
    let a = node_with(&server, wrapped_stack).await;
    let b = node_with(&server, wrapped_stack).await;
    serve_echo(&b);
    let conn = within("connect", 10, a.connect(b.peer_id().to_string()))
        .await
        .expect("connects through the custom stack");
    assert_eq!(echo(&conn, b"custom".to_vec()).await, b"custom");
}

#[tokio::test]
async fn a_stack_without_a_punch_layer_fails_clearly_on_both_sides() {
    let server = server().await;
    let a = node_with(&server, stack_without_punch).await;
    let b = node_with(&server, stack_without_punch).await;
    let mut b_events = b.events();
    let err = within("connect", 10, a.connect(b.peer_id().to_string()))
        .await
        .unwrap_err();
    match ConnectError::find(&*err) {
        Some(ConnectError::MissingInput { layer, needs }) => {
            assert_eq!(layer, "QuicTransport");
            assert!(needs.contains("PunchLayer"), "{needs}");
        }
        other => panic!("unexpected {other:?}: {err}"),
    }
    // The responder reports its own failure as an event instead of crashing.
    within("responder error event", 10, async {
        loop {
            if let Ok(fog::Event::Error { message, .. }) = b_events.recv().await {
                assert!(message.contains("QuicTransport"), "{message}");
                break;
            }
        }
    })
    .await;
}
