//! Core types of fog: node identity and peer ids, the connection [`Attempt`] that flows down the
//! tower stack, the [`Connection`] it produces, [`Event`]s, and the signal protocol.
//!
//! ```
//! use fog_core::{Identity, PeerId};
//!
//! let me = Identity::generate();
//! let id: PeerId = me.peer_id().to_string().parse().unwrap();
//! assert_eq!(id, me.peer_id());
//! let signature = me.sign(b"hello");
//! assert!(id.verify(b"hello", &signature).is_ok());
//! ```
#![warn(missing_docs)]

pub mod attempt;
pub mod connection;
pub mod error;
pub mod event;
pub mod hex;
pub mod identity;
pub mod nat;
pub mod probe;
pub mod signal;
pub mod stun;
pub mod trickle;
pub mod turn;

pub use attempt::{
    Attempt, Candidate, CandidateKind, Lifeline, LifelineWatch, NatProfile, PathKind, PathSocket,
    PeerRef, Protocol, RelayPath, RelaySlot, RemoteInfo, Role, SelectedPath, SessionKeys, Strategy,
};
pub use connection::{
    BiStream, Connection, ConnectionError, ConnectionInfo, ConnectionStats, RecvHalf, SendHalf,
    TransportConnection, TransportCounters,
};
pub use error::{BoxError, ConnectError};
pub use event::{Event, EventBus};
pub use identity::{Identity, IdentityError, PeerId};
pub use nat::{Filtering, Mapping, NatType, PortAllocation};
pub use probe::{CheckEvent, CheckReply, Prober, RelayHandle};
pub use signal::{AnswerFrom, SessionDescription, Signaller};
pub use trickle::{CandidateList, Gathering, RemoteTrickle};
pub use turn::{TurnTransport, TurnUrl};
