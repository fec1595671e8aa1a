//! fog connects two peers on the internet by peer id and gives them an authenticated, encrypted
//! connection.
//!
//! A [`Node`] registers its key (and an optional name) at a signal server, dials peers by id or
//! name with [`Node::connect`], and hands the peers that dial it out of [`Node::incoming`].
//! Underneath, each connection is made by a `tower` stack of layers ([`preset::default_stack`]),
//! which you can replace with your own ([`NodeBuilder::stack`]).
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # async fn run() -> Result<(), fog::BoxError> {
//! // Echo server.
//! let server = fog::Node::builder().signal("ws://127.0.0.1:7600/ws").name("echo").bind().await?;
//! tokio::spawn(async move {
//!     let mut incoming = server.incoming();
//!     while let Some(conn) = incoming.next().await {
//!         tokio::spawn(async move {
//!             while let Ok((mut send, mut recv)) = conn.accept_bi().await {
//!                 tokio::io::copy(&mut recv, &mut send).await.ok();
//!                 send.shutdown().await.ok();
//!             }
//!         });
//!     }
//! });
//!
//! // Client.
//! let client = fog::Node::builder().signal("ws://127.0.0.1:7600/ws").bind().await?;
//! let conn = client.connect("echo").await?;
//! let (mut send, mut recv) = conn.open_bi().await?;
//! send.write_all(b"hello").await?;
//! send.shutdown().await?;
//! let mut reply = String::new();
//! recv.read_to_string(&mut reply).await?;
//! assert_eq!(reply, "hello");
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod known_peers;
pub mod node;
pub mod preset;
pub mod service;
pub mod signal_client;

pub use fog_core::{
    Attempt, BiStream, BoxError, ConnectError, Connection, ConnectionStats, Event, Identity,
    PathKind, PeerId, PeerRef, Protocol, RecvHalf, Role, SendHalf,
};
pub use node::{Incoming, Node, NodeBuilder, NodeError};
pub use preset::{default_stack, Stack, StackParts};
pub use signal_client::{IncomingOffer, Registration, SignalClient};

/// The layers, for custom stacks.
pub use fog_layers as layers;
/// The signal server.
pub use fog_server as server;
/// The transports.
pub use fog_transports as transports;
