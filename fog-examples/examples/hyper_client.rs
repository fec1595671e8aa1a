//! An HTTP client for peers, with hyper-util's client: GETs `http://<peer>.fog/` and prints
//! the body.
//!
//! ```sh
//! cargo run -p fog-examples --example hyper_client -- [PEER] [SIGNAL_URL]
//! ```

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::main]
async fn main() -> Result<(), fog::BoxError> {
    let mut args = std::env::args().skip(1);
    let peer = args.next().unwrap_or("web".into());
    let signal = args.next().unwrap_or("ws://127.0.0.1:7600/ws".into());
    let node = fog::Node::builder().signal(signal).bind().await?;
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(fog_http::FogConnector::new(node));
    let response = client.get(format!("http://{peer}.fog/").parse()?).await?;
    println!("{}", response.status());
    let body = response.into_body().collect().await?.to_bytes();
    print!("{}", String::from_utf8_lossy(&body));
    Ok(())
}
