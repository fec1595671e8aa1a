//! The original's echo server: register as `1e:34:a1:44:2c:1c` and echo every stream.
//!
//! ```sh
//! cargo run -p fog -- server &
//! cargo run -p fog-examples --example echo_server
//! ```

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

#[tokio::main]
async fn main() -> Result<(), fog::BoxError> {
    let signal = std::env::args()
        .nth(1)
        .unwrap_or("ws://127.0.0.1:7600/ws".into());
    let node = fog::Node::builder()
        .signal(signal)
        .name("1e:34:a1:44:2c:1c")
        .bind()
        .await?;
    println!("echo server {} is up", node.peer_id());

    let mut incoming = node.incoming();
    while let Some(conn) = incoming.next().await {
        println!("connected: {}", conn.peer_id());
        tokio::spawn(async move {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::io::copy(&mut recv, &mut send).await.ok();
                send.shutdown().await.ok();
            }
        });
    }
    Ok(())
}
