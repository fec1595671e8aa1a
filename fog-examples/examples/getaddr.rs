//! The original's `getaddr`: print the node's ip:port candidates and its NAT type.
//!
//! ```sh
//! cargo run -p fog -- server --stun 0.0.0.0:3478 &
//! cargo run -p fog-examples --example getaddr
//! ```

#[tokio::main]
async fn main() -> Result<(), fog::BoxError> {
    let signal = std::env::args()
        .nth(1)
        .unwrap_or("ws://127.0.0.1:7600/ws".into());
    let node = fog::Node::builder().signal(signal).bind().await?;
    println!("peer id {}", node.peer_id());
    for candidate in node.host_candidates() {
        println!("{:<9} {}", candidate.kind, candidate.addr);
    }
    match node.nat_profile().await {
        Some(report) => {
            let nat = report.profile;
            if let Some(public) = nat.public {
                println!("{:<9} {public}", "public");
            }
            let nat_type = nat.nat_type.map_or("unknown".into(), |t| t.to_string());
            println!("NAT type  {nat_type} (probed in {:?})", report.elapsed);
        }
        None => println!("NAT type  unknown: the signal server announced no STUN server"),
    }
    Ok(())
}
