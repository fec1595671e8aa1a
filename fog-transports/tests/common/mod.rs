//! What the transport tests share: two ends on loopback sockets, each with every transport, and
//! the attempts a stack would hand them.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fog_core::{
    Attempt, Candidate, ConnectError, EventBus, Identity, PathKind, PeerId, Protocol, RemoteInfo,
    SelectedPath, SessionKeys,
};
use fog_transports::{
    FogSocket, KcpTransport, QuicTransport, SctpTransport, UdpTransport, UtpTransport,
};

/// One end: a key, a socket, and the transports on it (the QUIC endpoint also reads the
/// socket for the others).
pub struct Side {
    pub identity: Identity,
    pub socket: Arc<FogSocket>,
    pub quic: QuicTransport,
    pub kcp: KcpTransport,
    pub utp: UtpTransport,
    pub sctp: SctpTransport,
    pub udp: UdpTransport,
}

pub async fn side() -> Side {
    let identity = Identity::generate();
    let socket = FogSocket::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let quic = QuicTransport::new(socket.clone(), identity.clone()).unwrap();
    let kcp = KcpTransport::new(socket.clone(), identity.clone());
    let utp = UtpTransport::new(socket.clone(), identity.clone()).unwrap();
    let sctp = SctpTransport::new(socket.clone(), identity.clone());
    let udp = UdpTransport::new(socket.clone(), quic.clone());
    Side {
        identity,
        socket,
        quic,
        kcp,
        utp,
        sctp,
        udp,
    }
}

fn path(from: SocketAddr, to: SocketAddr) -> Option<SelectedPath> {
    Some(SelectedPath {
        remote: Candidate::host(to),
        local: from,
        kind: PathKind::Direct,
        rtt: Duration::from_millis(1),
    })
}

/// A dialling attempt over `protocol` from `me` that expects `expected` at `to`.
pub fn dial_over(
    protocol: Protocol,
    me: &Side,
    expected: PeerId,
    to: &Side,
    session: SessionKeys,
) -> Attempt {
    let mut attempt = Attempt::dial(me.identity.peer_id(), expected.into(), EventBus::new());
    attempt.session = session;
    attempt.protocols = vec![protocol];
    attempt.protocol = Some(protocol);
    attempt.path = path(me.socket.local_addr(), to.socket.local_addr());
    attempt
}

/// The answering attempt over `protocol` of `me`, for an offer that came from `from`.
pub fn respond_over(
    protocol: Protocol,
    me: &Side,
    from: PeerId,
    dialer: &Side,
    session: SessionKeys,
) -> Attempt {
    let remote = RemoteInfo {
        peer_id: from,
        name: None,
        candidates: vec![Candidate::host(dialer.socket.local_addr())],
        nat: None,
        protocols: vec![protocol],
        trickle: false,
    };
    let mut attempt = Attempt::respond(me.identity.peer_id(), session, remote, EventBus::new());
    attempt.protocol = Some(protocol);
    attempt.path = path(me.socket.local_addr(), dialer.socket.local_addr());
    attempt
}

/// Runs `attempt` through `side`'s transport for its protocol.
pub async fn run(
    side: &Side,
    attempt: Attempt,
) -> Result<fog_core::Connection, fog_core::BoxError> {
    use tower::ServiceExt;
    fog_transports::ProtocolRouter::new()
        .route(Protocol::Quic, side.quic.clone())
        .route(Protocol::Kcp, side.kcp.clone())
        .route(Protocol::Utp, side.utp.clone())
        .route(Protocol::Sctp, side.sctp.clone())
        .route(Protocol::Udp, side.udp.clone())
        .oneshot(attempt)
        .await
}

pub fn cause(e: &fog_core::BoxError) -> ConnectError {
    ConnectError::find(&**e).unwrap_or_else(|| panic!("no ConnectError in {e}"))
}

pub async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), f)
        .await
        .expect("step finished within 15 s")
}
