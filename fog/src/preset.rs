//! The default stack, and the parts a custom stack is built from.

use std::net::SocketAddr;
use std::sync::Arc;

use fog_core::{Attempt, BoxError, Connection, Prober, Protocol, Signaller};
use fog_layers::{
    GatherLayer, NatCache, NatProbeLayer, PortPredictLayer, ProtocolSelectLayer, PunchConfig,
    PunchLayer, RelayFallbackLayer, SignalLayer, StrategyLayer,
};
use fog_transports::{
    FogSocket, KcpTransport, ProtocolRouter, QuicTransport, SctpTransport, UdpTransport,
    UtpTransport,
};
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;

/// A connection stack as the node stores it.
pub type Stack = BoxCloneSyncService<Attempt, Connection, BoxError>;

/// What the layers of a node's stack work with: its socket, its signal client, its transport.
#[derive(Clone)]
pub struct StackParts {
    /// The node's UDP socket (checks and QUIC share it).
    pub socket: Arc<FogSocket>,
    /// The signal-server client.
    pub signaller: Arc<dyn Signaller>,
    /// The QUIC transport service.
    pub transport: QuicTransport,
    /// The KCP transport service (KCP, TLS and yamux on the same socket).
    pub kcp: KcpTransport,
    /// The uTP transport service (uTP, TLS and yamux on the same socket).
    pub utp: UtpTransport,
    /// The SCTP transport service (SCTP, TLS and yamux on the same socket).
    pub sctp: SctpTransport,
    /// The raw UDP transport service (sealed datagrams; streams and keys from QUIC).
    pub udp: UdpTransport,
    /// Pace of connectivity checks.
    pub punch: PunchConfig,
    /// The node's NAT verdict, when the signal server announced STUN servers.
    pub nat: Option<NatCache>,
    /// The relays the signal server announced (`turn:` URLs); it grants credentials for them.
    pub relays: Vec<String>,
    /// TURN servers configured on the node itself, with their long-term credentials.
    pub turn: Vec<fog_core::signal::RelayGrant>,
}

impl StackParts {
    /// The STUN servers the node uses (announced by the signal server, or configured).
    pub fn stun(&self) -> Vec<SocketAddr> {
        self.nat
            .as_ref()
            .map(|n| n.servers().to_vec())
            .unwrap_or_default()
    }

    /// Every transport of the node, by protocol: QUIC, KCP, uTP, SCTP, UDP.
    pub fn transports(&self) -> ProtocolRouter {
        ProtocolRouter::new()
            .route(Protocol::Quic, self.transport.clone())
            .route(Protocol::Kcp, self.kcp.clone())
            .route(Protocol::Utp, self.utp.clone())
            .route(Protocol::Sctp, self.sctp.clone())
            .route(Protocol::Udp, self.udp.clone())
    }

    /// The socket as a prober, for [`PunchLayer`].
    pub fn prober(&self) -> Arc<dyn Prober> {
        self.socket.clone()
    }
}

/// The default preset: NAT probe (when STUN servers are known) → gather (host and
/// server-reflexive) → relay (when relays are known) → port prediction → signal → strategy →
/// punch → protocol select → the negotiated protocol's transport (QUIC, KCP, uTP, SCTP or UDP).
pub fn default_stack(parts: &StackParts) -> Stack {
    let transports = parts.transports();
    let stack = ServiceBuilder::new()
        .option_layer(parts.nat.clone().map(NatProbeLayer::new))
        .layer(GatherLayer::new(parts.socket.local_addr()).with_stun(parts.prober(), parts.stun()))
        .option_layer(
            (!parts.relays.is_empty() || !parts.turn.is_empty()).then(|| {
                RelayFallbackLayer::new(parts.prober(), parts.signaller.clone())
                    .with_servers(parts.turn.clone())
            }),
        )
        // After the relay: its allocation is a flow of its own through the NAT, and the
        // prediction must read the port counter after it.
        .layer(PortPredictLayer::new(parts.stun()))
        .layer(SignalLayer::new(parts.signaller.clone()))
        .layer(StrategyLayer::new())
        .layer(PunchLayer::new(parts.prober()).with_config(parts.punch))
        .layer(ProtocolSelectLayer::new(transports.protocols()))
        .service(transports);
    BoxCloneSyncService::new(stack)
}
