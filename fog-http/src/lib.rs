//! hyper, tonic and axum over fog: call an HTTP or gRPC service on a peer by its id, and serve
//! one to peers, with the caller's [`PeerId`](fog::PeerId) at hand.
//!
//! - [`FogConnector`] is a `tower::Service<Uri>` for hyper-util's legacy client and tonic's
//!   `Endpoint::connect_with_connector`. The URI's host names the peer (`http://<peer>.fog/`);
//!   every HTTP connection to a peer is a new stream on one P2P connection, dialled once.
//! - [`FogListener`] hands out the streams peers open, as an axum `Listener`, as an
//!   `incoming` stream for tonic's `serve_with_incoming`, or one by one for hyper's
//!   `serve_connection`.
//! - [`FogIo`] is one such stream; [`PeerInfo`] says who is on the other end (tonic puts it in
//!   the request extensions, axum in `ConnectInfo`).
//!
//! ```no_run
//! use http_body_util::{BodyExt, Empty};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//!
//! # async fn run() -> Result<(), fog::BoxError> {
//! let node = fog::Node::builder().signal("ws://127.0.0.1:7600/ws").bind().await?;
//! let client: Client<_, Empty<bytes::Bytes>> =
//!     Client::builder(TokioExecutor::new()).build(fog_http::FogConnector::new(node));
//! let response = client.get("http://web.fog/".parse()?).await?;
//! let body = response.into_body().collect().await?.to_bytes();
//! println!("{}", String::from_utf8_lossy(&body));
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod connector;
mod io;
mod listener;

pub use connector::{peer_of, Connecting, ConnectorError, FogConnector};
pub use io::{FogIo, PeerInfo, WithPeer};
pub use listener::FogListener;
