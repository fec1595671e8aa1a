//! Runnable examples of fog. Start a signal server (`cargo run -p fog -- server`), then run a
//! server example and its client in two more terminals:
//!
//! | server | client | what |
//! |---|---|---|
//! | `echo_server` | `echo_client 1e:34:a1:44:2c:1c` | echo over a stream, by name |
//! | `hyper_server` | `hyper_client web` | an HTTP GET with hyper |
//! | `tonic_server` | `tonic_client grpc` | gRPC (unary and streaming) with tonic |
//! | `axum_server` | `hyper_client web` | axum, with the caller's peer id |
//! | `fog serve --expose 127.0.0.1:8000` | `port_forward PEER 127.0.0.1:8080` | a local port carried to a peer's service |
//! | `fog serve --inbox DIR` | `file_transfer PEER FILE` | a file to a peer's inbox |
//! | `echo_server` | `custom_stack 1e:34:a1:44:2c:1c` | a stack of fog layers with tower's timeout, retry and concurrency limit |
//!
//! (`cargo run -p fog-examples --example NAME -- ARGS`.) This crate's library holds what the
//! examples share: the generated gRPC code and the greeter service.

// tonic's API returns `tonic::Status` by value; boxing it is not ours to choose.
#![allow(clippy::result_large_err)]

/// The generated code of `proto/greeter.proto`.
pub mod greeter {
    tonic::include_proto!("fog.examples");
}

use fog_http::PeerInfo;
use greeter::greeter_server::Greeter;
use greeter::{CountReply, CountRequest, HelloReply, HelloRequest};
use tonic::{Request, Response, Status};

/// The greeter service: says hello to the calling peer by its verified id, and counts.
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerGreeter;

/// The caller's peer id, which [`fog_http::FogListener`] put in the request's extensions.
fn caller<T>(request: &Request<T>) -> Result<String, Status> {
    request
        .extensions()
        .get::<PeerInfo>()
        .map(|info| info.peer.to_string())
        .ok_or_else(|| Status::unauthenticated("not a fog stream"))
}

#[tonic::async_trait]
impl Greeter for PeerGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(HelloReply {
            message: format!("hello, {}", request.into_inner().name),
            caller,
        }))
    }

    type CountToStream =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<CountReply, Status>> + Send>>;

    async fn count_to(
        &self,
        request: Request<CountRequest>,
    ) -> Result<Response<Self::CountToStream>, Status> {
        let to = request.into_inner().to;
        if to > 10_000 {
            return Err(Status::invalid_argument("count to 10000 at most"));
        }
        let replies = futures_util::stream::iter((1..=to).map(|n| Ok(CountReply { n })));
        Ok(Response::new(Box::pin(replies)))
    }
}
