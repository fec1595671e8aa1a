//! Sends a file to a peer's inbox (`fog serve --inbox DIR`), with progress; sending it again
//! after an interruption goes on where it stopped.
//!
//! ```sh
//! cargo run -p fog-examples --example file_transfer -- PEER FILE [SIGNAL_URL]
//! ```

#[tokio::main]
async fn main() -> Result<(), fog::BoxError> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: file_transfer PEER FILE [SIGNAL_URL]";
    let peer = args.next().ok_or(usage)?;
    let file = std::path::PathBuf::from(args.next().ok_or(usage)?);
    let signal = args.next().unwrap_or("ws://127.0.0.1:7600/ws".into());
    let node = fog::Node::builder().signal(signal).bind().await?;
    let conn = node.connect(&peer).await?;
    let mut shown = 0;
    let report = fog::service::send_file(&conn, &file, |done, total| {
        let percent = done * 100 / total.max(1);
        if percent >= shown {
            println!("{percent:3}% ({done} of {total} bytes)");
            shown = percent + 10;
        }
    })
    .await?;
    println!(
        "saved as {} ({} bytes, sha256 {}) in {:.2} s",
        report.path, report.bytes, report.sha256, report.seconds
    );
    conn.close("done");
    node.shutdown().await;
    Ok(())
}
