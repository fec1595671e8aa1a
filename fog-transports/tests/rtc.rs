//! WebRTC between two fog peers on this host, with the signalling in memory: a stream
//! carries bytes both ways; an answer signed by a key other than the peer the signal server
//! vouches for is refused by the dialer; an offer that is not signed by its sender is refused
//! by the responder.

use std::sync::Mutex;
use std::time::Duration;

use fog_core::signal::{AnswerFrom, Signaller};
use fog_core::{
    ConnectError, Connection, EventBus, Identity, PeerId, PeerRef, Protocol, SessionDescription,
    SessionKeys,
};
use fog_transports::rtc::{IceServers, RtcTransport};
use futures_util::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// A signal server in memory: hands the dialer's offer to `responder` as coming from
/// `dialer`, and the answer back as coming from `answering_as`.
struct Loopback {
    responder: RtcTransport,
    dialer: PeerId,
    answering_as: PeerId,
    /// Overwrites the offer's signature before the responder sees it.
    forge_offer: bool,
    answered: Mutex<Option<oneshot::Sender<Result<Connection, ConnectError>>>>,
}

/// The responder's side of the in-memory signalling: its answer goes to the waiting dialer.
struct AnswerBack(Mutex<Option<oneshot::Sender<SessionDescription>>>);

impl Signaller for AnswerBack {
    fn offer(
        &self,
        _: PeerRef,
        _: SessionKeys,
        _: SessionDescription,
    ) -> BoxFuture<'static, Result<AnswerFrom, ConnectError>> {
        unreachable!("the responder does not offer")
    }

    fn answer(
        &self,
        _: PeerId,
        _: SessionKeys,
        body: SessionDescription,
    ) -> BoxFuture<'static, Result<(), ConnectError>> {
        if let Some(tx) = self.0.lock().unwrap().take() {
            let _ = tx.send(body);
        }
        Box::pin(async { Ok(()) })
    }
}

impl Signaller for Loopback {
    fn offer(
        &self,
        _: PeerRef,
        session: SessionKeys,
        mut body: SessionDescription,
    ) -> BoxFuture<'static, Result<AnswerFrom, ConnectError>> {
        let forge_offer = self.forge_offer;
        let answered = self.answered.lock().unwrap().take();
        let responder = self.responder.clone();
        let dialer = self.dialer;
        let answering_as = self.answering_as;
        Box::pin(async move {
            let mut offer = body.rtc.take().expect("an rtc offer");
            if forge_offer {
                offer.signature = "00".repeat(64);
            }
            let (tx, rx) = oneshot::channel();
            let back = AnswerBack(Mutex::new(Some(tx)));
            tokio::spawn(async move {
                let result = responder
                    .answer(
                        &back,
                        dialer,
                        None,
                        session,
                        &offer,
                        &IceServers::default(),
                        EventBus::new(),
                    )
                    .await;
                if let Some(answered) = answered {
                    let _ = answered.send(result);
                }
            });
            let body = rx
                .await
                .map_err(|_| ConnectError::Refused("the responder gave no answer".into()))?;
            Ok(AnswerFrom {
                peer: answering_as,
                name: None,
                body,
            })
        })
    }

    fn answer(
        &self,
        _: PeerId,
        _: SessionKeys,
        _: SessionDescription,
    ) -> BoxFuture<'static, Result<(), ConnectError>> {
        unreachable!("the dialer does not answer")
    }
}

struct Pair {
    dialer: RtcTransport,
    signal: Loopback,
    answered: oneshot::Receiver<Result<Connection, ConnectError>>,
}

fn pair(answering_as: Option<PeerId>, forge_offer: bool) -> (Pair, PeerId) {
    let (a, b) = (Identity::generate(), Identity::generate());
    let (tx, rx) = oneshot::channel();
    let signal = Loopback {
        responder: RtcTransport::new(b.clone()),
        dialer: a.peer_id(),
        answering_as: answering_as.unwrap_or(b.peer_id()),
        forge_offer,
        answered: Mutex::new(Some(tx)),
    };
    (
        Pair {
            dialer: RtcTransport::new(a),
            signal,
            answered: rx,
        },
        b.peer_id(),
    )
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("finished within 30 s")
}

#[tokio::test]
async fn data_channels_carry_streams_between_the_right_keys() {
    let (pair, b) = pair(None, false);
    let dialled = bounded(pair.dialer.dial(
        &pair.signal,
        PeerRef::Id(b),
        &IceServers::default(),
        EventBus::new(),
    ))
    .await
    .expect("dial succeeds");
    let answered = bounded(pair.answered)
        .await
        .unwrap()
        .expect("answer succeeds");
    assert_eq!(dialled.protocol(), Protocol::Rtc);
    assert_eq!(dialled.peer_id(), b);

    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let (mut send, mut recv) = bounded(dialled.open_bi()).await.unwrap();
    let writing = {
        let data = data.clone();
        tokio::spawn(async move {
            send.write_all(&data).await.unwrap();
            send.shutdown().await.unwrap();
            send
        })
    };
    let (mut peer_send, mut peer_recv) = bounded(answered.accept_bi()).await.unwrap();
    let mut got = Vec::new();
    bounded(peer_recv.read_to_end(&mut got)).await.unwrap();
    assert!(got == data, "3 MiB arrived intact ({} bytes)", got.len());
    // The reverse direction still works after the dialer ended its own.
    peer_send.write_all(b"and back").await.unwrap();
    peer_send.shutdown().await.unwrap();
    let mut back = Vec::new();
    bounded(recv.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, b"and back");
    drop(bounded(writing).await.unwrap());
}

#[tokio::test]
async fn a_dialer_refuses_an_answer_signed_by_another_key() {
    // The signal server vouches for C, but B answers: B's signature does not verify as C's.
    let c = Identity::generate().peer_id();
    let (pair, _b) = pair(Some(c), false);
    let err = bounded(pair.dialer.dial(
        &pair.signal,
        PeerRef::Id(c),
        &IceServers::default(),
        EventBus::new(),
    ))
    .await
    .expect_err("the dial fails");
    assert!(matches!(err, ConnectError::HandshakeRefused(_)), "{err}");
}

#[tokio::test]
async fn a_responder_refuses_an_offer_not_signed_by_its_sender() {
    let (pair, b) = pair(None, true);
    let ice = IceServers::default();
    let dial = pair
        .dialer
        .dial(&pair.signal, PeerRef::Id(b), &ice, EventBus::new());
    // The responder refuses before answering, so the dialer hears no answer.
    let (dialled, answered) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(30), dial),
        bounded(pair.answered)
    );
    let err = answered.unwrap().expect_err("the responder refuses");
    assert!(matches!(err, ConnectError::HandshakeRefused(_)), "{err}");
    assert!(!matches!(dialled, Ok(Ok(_))), "the dial did not succeed");
}
