//! Each layer on its own and in small stacks, over in-memory signallers, probers and a transport
//! that records the attempt it receives.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fog_core::{
    AnswerFrom, Attempt, BoxError, Candidate, CandidateKind, CheckEvent, CheckReply, ConnectError,
    Connection, EventBus, Identity, PeerId, PeerRef, Prober, Protocol, RemoteInfo,
    SessionDescription, SessionKeys, Signaller,
};
use fog_layers::{GatherLayer, ProtocolSelectLayer, PunchConfig, PunchLayer, SignalLayer};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// A transport that keeps the attempt it was called with and fails, so tests can look at what
/// the layers above filled in.
fn recording_transport(
    seen: Arc<Mutex<Option<Attempt>>>,
) -> impl tower::Service<Attempt, Response = Connection, Error = BoxError, Future = impl Send>
       + Clone
       + Send
       + 'static {
    service_fn(move |attempt: Attempt| {
        let seen = seen.clone();
        async move {
            *seen.lock().unwrap() = Some(attempt);
            Err::<Connection, BoxError>("recorded".into())
        }
    })
}

fn reached_transport(e: &BoxError) -> bool {
    e.to_string() == "recorded"
}

/// A signaller whose peer answers with fixed candidates, and that remembers what it was sent.
#[derive(Default)]
struct FakeSignaller {
    answerer: Option<PeerId>,
    offers: Mutex<Vec<(PeerRef, SessionDescription)>>,
    answers: Mutex<Vec<(PeerId, SessionDescription)>>,
    never_answer: bool,
}

impl Signaller for FakeSignaller {
    fn offer(
        &self,
        target: PeerRef,
        _session: SessionKeys,
        body: SessionDescription,
    ) -> BoxFuture<'static, Result<AnswerFrom, ConnectError>> {
        self.offers.lock().unwrap().push((target, body));
        let answerer = self.answerer;
        let never = self.never_answer;
        Box::pin(async move {
            if never {
                std::future::pending::<()>().await;
            }
            Ok(AnswerFrom {
                peer: answerer.expect("test sets the answering peer"),
                name: Some("bob".into()),
                body: SessionDescription {
                    secret: None,
                    candidates: vec![Candidate::host("10.9.9.9:9".parse().unwrap())],
                    protocols: vec![Protocol::Quic],
                    nat: None,
                    trickle: false,
                    rtc: None,
                },
            })
        })
    }

    fn answer(
        &self,
        to: PeerId,
        _session: SessionKeys,
        body: SessionDescription,
    ) -> BoxFuture<'static, Result<(), ConnectError>> {
        self.answers.lock().unwrap().push((to, body));
        Box::pin(async { Ok(()) })
    }
}

fn dial_attempt(target: PeerId) -> Attempt {
    Attempt::dial(
        Identity::generate().peer_id(),
        target.into(),
        EventBus::new(),
    )
}

fn cause(e: &BoxError) -> ConnectError {
    ConnectError::find(&**e).unwrap_or_else(|| panic!("no ConnectError in {e}"))
}

#[tokio::test]
async fn gather_and_signal_fill_in_both_halves_of_the_session() {
    let bob = Identity::generate().peer_id();
    let signaller = Arc::new(FakeSignaller {
        answerer: Some(bob),
        ..Default::default()
    });
    let seen = Arc::new(Mutex::new(None));
    let stack = ServiceBuilder::new()
        .layer(GatherLayer::new("127.0.0.1:4100".parse().unwrap()))
        .layer(SignalLayer::new(signaller.clone()))
        .layer(ProtocolSelectLayer::new([Protocol::Quic]))
        .service(recording_transport(seen.clone()));
    let err = stack.oneshot(dial_attempt(bob)).await.unwrap_err();
    assert!(reached_transport(&err), "{err}");

    let attempt = seen.lock().unwrap().take().unwrap();
    assert_eq!(
        attempt.local_candidates,
        vec![Candidate::host("127.0.0.1:4100".parse().unwrap())]
    );
    let remote = attempt.remote.expect("signal layer filled the remote");
    assert_eq!(remote.peer_id, bob);
    assert_eq!(remote.name.as_deref(), Some("bob"));
    assert_eq!(remote.candidates[0].addr, "10.9.9.9:9".parse().unwrap());
    assert_eq!(attempt.protocol, Some(Protocol::Quic));

    let offers = signaller.offers.lock().unwrap();
    let (target, body) = &offers[0];
    assert_eq!(*target, PeerRef::Id(bob));
    assert_eq!(
        body.secret.as_deref(),
        Some(fog_core::hex::encode(&attempt.session.secret).as_str()),
        "the offer carries the check secret"
    );
    assert_eq!(body.candidates, attempt.local_candidates);
}

#[tokio::test]
async fn an_answer_from_another_key_than_the_one_dialled_is_refused() {
    let signaller = Arc::new(FakeSignaller {
        answerer: Some(Identity::generate().peer_id()),
        ..Default::default()
    });
    let seen = Arc::new(Mutex::new(None));
    let stack = ServiceBuilder::new()
        .layer(SignalLayer::new(signaller))
        .service(recording_transport(seen.clone()));
    let err = stack
        .oneshot(dial_attempt(Identity::generate().peer_id()))
        .await
        .unwrap_err();
    assert!(
        matches!(cause(&err), ConnectError::SignalRefused(_)),
        "{err}"
    );
    assert!(seen.lock().unwrap().is_none());
}

#[tokio::test]
async fn a_responder_answers_without_the_secret() {
    let signaller = Arc::new(FakeSignaller::default());
    let alice = Identity::generate().peer_id();
    let seen = Arc::new(Mutex::new(None));
    let stack = ServiceBuilder::new()
        .layer(GatherLayer::new("127.0.0.1:4200".parse().unwrap()))
        .layer(SignalLayer::new(signaller.clone()))
        .service(recording_transport(seen.clone()));
    let remote = RemoteInfo {
        peer_id: alice,
        name: None,
        candidates: vec![],
        nat: None,
        protocols: vec![Protocol::Quic],
        trickle: false,
    };
    let attempt = Attempt::respond(
        Identity::generate().peer_id(),
        SessionKeys::generate(),
        remote,
        EventBus::new(),
    );
    let err = stack.oneshot(attempt).await.unwrap_err();
    assert!(reached_transport(&err));
    let answers = signaller.answers.lock().unwrap();
    assert_eq!(answers[0].0, alice);
    assert_eq!(answers[0].1.secret, None);
    assert_eq!(answers[0].1.candidates.len(), 1);
}

#[tokio::test]
async fn leaving_out_the_signal_layer_is_reported_not_a_panic() {
    let seen = Arc::new(Mutex::new(None));
    let stack = ServiceBuilder::new()
        .layer(GatherLayer::new("127.0.0.1:4300".parse().unwrap()))
        .layer(ProtocolSelectLayer::new([Protocol::Quic]))
        .service(recording_transport(seen.clone()));
    let err = stack
        .oneshot(dial_attempt(Identity::generate().peer_id()))
        .await
        .unwrap_err();
    match cause(&err) {
        ConnectError::MissingInput { layer, .. } => assert_eq!(layer, "ProtocolSelectLayer"),
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test]
async fn protocol_select_refuses_when_nothing_is_shared() {
    let bob = Identity::generate().peer_id();
    let signaller = Arc::new(FakeSignaller {
        answerer: Some(bob),
        ..Default::default()
    });
    let seen = Arc::new(Mutex::new(None));
    let stack = ServiceBuilder::new()
        .layer(SignalLayer::new(signaller))
        .layer(ProtocolSelectLayer::new([Protocol::Quic, Protocol::Kcp]))
        .service(recording_transport(seen));
    let mut attempt = dial_attempt(bob);
    attempt.protocols = vec![Protocol::Kcp];
    let err = stack.oneshot(attempt).await.unwrap_err();
    assert!(
        matches!(cause(&err), ConnectError::NoCommonProtocol { .. }),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn tower_timeout_bounds_a_stack_whose_peer_never_answers() {
    let signaller = Arc::new(FakeSignaller {
        never_answer: true,
        ..Default::default()
    });
    let seen = Arc::new(Mutex::new(None));
    let stack = ServiceBuilder::new()
        .timeout(Duration::from_secs(3))
        .layer(SignalLayer::new(signaller))
        .service(recording_transport(seen));
    let err = stack
        .oneshot(dial_attempt(Identity::generate().peer_id()))
        .await
        .unwrap_err();
    assert!(matches!(cause(&err), ConnectError::Timeout(_)), "{err}");
}

/// A prober whose network answers checks to each `alive` address after its round trip and
/// drops all others.
struct FakeProber {
    alive: Vec<(SocketAddr, Duration)>,
    watchers: Mutex<Vec<mpsc::UnboundedSender<CheckEvent>>>,
    sent: Mutex<Vec<SocketAddr>>,
}

impl FakeProber {
    fn new(alive: &[&str], rtt: Duration) -> Arc<Self> {
        let alive: Vec<(&str, Duration)> = alive.iter().map(|a| (*a, rtt)).collect();
        Self::with_rtts(&alive)
    }

    fn with_rtts(alive: &[(&str, Duration)]) -> Arc<Self> {
        Arc::new(FakeProber {
            alive: alive
                .iter()
                .map(|(a, rtt)| (a.parse().unwrap(), *rtt))
                .collect(),
            watchers: Mutex::new(Vec::new()),
            sent: Mutex::new(Vec::new()),
        })
    }
}

impl Prober for FakeProber {
    fn local_addr(&self) -> SocketAddr {
        "10.0.0.1:5000".parse().unwrap()
    }

    fn watch(&self, _session: &SessionKeys) -> mpsc::UnboundedReceiver<CheckEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.watchers.lock().unwrap().push(tx);
        rx
    }

    fn send_check(&self, _session: &SessionKeys, remote: SocketAddr) -> std::io::Result<()> {
        self.sent.lock().unwrap().push(remote);
        if let Some((_, rtt)) = self.alive.iter().find(|(a, _)| *a == remote) {
            let watchers = self.watchers.lock().unwrap().clone();
            let rtt = *rtt;
            tokio::spawn(async move {
                tokio::time::sleep(rtt).await;
                for w in watchers {
                    let _ = w.send(CheckEvent::Answered(CheckReply { remote, rtt }));
                }
            });
        }
        Ok(())
    }

    fn server_reflexive(&self, _stun: SocketAddr) -> BoxFuture<'_, Option<SocketAddr>> {
        Box::pin(async { Some("198.51.100.7:5000".parse().unwrap()) })
    }

    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

fn attempt_with_remote(candidates: &[(&str, CandidateKind, u32)]) -> Attempt {
    let bob = Identity::generate().peer_id();
    let mut attempt = dial_attempt(bob);
    attempt.remote = Some(RemoteInfo {
        peer_id: bob,
        name: None,
        candidates: candidates
            .iter()
            .map(|(a, kind, priority)| Candidate {
                addr: a.parse().unwrap(),
                kind: *kind,
                priority: *priority,
            })
            .collect(),
        nat: None,
        protocols: vec![Protocol::Quic],
        trickle: false,
    });
    attempt
}

#[tokio::test(start_paused = true)]
async fn punch_selects_the_candidate_that_answers() {
    let prober = FakeProber::new(&["203.0.113.7:7000"], Duration::from_millis(30));
    let seen = Arc::new(Mutex::new(None));
    let stack = ServiceBuilder::new()
        .layer(PunchLayer::new(prober.clone()))
        .service(recording_transport(seen.clone()));
    let attempt = attempt_with_remote(&[
        ("10.2.0.5:7000", CandidateKind::Host, 200),
        ("203.0.113.7:7000", CandidateKind::Srflx, 100),
    ]);
    let err = stack.oneshot(attempt).await.unwrap_err();
    assert!(reached_transport(&err), "{err}");
    let attempt = seen.lock().unwrap().take().unwrap();
    let path = attempt.path.expect("a path was selected");
    assert_eq!(path.remote.addr, "203.0.113.7:7000".parse().unwrap());
    assert_eq!(path.remote.kind, CandidateKind::Srflx);
    assert_eq!(path.rtt, Duration::from_millis(30));
    assert!(attempt.probes_sent >= 2);
    // The better-ranked candidate went first in every round.
    assert_eq!(
        prober.sent.lock().unwrap()[0],
        "10.2.0.5:7000".parse().unwrap()
    );
}

/// The path the punch layer hands on for these candidates, answered after these round trips,
/// and how long it took.
async fn punched(
    answers: &[(&str, Duration)],
    candidates: &[(&str, CandidateKind, u32)],
    strategy: Option<fog_core::Strategy>,
) -> (fog_core::SelectedPath, Duration) {
    let prober = FakeProber::with_rtts(answers);
    let seen = Arc::new(Mutex::new(None));
    let stack = ServiceBuilder::new()
        .layer(PunchLayer::new(prober))
        .service(recording_transport(seen.clone()));
    let mut attempt = attempt_with_remote(candidates);
    attempt.strategy = strategy;
    let started = tokio::time::Instant::now();
    let err = stack.oneshot(attempt).await.unwrap_err();
    assert!(reached_transport(&err), "{err}");
    let attempt = seen.lock().unwrap().take().unwrap();
    (attempt.path.expect("a path"), started.elapsed())
}

const PEER_RELAY: (&str, CandidateKind, u32) = ("203.0.113.9:50000", CandidateKind::Relay, 1);
const PEER_SRFLX: (&str, CandidateKind, u32) = ("203.0.113.7:7000", CandidateKind::Srflx, 100);

#[tokio::test(start_paused = true)]
async fn a_direct_pair_that_answers_within_the_grace_beats_a_relay_that_answered_first() {
    let ms = Duration::from_millis;
    let (path, _) = punched(
        &[(PEER_RELAY.0, ms(10)), (PEER_SRFLX.0, ms(120))],
        &[PEER_SRFLX, PEER_RELAY],
        Some(fog_core::Strategy::Punch),
    )
    .await;
    assert_eq!(path.kind, fog_core::PathKind::Direct, "{path:?}");
    assert_eq!(path.remote.addr, PEER_SRFLX.0.parse().unwrap());
}

#[tokio::test(start_paused = true)]
async fn the_relay_carries_the_connection_when_no_direct_pair_answers_within_the_grace() {
    let ms = Duration::from_millis;
    let grace = PunchConfig::default().relay_grace;
    let (path, took) = punched(
        &[(PEER_RELAY.0, ms(10))],
        &[PEER_SRFLX, PEER_RELAY],
        Some(fog_core::Strategy::Punch),
    )
    .await;
    assert_eq!(path.kind, fog_core::PathKind::Relay, "{path:?}");
    assert!(
        took >= ms(10) + grace && took < ms(10) + grace + ms(50),
        "{took:?}"
    );
    // Where no direct pair can exist, the relay is taken at once.
    let (path, took) = punched(
        &[(PEER_RELAY.0, ms(10))],
        &[PEER_RELAY],
        Some(fog_core::Strategy::RelayOnly),
    )
    .await;
    assert_eq!(path.kind, fog_core::PathKind::Relay, "{path:?}");
    assert!(took < ms(50), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn punch_gives_up_with_no_path_when_nothing_answers() {
    let prober = FakeProber::new(&[], Duration::ZERO);
    let config = PunchConfig {
        timeout: Duration::from_secs(2),
        ..PunchConfig::default()
    };
    let seen = Arc::new(Mutex::new(None));
    let stack = ServiceBuilder::new()
        .layer(PunchLayer::new(prober.clone()).with_config(config))
        .service(recording_transport(seen.clone()));
    let started = tokio::time::Instant::now();
    let err = stack
        .oneshot(attempt_with_remote(&[(
            "10.2.0.5:7000",
            CandidateKind::Host,
            1,
        )]))
        .await
        .unwrap_err();
    assert!(matches!(cause(&err), ConnectError::NoPath(_)), "{err}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_millis(2050),
        "gave up after {waited:?}"
    );
    assert!(seen.lock().unwrap().is_none());
    // Paced: a handful of rounds, not a flood.
    let sent = prober.sent.lock().unwrap().len();
    assert!((5..=20).contains(&sent), "{sent} checks in 2 s");
}
