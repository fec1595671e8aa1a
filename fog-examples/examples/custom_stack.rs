//! A stack of your own: fog's layers mixed with tower's `ConcurrencyLimit`, `Retry` and
//! `Timeout`. Each dial gets 8 s per try, up to two more tries (each with a fresh session) when
//! no path was found, and at most four attempts run at once.
//!
//! ```sh
//! cargo run -p fog-examples --example custom_stack -- [PEER] [SIGNAL_URL]
//! ```

use std::time::Duration;

use fog::layers::{
    GatherLayer, NatProbeLayer, PortPredictLayer, ProtocolSelectLayer, PunchLayer, SignalLayer,
    StrategyLayer,
};
use fog::{Attempt, BoxError, ConnectError, Connection, Protocol, Role, StackParts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::retry::Policy;
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;

/// Tries a dial again, as a new attempt, when it timed out or found no path.
#[derive(Clone)]
struct RetryNewSession {
    left: u32,
}

impl Policy<Attempt, Connection, BoxError> for RetryNewSession {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _attempt: &mut Attempt,
        result: &mut Result<Connection, BoxError>,
    ) -> Option<Self::Future> {
        let error = result.as_ref().err()?;
        let worth_it = error.is::<tower::timeout::error::Elapsed>()
            || matches!(
                ConnectError::find(error.as_ref()),
                Some(ConnectError::NoPath(_) | ConnectError::Timeout(_))
            );
        if !worth_it || self.left == 0 {
            return None;
        }
        self.left -= 1;
        eprintln!("retrying: {error}");
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, attempt: &Attempt) -> Option<Attempt> {
        // Only the dialer starts over: a fresh session, fresh candidates.
        (attempt.role == Role::Dialer).then(|| {
            let mut fresh = Attempt::dial(
                attempt.local_peer,
                attempt.target.clone(),
                attempt.events.clone(),
            );
            fresh.protocols = attempt.protocols.clone();
            fresh
        })
    }
}

fn my_stack(parts: &StackParts) -> fog::Stack {
    let stack = ServiceBuilder::new()
        .concurrency_limit(4)
        .retry(RetryNewSession { left: 2 })
        .timeout(Duration::from_secs(8))
        .option_layer(parts.nat.clone().map(NatProbeLayer::new))
        .layer(GatherLayer::new(parts.socket.local_addr()).with_stun(parts.prober(), parts.stun()))
        .layer(PortPredictLayer::new(parts.stun()))
        .layer(SignalLayer::new(parts.signaller.clone()))
        .layer(StrategyLayer::new())
        .layer(PunchLayer::new(parts.prober()).with_config(parts.punch))
        .layer(ProtocolSelectLayer::new([Protocol::Quic]))
        .service(parts.transport.clone());
    BoxCloneSyncService::new(stack)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let peer = args.next().unwrap_or("1e:34:a1:44:2c:1c".into());
    let signal = args.next().unwrap_or("ws://127.0.0.1:7600/ws".into());
    let node = fog::Node::builder()
        .signal(signal)
        .stack(my_stack)
        .bind()
        .await?;
    let conn = node.connect(&peer).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(b"hello").await?;
    send.shutdown().await?;
    let mut reply = String::new();
    recv.read_to_string(&mut reply).await?;
    println!(
        "connected to {} in {:?} through a custom stack; echo {reply:?}",
        conn.peer_id(),
        conn.connect_time()
    );
    conn.close("done");
    node.shutdown().await;
    Ok(())
}
