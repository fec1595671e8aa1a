//! `RelayFallbackLayer` on its own: which relays it allocates on, over an in-memory signaller
//! and a prober whose relays answer after set delays (tokio's clock is paused).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fog_core::signal::RelayGrant;
use fog_core::{
    AnswerFrom, Attempt, BoxError, CandidateKind, CheckEvent, ConnectError, Connection, EventBus,
    Identity, NatProfile, NatType, PeerId, PeerRef, Prober, RelayHandle, SessionDescription,
    SessionKeys, Signaller, TurnTransport,
};
use fog_layers::RelayFallbackLayer;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tower::{service_fn, ServiceBuilder, ServiceExt};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn grant(url: &str) -> RelayGrant {
    RelayGrant {
        url: url.into(),
        username: "1:someone".into(),
        password: "secret".into(),
        expires: u64::MAX,
    }
}

/// Grants the relays it was made with.
struct Grants(Vec<RelayGrant>);

impl Signaller for Grants {
    fn offer(
        &self,
        _target: PeerRef,
        _session: SessionKeys,
        _body: SessionDescription,
    ) -> BoxFuture<'static, Result<AnswerFrom, ConnectError>> {
        Box::pin(async { Err(ConnectError::Shutdown) })
    }

    fn answer(
        &self,
        _to: PeerId,
        _session: SessionKeys,
        _body: SessionDescription,
    ) -> BoxFuture<'static, Result<(), ConnectError>> {
        Box::pin(async { Err(ConnectError::Shutdown) })
    }

    fn relay_credentials(
        &self,
        _peer: PeerRef,
    ) -> BoxFuture<'static, Result<Vec<RelayGrant>, ConnectError>> {
        let grants = self.0.clone();
        Box::pin(async move { Ok(grants) })
    }
}

struct FakeRelay {
    server: SocketAddr,
}

impl RelayHandle for FakeRelay {
    fn server(&self) -> SocketAddr {
        self.server
    }

    fn relayed_addr(&self) -> SocketAddr {
        SocketAddr::new(self.server.ip(), 40000)
    }

    fn path_to(&self, peer: SocketAddr) -> SocketAddr {
        peer
    }
}

/// A prober whose relays answer an allocation after a delay each; it records the allocations
/// that completed.
struct RelayProber {
    delays: HashMap<SocketAddr, Duration>,
    completed: Mutex<Vec<(SocketAddr, TurnTransport)>>,
}

impl Prober for RelayProber {
    fn local_addr(&self) -> SocketAddr {
        addr("10.0.0.1:5000")
    }

    fn watch(&self, _session: &SessionKeys) -> mpsc::UnboundedReceiver<CheckEvent> {
        mpsc::unbounded_channel().1
    }

    fn send_check(&self, _session: &SessionKeys, _remote: SocketAddr) -> std::io::Result<()> {
        Ok(())
    }

    fn server_reflexive(&self, _stun: SocketAddr) -> BoxFuture<'_, Option<SocketAddr>> {
        Box::pin(async { None })
    }

    fn allocate_relay(
        self: Arc<Self>,
        server: SocketAddr,
        transport: TurnTransport,
        _username: String,
        _password: String,
    ) -> BoxFuture<'static, Result<Arc<dyn RelayHandle>, String>> {
        Box::pin(async move {
            let delay = *self.delays.get(&server).ok_or("unknown relay")?;
            tokio::time::sleep(delay).await;
            self.completed.lock().unwrap().push((server, transport));
            Ok(Arc::new(FakeRelay { server }) as Arc<dyn RelayHandle>)
        })
    }

    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

/// Runs the layer over `attempt` and returns the attempt as the next service got it.
async fn through_layer(layer: RelayFallbackLayer, attempt: Attempt) -> Attempt {
    let seen = Arc::new(Mutex::new(None));
    let recorder = {
        let seen = seen.clone();
        service_fn(move |attempt: Attempt| {
            let seen = seen.clone();
            async move {
                *seen.lock().unwrap() = Some(attempt);
                Err::<Connection, BoxError>("recorded".into())
            }
        })
    };
    let stack = ServiceBuilder::new().layer(layer).service(recorder);
    let err = stack.oneshot(attempt).await.unwrap_err();
    assert_eq!(err.to_string(), "recorded");
    let attempt = seen.lock().unwrap().take().unwrap();
    attempt
}

fn attempt() -> Attempt {
    Attempt::dial(
        Identity::generate().peer_id(),
        PeerRef::Name("bob".into()),
        EventBus::new(),
    )
}

#[tokio::test(start_paused = true)]
async fn the_relay_that_answers_first_is_kept_and_the_others_are_abandoned() {
    let near = addr("203.0.113.20:3478");
    let far = addr("198.51.100.30:3478");
    let prober = Arc::new(RelayProber {
        delays: HashMap::from([
            (near, Duration::from_millis(20)),
            (far, Duration::from_millis(180)),
        ]),
        completed: Mutex::new(Vec::new()),
    });
    let signaller = Arc::new(Grants(vec![
        grant("turn:198.51.100.30:3478?transport=udp"),
        grant("turn:203.0.113.20:3478?transport=udp"),
    ]));
    let attempt = through_layer(
        RelayFallbackLayer::new(prober.clone(), signaller),
        attempt(),
    )
    .await;
    let relay = attempt
        .local_gathering
        .iter()
        .find(|g| g.what == "relay")
        .expect("a relay lookup in the background");
    let found = relay.result().await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].kind, CandidateKind::Relay);
    assert_eq!(found[0].addr, addr("203.0.113.20:40000"));
    let kept: Vec<SocketAddr> = attempt.relays.all().iter().map(|r| r.server()).collect();
    assert_eq!(kept, vec![near]);
    // The far relay's allocation never finishes: it was dropped when the near one won.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        *prober.completed.lock().unwrap(),
        vec![(near, TurnTransport::Udp)]
    );
}

#[tokio::test(start_paused = true)]
async fn configured_servers_count_and_udp_blocked_nodes_use_tcp() {
    let udp = addr("203.0.113.20:3478");
    let tcp = addr("203.0.113.21:443");
    let prober = Arc::new(RelayProber {
        delays: HashMap::from([
            (udp, Duration::from_millis(10)),
            (tcp, Duration::from_millis(30)),
        ]),
        completed: Mutex::new(Vec::new()),
    });
    let layer =
        RelayFallbackLayer::new(prober.clone(), Arc::new(Grants(Vec::new()))).with_servers(vec![
            grant("turn:203.0.113.20:3478?transport=udp"),
            grant("turn:203.0.113.21:443?transport=tcp"),
        ]);
    let mut blocked = attempt();
    blocked.local_nat = Some(NatProfile {
        nat_type: Some(NatType::UdpBlocked),
        ..NatProfile::default()
    });
    let attempt = through_layer(layer, blocked).await;
    let relay = attempt
        .local_gathering
        .iter()
        .find(|g| g.what == "relay")
        .unwrap();
    assert_eq!(relay.result().await.len(), 1);
    // Only the TCP relay, though the UDP one would have answered first.
    assert_eq!(
        *prober.completed.lock().unwrap(),
        vec![(tcp, TurnTransport::Tcp)]
    );
}
