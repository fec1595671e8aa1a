//! `fog forward` in a few lines: listens on a local port and carries each TCP connection to
//! the service a peer exposes (`fog serve --expose 127.0.0.1:8000`).
//!
//! ```sh
//! cargo run -p fog-examples --example port_forward -- PEER [LISTEN] [SIGNAL_URL]
//! curl http://127.0.0.1:8080/
//! ```

#[tokio::main]
async fn main() -> Result<(), fog::BoxError> {
    let mut args = std::env::args().skip(1);
    let peer = args
        .next()
        .ok_or("usage: port_forward PEER [LISTEN] [SIGNAL_URL]")?;
    let listen = args.next().unwrap_or("127.0.0.1:8080".into());
    let signal = args.next().unwrap_or("ws://127.0.0.1:7600/ws".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let node = fog::Node::builder().signal(signal).bind().await?;
    let conn = node.connect(&peer).await?;
    println!("forwarding {listen} -> {peer}");
    loop {
        let (mut tcp, _) = listener.accept().await?;
        // A new stream on the one connection; the peer connects it to its exposed service.
        let mut stream = fog::service::forward_stream(&conn, None).await?;
        tokio::spawn(async move {
            let _ = tokio::io::copy_bidirectional(&mut tcp, &mut stream).await;
        });
    }
}
