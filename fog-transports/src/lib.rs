//! Transport services of fog.
//!
//! - [`FogSocket`]: the node's one UDP socket; it answers authenticated connectivity checks
//!   itself and carries QUIC.
//! - [`QuicTransport`]: a `tower::Service<Attempt>` that turns a chosen path into an
//!   authenticated, encrypted QUIC [`Connection`](fog_core::Connection), pinning the peer's key.
//! - [`KcpTransport`]: the same over KCP on the same socket, with TLS and yamux streams on top
//!   ([`mux`]).
//! - [`SctpTransport`] and [`UtpTransport`]: the same over SCTP and uTP.
//! - [`RtcTransport`]: WebRTC data channels, with their own ICE, for fog nodes and browsers.
//! - [`UdpTransport`]: raw, sealed UDP datagrams beside QUIC streams.
//! - [`ProtocolRouter`]: one transport per negotiated protocol.
//!
//! ```no_run
//! # async fn demo() -> Result<(), fog_core::BoxError> {
//! use fog_core::Identity;
//! use fog_transports::{FogSocket, QuicTransport};
//!
//! let socket = FogSocket::bind("0.0.0.0:0".parse()?).await?;
//! let transport = QuicTransport::new(socket, Identity::generate())?;
//! # drop(transport);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod check;
pub mod kcp_stream;
pub mod kcp_transport;
pub mod mux;
pub mod quic;
pub mod relay;
pub mod router;
pub mod rtc;
pub mod sctp_stream;
pub mod sctp_transport;
mod sessions;
pub mod socket;
pub mod tls;
pub mod udp;
pub mod utp_transport;

pub use kcp_transport::KcpTransport;
pub use quic::QuicTransport;
pub use relay::{RelayAllocation, RelayError, RelayServer};
pub use router::ProtocolRouter;
pub use rtc::RtcTransport;
pub use sctp_transport::SctpTransport;
pub use socket::{FogSocket, SpraySocket};
pub use udp::UdpTransport;
pub use utp_transport::UtpTransport;

/// What every transport needs from an attempt: the path the layers above chose and the
/// peer's id, for the protocol it carries. The clear error names the missing layer.
pub(crate) fn path_and_peer(
    attempt: &fog_core::Attempt,
    protocol: fog_core::Protocol,
    layer: &'static str,
) -> Result<(fog_core::SelectedPath, fog_core::PeerId), fog_core::ConnectError> {
    use fog_core::ConnectError;
    let path = attempt.path.ok_or(ConnectError::MissingInput {
        layer,
        needs: "a selected path (PunchLayer or a relay layer)",
    })?;
    let peer = attempt.remote_peer().ok_or(ConnectError::MissingInput {
        layer,
        needs: "the remote peer id (SignalLayer resolves names)",
    })?;
    match attempt.protocol {
        Some(asked) if asked != protocol => Err(ConnectError::NoCommonProtocol {
            ours: protocol.to_string(),
            theirs: asked.to_string(),
        }),
        _ => Ok((path, peer)),
    }
}

/// The fog connection of `attempt` over `transport`, announced with a `Connected` event.
pub(crate) fn connected(
    attempt: &fog_core::Attempt,
    peer: fog_core::PeerId,
    path: fog_core::PathKind,
    transport: Box<dyn fog_core::TransportConnection>,
    protocol: fog_core::Protocol,
) -> fog_core::Connection {
    let connection = fog_core::Connection::new(
        transport,
        fog_core::ConnectionInfo::from_attempt(attempt, peer, protocol),
        attempt.events.clone(),
    );
    attempt.emit(fog_core::Event::Connected {
        peer,
        remote: connection.remote_addr(),
        protocol,
        path,
        elapsed: attempt.elapsed(),
    });
    connection
}
