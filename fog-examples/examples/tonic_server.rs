//! A gRPC server for peers, with tonic: registers as `grpc` and serves the greeter, which
//! knows each caller's peer id.
//!
//! ```sh
//! cargo run -p fog-examples --example tonic_server -- [NAME] [SIGNAL_URL]
//! ```

use fog_examples::greeter::greeter_server::GreeterServer;
use fog_examples::PeerGreeter;

#[tokio::main]
async fn main() -> Result<(), fog::BoxError> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or("grpc".into());
    let signal = args.next().unwrap_or("ws://127.0.0.1:7600/ws".into());
    let node = fog::Node::builder()
        .signal(signal)
        .name(&name)
        .bind()
        .await?;
    println!("serving gRPC as {name} ({})", node.peer_id());
    tonic::transport::Server::builder()
        .add_service(GreeterServer::new(PeerGreeter))
        .serve_with_incoming(fog_http::FogListener::new(&node).into_stream())
        .await?;
    Ok(())
}
