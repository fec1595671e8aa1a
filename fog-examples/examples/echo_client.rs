//! The original's echo client: connect to `1e:34:a1:44:2c:1c` by name, send `hello`, print the
//! echo.
//!
//! ```sh
//! cargo run -p fog-examples --example echo_client -- 1e:34:a1:44:2c:1c
//! ```

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), fog::BoxError> {
    let peer = std::env::args()
        .nth(1)
        .unwrap_or("1e:34:a1:44:2c:1c".into());
    let signal = std::env::args()
        .nth(2)
        .unwrap_or("ws://127.0.0.1:7600/ws".into());
    let node = fog::Node::builder()
        .signal(signal)
        .name("1e:34:a1:44:2c:2c")
        .bind()
        .await?;

    let conn = node.connect(&peer).await?;
    println!(
        "connected to {} in {:?}",
        conn.peer_id(),
        conn.connect_time()
    );
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(b"hello").await?;
    send.shutdown().await?;
    let mut reply = String::new();
    recv.read_to_string(&mut reply).await?;
    println!("get the msg {reply} from peer");
    Ok(())
}
