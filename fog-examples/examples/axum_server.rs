//! An axum app for peers: registers as `web`; its handler takes the caller's verified peer id
//! from `ConnectInfo`. Try it with the `hyper_client` example.
//!
//! ```sh
//! cargo run -p fog-examples --example axum_server -- [NAME] [SIGNAL_URL]
//! ```

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use fog_http::{FogListener, PeerInfo};

async fn hello(ConnectInfo(caller): ConnectInfo<PeerInfo>) -> String {
    format!("hello {} from axum\n", caller.peer)
}

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
    println!("serving axum as {name} ({})", node.peer_id());
    let app = Router::new().route("/", get(hello));
    axum::serve(
        FogListener::new(&node),
        app.into_make_service_with_connect_info::<PeerInfo>(),
    )
    .await?;
    Ok(())
}
