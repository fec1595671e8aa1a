//! The tower layers that establish a fog connection.
//!
//! Every layer's service takes an [`Attempt`](fog_core::Attempt) and returns a
//! [`Connection`](fog_core::Connection): it fills in what it learns and calls the next service,
//! so layers can be left out, reordered where that makes sense, or wrapped with tower's own
//! middleware. A layer that needs something no earlier layer provided fails with
//! [`ConnectError::MissingInput`](fog_core::ConnectError::MissingInput).
//!
//! | layer | adds to the attempt |
//! | --- | --- |
//! | [`NatProbeLayer`] | the local NAT profile (probed with STUN, cached, refreshed) |
//! | [`GatherLayer`] | host candidates of every usable interface |
//! | [`PortPredictLayer`] | predicted candidates, behind a sequential symmetric NAT |
//! | [`SignalLayer`] | the peer's candidates and protocols (offer/answer) |
//! | [`StrategyLayer`] | the plan for the pair of NATs, or "no direct path" at once |
//! | [`PunchLayer`] | the path: the first candidate pair that answers a check |
//! | [`ProtocolSelectLayer`] | the transport protocol both sides accept |
//!
//! ```
//! use fog_core::{Attempt, BoxError, ConnectError, Connection, EventBus, Identity, Protocol};
//! use fog_layers::{GatherLayer, ProtocolSelectLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // A stack without a signal layer: protocol selection reports what is missing.
//! let stack = ServiceBuilder::new()
//!     .layer(GatherLayer::new("127.0.0.1:4000".parse().unwrap()))
//!     .layer(ProtocolSelectLayer::new([Protocol::Quic]))
//!     .service(service_fn(|_: Attempt| async { Err::<Connection, BoxError>("unreachable".into()) }));
//! let me = Identity::generate();
//! let attempt = Attempt::dial(me.peer_id(), Identity::generate().peer_id().into(), EventBus::new());
//! let err = stack.oneshot(attempt).await.unwrap_err();
//! assert!(matches!(ConnectError::find(&*err), Some(ConnectError::MissingInput { .. })));
//! # }
//! ```
#![warn(missing_docs)]

pub mod future;
pub mod gather;
pub mod nat_probe;
pub mod predict;
pub mod protocol;
pub mod punch;
pub mod relay;
pub mod signal;
pub mod spray;
pub mod strategy;

pub use future::ResponseFuture;
pub use gather::{Gather, GatherLayer};
pub use nat_probe::{NatCache, NatProbe, NatProbeLayer};
pub use predict::{PortPredict, PortPredictLayer};
pub use protocol::{ProtocolSelect, ProtocolSelectLayer};
pub use punch::{Punch, PunchConfig, PunchLayer, PunchSchedule};
pub use relay::{RelayFallback, RelayFallbackLayer};
pub use signal::{Signal, SignalLayer};
pub use strategy::{StrategyLayer, StrategyService};
