//! The examples run against a signal server and STUN server on loopback.

use std::process::{Command, Output};
use std::time::Duration;

fn cargo_example(name: &str, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO"))
        .args(["run", "-q", "-p", "fog-examples", "--example", name, "--"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cargo runs the example")
}

/// Waits for `child` at most `secs`, killing it after that.
fn finish(child: std::process::Child, secs: u64) -> Output {
    let pid = child.id().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid]).status();
            panic!("example ran over {secs} s");
        }
    }
}

#[tokio::test]
async fn echo_client_talks_to_echo_server_and_getaddr_prints_the_nat() {
    let stun = fog::server::stun::StunServer::bind(fog::server::stun::StunConfig {
        primary: "127.0.0.1:0".parse().unwrap(),
        alternate: None,
    })
    .await
    .unwrap();
    let server = fog::server::SignalServer::bind(fog::server::SignalConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        stun: vec![stun.primary().to_string()],
        ..Default::default()
    })
    .await
    .unwrap();
    let url = server.url();

    let mut echo_server = cargo_example("echo_server", &[&url]);
    // It prints its line once it has registered its name. Keep reading its output to the end,
    // or its next line would hit a closed pipe.
    let stdout = echo_server.stdout.take().unwrap();
    let (up_tx, up_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut up_tx = Some(up_tx);
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("is up") {
                if let Some(tx) = up_tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(120), up_rx)
        .await
        .expect("echo_server started within 120 s")
        .expect("echo_server exited before it was up");

    let url2 = url.clone();
    let client = tokio::task::spawn_blocking(move || {
        finish(
            cargo_example("echo_client", &["1e:34:a1:44:2c:1c", &url2]),
            60,
        )
    })
    .await
    .unwrap();
    let shown = String::from_utf8_lossy(&client.stdout).into_owned();
    assert!(
        client.status.success(),
        "{}",
        String::from_utf8_lossy(&client.stderr)
    );
    assert!(shown.contains("get the msg hello from peer"), "{shown}");

    let url3 = url.clone();
    let getaddr =
        tokio::task::spawn_blocking(move || finish(cargo_example("getaddr", &[&url3]), 60))
            .await
            .unwrap();
    let shown = String::from_utf8_lossy(&getaddr.stdout).into_owned();
    assert!(
        getaddr.status.success(),
        "{}",
        String::from_utf8_lossy(&getaddr.stderr)
    );
    assert!(shown.contains("host "), "{shown}");
    assert!(shown.contains("public    127.0.0.1:"), "{shown}");
    assert!(shown.contains("NAT type"), "{shown}");

    let _ = echo_server.kill();
    let _ = echo_server.wait();
}
