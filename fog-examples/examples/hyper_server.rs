//! An HTTP server for peers, with hyper: registers as `web` and answers every GET with the
//! caller's verified peer id.
//!
//! ```sh
//! cargo run -p fog-examples --example hyper_server -- [NAME] [SIGNAL_URL]
//! ```

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};

#[tokio::main]
async fn main() -> Result<(), fog::BoxError> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or("web".into());
    let signal = args.next().unwrap_or("ws://127.0.0.1:7600/ws".into());
    let node = fog::Node::builder()
        .signal(signal)
        .name(&name)
        .bind()
        .await?;
    println!("serving HTTP as {name} ({})", node.peer_id());
    let mut listener = fog_http::FogListener::new(&node);
    while let Some(io) = listener.accept().await {
        // Each request carries the caller's verified peer id in its extensions.
        let service = fog_http::WithPeer::new(
            io.peer().clone(),
            service_fn(|request: Request<hyper::body::Incoming>| async move {
                let caller = request
                    .extensions()
                    .get::<fog_http::PeerInfo>()
                    .map(|info| info.peer.to_string())
                    .unwrap_or_default();
                let body = format!("hello {caller} from {}\n", request.uri().path());
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                eprintln!("connection: {e}");
            }
        });
    }
    Ok(())
}
