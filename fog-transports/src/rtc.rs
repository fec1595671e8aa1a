//! WebRTC data channels as a fog transport (`webrtc` 0.17), for fog nodes and for browsers.
//!
//! WebRTC brings its own ICE, so it runs beside fog's punch stack rather than under it: the
//! offer and the answer travel through fog's signal server in the `rtc` field of the session
//! description, each with all ICE candidates gathered (host, server-reflexive from the node's
//! STUN servers, relayed from its TURN grants), and ICE finds the path.
//!
//! Each side signs its SDP with its node key ([`rtc_signed_message`]) and checks the other's
//! signature against the peer id the signal server verified. The SDP carries the DTLS
//! certificate's fingerprint and DTLS refuses any other certificate, so the encrypted
//! connection is bound to the peer's Ed25519 key: a relay of the signalling cannot step in.
//!
//! Streams are data channels, ordered and reliable: `open_bi` opens one, `accept_bi` takes the
//! peer's. A fog dialer opens a `fog-control` channel first (an offer needs one); it carries
//! nothing and is never handed out as a stream.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use fog_core::signal::{rtc_signed_message, RelayGrant, RtcDescription};
use fog_core::{
    CandidateKind, ConnectError, Connection, ConnectionError, ConnectionInfo, Event, EventBus,
    Identity, PathKind, PeerId, PeerRef, Protocol, RecvHalf, SendHalf, SessionDescription,
    SessionKeys, Signaller, TransportConnection, TransportCounters,
};
use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{APIBuilder, API};
use webrtc::data::data_channel::{DataChannel, PollDataChannel};
use webrtc::data_channel::RTCDataChannel;
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;

use crate::mux::{Counted, Counts};

/// The label of the dialer's first data channel, which only makes the offer possible.
pub const CONTROL_LABEL: &str = "fog-control";
/// How long ICE candidate gathering may take before the description goes out as it is.
const GATHER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long ICE, DTLS and SCTP may take in one try once both descriptions are known.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(12);
/// Tries of a dial (see [`RtcTransport::dial`]).
pub const DIAL_TRIES: u32 = 3;
/// Largest message one write becomes (browsers take up to 256 KiB; smaller keeps latency low).
const MESSAGE: usize = 16 * 1024;
/// Bytes a data channel may have queued before writes wait.
const HIGH_WATER: usize = 1024 * 1024;
/// Writes resume when the queue is down to this.
const LOW_WATER: usize = 256 * 1024;
/// Largest message a read takes in one piece (a browser may send up to 256 KiB).
const READ_BUFFER: usize = 256 * 1024;
/// How long a gracefully ended data channel stays open before it is closed (see
/// [`ChannelStream`]'s `Drop`).
const LINGER: Duration = Duration::from_secs(5);
/// Data channels the peer opened that wait for `accept_bi`.
const ACCEPT_QUEUE: usize = 64;

/// The ICE servers a side uses: STUN for server-reflexive candidates, TURN for relayed ones.
#[derive(Clone, Debug, Default)]
pub struct IceServers {
    /// STUN servers.
    pub stun: Vec<SocketAddr>,
    /// TURN servers with their credentials (from the signal server or configured).
    pub turn: Vec<RelayGrant>,
}

impl IceServers {
    fn to_webrtc(&self) -> Vec<RTCIceServer> {
        let mut servers: Vec<RTCIceServer> = self
            .stun
            .iter()
            .map(|addr| RTCIceServer {
                urls: vec![format!("stun:{addr}")],
                ..Default::default()
            })
            .collect();
        // `webrtc`'s ICE gathers relayed candidates over UDP only.
        servers.extend(
            self.turn
                .iter()
                .filter(|grant| !grant.url.contains("transport=tcp"))
                .map(|grant| RTCIceServer {
                    urls: vec![grant.url.clone()],
                    username: grant.username.clone(),
                    credential: grant.password.clone(),
                }),
        );
        servers
    }
}

/// Signs `sdp` for `session` with `identity`: the description a peer sends.
pub fn sign_description(identity: &Identity, session: &SessionKeys, sdp: String) -> RtcDescription {
    let signature = identity.sign(&rtc_signed_message(&session.id_hex(), &sdp));
    RtcDescription {
        sdp,
        signature: fog_core::hex::encode(&signature),
    }
}

/// Checks that `description` for `session` was signed by `peer`.
pub fn verify_description(
    peer: &PeerId,
    session: &SessionKeys,
    description: &RtcDescription,
) -> Result<(), ConnectError> {
    let signature = fog_core::hex::decode(&description.signature).ok_or_else(|| {
        ConnectError::HandshakeRefused("the WebRTC description's signature is not hex".into())
    })?;
    peer.verify(
        &rtc_signed_message(&session.id_hex(), &description.sdp),
        &signature,
    )
    .map_err(|_| {
        ConnectError::HandshakeRefused(format!(
            "the WebRTC description is not signed by {peer}: wrong key or altered"
        ))
    })
}

/// The WebRTC transport: dials and answers with data channels.
#[derive(Clone)]
pub struct RtcTransport {
    identity: Identity,
    api: Arc<API>,
}

impl RtcTransport {
    /// WebRTC presenting `identity`.
    pub fn new(identity: Identity) -> Self {
        let mut settings = SettingEngine::default();
        // Data channels as byte streams rather than message callbacks.
        settings.detach_data_channels();
        let api = APIBuilder::new().with_setting_engine(settings).build();
        RtcTransport {
            identity,
            api: Arc::new(api),
        }
    }

    async fn peer_connection(
        &self,
        ice: &IceServers,
    ) -> Result<Arc<RTCPeerConnection>, ConnectError> {
        let config = RTCConfiguration {
            ice_servers: ice.to_webrtc(),
            ..Default::default()
        };
        let pc = self
            .api
            .new_peer_connection(config)
            .await
            .map_err(|e| ConnectError::NoPath(format!("WebRTC: {e}")))?;
        Ok(Arc::new(pc))
    }

    /// Our description, once ICE gathering is complete (or [`GATHER_TIMEOUT`] passed).
    async fn gathered(
        &self,
        pc: &RTCPeerConnection,
        description: RTCSessionDescription,
        session: &SessionKeys,
    ) -> Result<RtcDescription, ConnectError> {
        let mut complete = pc.gathering_complete_promise().await;
        pc.set_local_description(description)
            .await
            .map_err(|e| ConnectError::NoPath(format!("WebRTC local description: {e}")))?;
        let _ = tokio::time::timeout(GATHER_TIMEOUT, complete.recv()).await;
        let local = pc
            .local_description()
            .await
            .ok_or_else(|| ConnectError::NoPath("WebRTC: no local description".into()))?;
        Ok(sign_description(&self.identity, session, local.sdp))
    }

    /// Dials `target` through `signaller`: offers, checks the signed answer, and waits for
    /// ICE, DTLS and SCTP.
    ///
    /// A try whose handshakes stall is given up after [`CONNECT_TIMEOUT`] and made again with
    /// a new session, up to [`DIAL_TRIES`] times: under loss, `webrtc`'s DTLS can wait on a
    /// lost ChangeCipherSpec through every retransmission of the flight, where a new try
    /// usually connects within a second or two.
    pub async fn dial(
        &self,
        signaller: &dyn Signaller,
        target: PeerRef,
        ice: &IceServers,
        events: EventBus,
    ) -> Result<Connection, ConnectError> {
        let started = Instant::now();
        let mut tries = 1;
        loop {
            match self
                .dial_once(signaller, target.clone(), ice, events.clone(), started)
                .await
            {
                Err(ConnectError::Timeout(why)) if tries < DIAL_TRIES => {
                    tracing::debug!(tries, why, "WebRTC try stalled; trying again");
                    tries += 1;
                }
                result => return result,
            }
        }
    }

    async fn dial_once(
        &self,
        signaller: &dyn Signaller,
        target: PeerRef,
        ice: &IceServers,
        events: EventBus,
        started: Instant,
    ) -> Result<Connection, ConnectError> {
        let session = SessionKeys::generate();
        let pc = self.peer_connection(ice).await?;
        let closing = Closing(Some(pc.clone()));
        let streams = Streams::watch(&pc);
        let control = pc
            .create_data_channel(CONTROL_LABEL, None)
            .await
            .map_err(|e| ConnectError::NoPath(format!("WebRTC data channel: {e}")))?;
        let control_open = opened(&control);
        let offer = pc
            .create_offer(None)
            .await
            .map_err(|e| ConnectError::NoPath(format!("WebRTC offer: {e}")))?;
        let description = self.gathered(&pc, offer, &session).await?;
        let body = SessionDescription {
            secret: Some(fog_core::hex::encode(&session.secret)),
            protocols: vec![Protocol::Rtc],
            rtc: Some(description),
            ..Default::default()
        };
        let answer = signaller.offer(target.clone(), session, body).await?;
        if let PeerRef::Id(expected) = &target {
            if *expected != answer.peer {
                return Err(ConnectError::HandshakeRefused(format!(
                    "{} answered for {expected}",
                    answer.peer
                )));
            }
        }
        let remote = answer
            .body
            .rtc
            .ok_or_else(|| ConnectError::NoCommonProtocol {
                ours: "rtc".into(),
                theirs: protocol_list(&answer.body.protocols),
            })?;
        verify_description(&answer.peer, &session, &remote)?;
        let remote = RTCSessionDescription::answer(remote.sdp)
            .map_err(|e| ConnectError::HandshakeRefused(format!("WebRTC answer: {e}")))?;
        pc.set_remote_description(remote)
            .await
            .map_err(|e| ConnectError::HandshakeRefused(format!("WebRTC answer: {e}")))?;
        let up = async {
            let _ = control_open.await;
        };
        finish(
            closing,
            streams,
            up,
            answer.peer,
            answer.name,
            started,
            events,
        )
        .await
    }

    /// Answers an offer `from` (as the signal server verified it) that carries `offer`:
    /// checks its signature, answers through `signaller`, and waits for the connection.
    #[allow(clippy::too_many_arguments)]
    pub async fn answer(
        &self,
        signaller: &dyn Signaller,
        from: PeerId,
        from_name: Option<String>,
        session: SessionKeys,
        offer: &RtcDescription,
        ice: &IceServers,
        events: EventBus,
    ) -> Result<Connection, ConnectError> {
        let started = Instant::now();
        verify_description(&from, &session, offer)?;
        let pc = self.peer_connection(ice).await?;
        let closing = Closing(Some(pc.clone()));
        let streams = Streams::watch(&pc);
        let remote = RTCSessionDescription::offer(offer.sdp.clone())
            .map_err(|e| ConnectError::HandshakeRefused(format!("WebRTC offer: {e}")))?;
        pc.set_remote_description(remote)
            .await
            .map_err(|e| ConnectError::HandshakeRefused(format!("WebRTC offer: {e}")))?;
        let answer = pc
            .create_answer(None)
            .await
            .map_err(|e| ConnectError::NoPath(format!("WebRTC answer: {e}")))?;
        let description = self.gathered(&pc, answer, &session).await?;
        let body = SessionDescription {
            protocols: vec![Protocol::Rtc],
            rtc: Some(description),
            ..Default::default()
        };
        signaller.answer(from, session, body).await?;
        let mut state = streams.state.clone();
        let up = async move {
            let _ = state
                .wait_for(|s| *s == RTCPeerConnectionState::Connected)
                .await;
        };
        finish(closing, streams, up, from, from_name, started, events).await
    }
}

fn protocol_list(protocols: &[Protocol]) -> String {
    protocols
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Resolves when `channel` opens.
fn opened(channel: &Arc<RTCDataChannel>) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    let mut tx = Some(tx);
    channel.on_open(Box::new(move || {
        if let Some(tx) = tx.take() {
            let _ = tx.send(());
        }
        Box::pin(async {})
    }));
    rx
}

/// A peer connection on its way to becoming a fog connection, closed when that fails or is
/// given up (it holds sockets and tasks until closed).
struct Closing(Option<Arc<RTCPeerConnection>>);

impl Closing {
    /// The peer connection, now owned by a fog connection.
    fn keep(mut self) -> Arc<RTCPeerConnection> {
        self.0.take().expect("kept once")
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        if let Some(pc) = self.0.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = pc.close().await;
                });
            }
        }
    }
}

/// Waits for `up` (or failure), then makes the connection and announces it.
async fn finish(
    closing: Closing,
    streams: Streams,
    up: impl std::future::Future<Output = ()>,
    peer: PeerId,
    peer_name: Option<String>,
    started: Instant,
    events: EventBus,
) -> Result<Connection, ConnectError> {
    let mut state = streams.state.clone();
    let failed = async move {
        let _ = state
            .wait_for(|s| {
                matches!(
                    s,
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                )
            })
            .await;
    };
    let outcome = tokio::time::timeout(CONNECT_TIMEOUT, async {
        tokio::select! {
            _ = up => Ok(()),
            _ = failed => Err(ConnectError::NoPath("WebRTC: ICE or DTLS failed".into())),
        }
    })
    .await;
    let result = match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ConnectError::Timeout(format!(
            "WebRTC did not connect within {CONNECT_TIMEOUT:?}"
        ))),
    };
    result?;
    let pc = closing.keep();
    let path = SelectedPair::of(&pc).await;
    let info = ConnectionInfo {
        peer,
        peer_name,
        protocol: Protocol::Rtc,
        path: path.kind,
        candidate: path.candidate,
        strategy: None,
        probes: 0,
        connect_time: started.elapsed(),
    };
    let connection = RtcConnection {
        pc,
        streams,
        path,
        counts: Arc::default(),
    };
    let connection = Connection::new(Box::new(connection), info, events.clone());
    events.emit(Event::Connected {
        peer,
        remote: connection.remote_addr(),
        protocol: Protocol::Rtc,
        path: connection.path_kind(),
        elapsed: started.elapsed(),
    });
    Ok(connection)
}

/// The candidate pair ICE chose.
struct SelectedPair {
    kind: PathKind,
    candidate: CandidateKind,
    remote: SocketAddr,
    local: SocketAddr,
    relay: Option<SocketAddr>,
}

impl SelectedPair {
    async fn of(pc: &RTCPeerConnection) -> SelectedPair {
        let unknown: SocketAddr = ([0, 0, 0, 0], 0).into();
        let pair = pc
            .sctp()
            .transport()
            .ice_transport()
            .get_selected_candidate_pair()
            .await;
        let Some(pair) = pair else {
            return SelectedPair {
                kind: PathKind::Direct,
                candidate: CandidateKind::Host,
                remote: unknown,
                local: unknown,
                relay: None,
            };
        };
        let addr = |address: &str, port: u16| {
            address
                .parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, port))
                .unwrap_or(unknown)
        };
        let remote = addr(&pair.remote.address, pair.remote.port);
        let local = addr(&pair.local.address, pair.local.port);
        let relay = if pair.local.typ == RTCIceCandidateType::Relay {
            Some(local)
        } else if pair.remote.typ == RTCIceCandidateType::Relay {
            Some(remote)
        } else {
            None
        };
        SelectedPair {
            kind: if relay.is_some() {
                PathKind::Relay
            } else {
                PathKind::Direct
            },
            candidate: match pair.remote.typ {
                RTCIceCandidateType::Host => CandidateKind::Host,
                RTCIceCandidateType::Relay => CandidateKind::Relay,
                RTCIceCandidateType::Prflx => CandidateKind::Prflx,
                _ => CandidateKind::Srflx,
            },
            remote,
            local,
            relay,
        }
    }
}

/// The peer's data channels as they open, and the connection's state.
struct Streams {
    accepted: tokio::sync::Mutex<mpsc::Receiver<Arc<DataChannel>>>,
    state: watch::Receiver<RTCPeerConnectionState>,
}

impl Streams {
    /// Starts watching `pc`: call before the descriptions are set, so nothing is missed.
    fn watch(pc: &Arc<RTCPeerConnection>) -> Streams {
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        pc.on_data_channel(Box::new(move |channel: Arc<RTCDataChannel>| {
            let tx = tx.clone();
            if channel.label() == CONTROL_LABEL {
                return Box::pin(async {});
            }
            let detach = channel.clone();
            channel.on_open(Box::new(move || {
                let detach = detach.clone();
                let tx = tx.clone();
                Box::pin(async move {
                    if let Ok(stream) = detach.detach().await {
                        let _ = tx.try_send(stream);
                    }
                })
            }));
            Box::pin(async {})
        }));
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        pc.on_peer_connection_state_change(Box::new(move |s| {
            let _ = state_tx.send(s);
            Box::pin(async {})
        }));
        Streams {
            accepted: tokio::sync::Mutex::new(rx),
            state,
        }
    }
}

/// A WebRTC peer connection as a fog transport connection.
struct RtcConnection {
    pc: Arc<RTCPeerConnection>,
    streams: Streams,
    path: SelectedPair,
    counts: Arc<Counts>,
}

fn closed_error(state: RTCPeerConnectionState) -> ConnectionError {
    ConnectionError::Closed(format!("WebRTC connection {state}"))
}

impl RtcConnection {
    fn stream(&self, channel: Arc<DataChannel>) -> (SendHalf, RecvHalf) {
        let (read, write) = tokio::io::split(Counted {
            io: ChannelStream::new(channel),
            counts: self.counts.clone(),
        });
        (Box::new(write), Box::new(read))
    }
}

impl TransportConnection for RtcConnection {
    fn open_bi(&self) -> BoxFuture<'_, Result<(SendHalf, RecvHalf), ConnectionError>> {
        Box::pin(async move {
            let state = *self.streams.state.borrow();
            if matches!(
                state,
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
            ) {
                return Err(closed_error(state));
            }
            let channel = self
                .pc
                .create_data_channel("fog", None)
                .await
                .map_err(|e| ConnectionError::Stream(e.to_string()))?;
            let open = opened(&channel);
            let mut state = self.streams.state.clone();
            tokio::select! {
                _ = open => {}
                s = state.wait_for(|s| matches!(s, RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed)) => {
                    let s = s.map(|s| *s).unwrap_or(RTCPeerConnectionState::Closed);
                    return Err(closed_error(s));
                }
            }
            let detached = channel
                .detach()
                .await
                .map_err(|e| ConnectionError::Stream(e.to_string()))?;
            Ok(self.stream(detached))
        })
    }

    fn accept_bi(&self) -> BoxFuture<'_, Result<(SendHalf, RecvHalf), ConnectionError>> {
        Box::pin(async move {
            let mut accepted = self.streams.accepted.lock().await;
            let mut state = self.streams.state.clone();
            tokio::select! {
                channel = accepted.recv() => match channel {
                    Some(channel) => Ok(self.stream(channel)),
                    None => Err(ConnectionError::Closed("WebRTC connection gone".into())),
                },
                s = state.wait_for(|s| matches!(s, RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed)) => {
                    let s = s.map(|s| *s).unwrap_or(RTCPeerConnectionState::Closed);
                    Err(closed_error(s))
                }
            }
        })
    }

    fn counters(&self) -> TransportCounters {
        self.counts.counters()
    }

    fn remote_addr(&self) -> SocketAddr {
        self.path.remote
    }

    fn relay_addr(&self) -> Option<SocketAddr> {
        self.path.relay
    }

    fn local_addr(&self) -> SocketAddr {
        self.path.local
    }

    fn close(&self, _reason: &str) {
        let pc = self.pc.clone();
        tokio::spawn(async move {
            let _ = pc.close().await;
        });
    }

    fn closed(&self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            let mut state = self.streams.state.clone();
            let s = state
                .wait_for(|s| {
                    matches!(
                        s,
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                    )
                })
                .await
                .map(|s| *s)
                .unwrap_or(RTCPeerConnectionState::Closed);
            format!("WebRTC connection {s}")
        })
    }
}

impl Drop for RtcConnection {
    fn drop(&mut self) {
        let pc = self.pc.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = pc.close().await;
            });
        }
    }
}

/// A detached data channel as a byte stream, whose writes wait while too much is queued
/// (the crate's own stream queues without bound).
struct ChannelStream {
    io: PollDataChannel,
    channel: Arc<DataChannel>,
    drained: Arc<Notify>,
    waiting: Option<BoxFuture<'static, ()>>,
    ending: Option<BoxFuture<'static, std::io::Result<()>>>,
    sent_eof: bool,
    read_eof: bool,
}

impl ChannelStream {
    fn new(channel: Arc<DataChannel>) -> Self {
        let drained = Arc::new(Notify::new());
        channel.set_buffered_amount_low_threshold(LOW_WATER);
        let notify = drained.clone();
        channel.on_buffered_amount_low(Box::new(move || {
            notify.notify_one();
            Box::pin(async {})
        }));
        let mut io = PollDataChannel::new(channel.clone());
        io.set_read_buf_capacity(READ_BUFFER);
        ChannelStream {
            io,
            channel,
            drained,
            waiting: None,
            ending: None,
            sent_eof: false,
            read_eof: false,
        }
    }
}

impl AsyncRead for ChannelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        if buf.filled().len() == before && room {
            self.read_eof = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ChannelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            if let Some(waiting) = self.waiting.as_mut() {
                ready!(waiting.as_mut().poll(cx));
                self.waiting = None;
            }
            if self.channel.buffered_amount() < HIGH_WATER {
                break;
            }
            let drained = self.drained.clone();
            self.waiting = Some(Box::pin(async move { drained.notified().await }));
        }
        let n = buf.len().min(MESSAGE);
        Pin::new(&mut self.io).poll_write(cx, &buf[..n])
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Ends this direction only: data channels have no half-close, so an empty message says
    /// "no more" (what a browser sends with `channel.send(new Uint8Array(0))`), and reads on
    /// the other side end there. The channel closes when the stream is dropped.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        if self.ending.is_none() {
            let channel = self.channel.clone();
            self.ending = Some(Box::pin(async move {
                channel
                    .write(&bytes::Bytes::new())
                    .await
                    .map(|_| ())
                    .map_err(std::io::Error::other)
            }));
        }
        let ending = self.ending.as_mut().expect("set above");
        ready!(ending.as_mut().poll(cx))?;
        self.sent_eof = true;
        Poll::Ready(Ok(()))
    }
}

/// Closing a data channel resets its SCTP stream, and the receiving side drops what it has
/// not read yet. So after a graceful end (both sides sent their empty message) the channel
/// closes only after [`LINGER`], time for the peer to read what is already on its side; a
/// stream dropped before that is aborted at once.
impl Drop for ChannelStream {
    fn drop(&mut self) {
        let channel = self.channel.clone();
        let linger = if self.sent_eof && self.read_eof {
            LINGER
        } else {
            Duration::ZERO
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::time::sleep(linger).await;
                let _ = channel.close().await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_description_verifies_only_for_its_signer_and_session() {
        let alice = Identity::generate();
        let session = SessionKeys::generate();
        let signed = sign_description(
            &alice,
            &session,
            "v=0\r\na=fingerprint:sha-256 AB\r\n".into(),
        );
        verify_description(&alice.peer_id(), &session, &signed).unwrap();
        let mallory = Identity::generate();
        assert!(verify_description(&mallory.peer_id(), &session, &signed).is_err());
        assert!(verify_description(&alice.peer_id(), &SessionKeys::generate(), &signed).is_err());
        let mut altered = signed.clone();
        altered.sdp = altered.sdp.replace("AB", "CD");
        assert!(verify_description(&alice.peer_id(), &session, &altered).is_err());
        let mut garbage = signed;
        garbage.signature = "zz".into();
        assert!(verify_description(&alice.peer_id(), &session, &garbage).is_err());
    }
}
