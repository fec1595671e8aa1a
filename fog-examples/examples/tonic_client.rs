//! A gRPC client across NATs, with tonic: a unary call and a streaming call to a peer's
//! greeter.
//!
//! ```sh
//! cargo run -p fog-examples --example tonic_client -- [PEER] [SIGNAL_URL]
//! ```

use fog_examples::greeter::greeter_client::GreeterClient;
use fog_examples::greeter::{CountRequest, HelloRequest};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), fog::BoxError> {
    let mut args = std::env::args().skip(1);
    let peer = args.next().unwrap_or("grpc".into());
    let signal = args.next().unwrap_or("ws://127.0.0.1:7600/ws".into());
    let node = fog::Node::builder().signal(signal).bind().await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{peer}.fog"))?
        .connect_with_connector(fog_http::FogConnector::new(node))
        .await?;
    let mut client = GreeterClient::new(channel);
    let reply = client
        .say_hello(HelloRequest { name: "fog".into() })
        .await?
        .into_inner();
    println!("{} (the server saw caller {})", reply.message, reply.caller);
    let mut counts = client.count_to(CountRequest { to: 5 }).await?.into_inner();
    while let Some(count) = counts.next().await {
        println!("count {}", count?.n);
    }
    Ok(())
}
