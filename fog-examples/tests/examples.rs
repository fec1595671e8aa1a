//! The examples run against a signal server and STUN server on loopback, as a user runs them.

use std::io::BufRead;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The example's binary, which `cargo test` builds beside this test; `cargo run` when it is
/// not there.
fn example_command(name: &str) -> Command {
    let built = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("examples").join(name)))
        .filter(|path| path.is_file());
    match built {
        Some(path) => Command::new(path),
        None => {
            let mut command = Command::new(env!("CARGO"));
            command.args(["run", "-q", "-p", "fog-examples", "--example", name, "--"]);
            command
        }
    }
}

/// A running example, killed when dropped so a failing test leaves nothing behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a server example and waits (at most 120 s) for a stdout line containing `up`; its
/// output is read to the end so that it never writes into a closed pipe.
fn start(name: &str, args: &[&str], up: &str) -> Running {
    let mut child = example_command(name)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the example starts");
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    let up = up.to_string();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains(&up) {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("{name} was not up within 120 s"));
    running
}

/// Runs a client example to its end (killed after 60 s); its stdout, after checking it
/// succeeded.
fn run(name: &str, args: &[&str]) -> String {
    let child = example_command(name)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example starts");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out: Output = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{name} ran over 60 s");
        }
    };
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A signal server announcing a STUN server, both on loopback, for as long as the guard lives.
async fn servers() -> (
    fog::server::SignalServer,
    fog::server::stun::StunServer,
    String,
) {
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
    (server, stun, url)
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_client_talks_to_echo_server_and_getaddr_prints_the_nat() {
    let (_server, _stun, url) = servers().await;
    let u = url.clone();
    tokio::task::spawn_blocking(move || {
        let _echo = start("echo_server", &[&u], "is up");
        let shown = run("echo_client", &["1e:34:a1:44:2c:1c", &u]);
        assert!(shown.contains("get the msg hello from peer"), "{shown}");
        let shown = run("custom_stack", &["1e:34:a1:44:2c:1c", &u]);
        assert!(shown.contains("echo \"hello\""), "{shown}");
        let shown = run("getaddr", &[&u]);
        assert!(shown.contains("host "), "{shown}");
        assert!(shown.contains("public    127.0.0.1:"), "{shown}");
        assert!(shown.contains("NAT type"), "{shown}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hyper_tonic_and_axum_examples_talk_to_each_other() {
    let (_server, _stun, url) = servers().await;
    let u = url.clone();
    tokio::task::spawn_blocking(move || {
        let _grpc = start("tonic_server", &["grpc", &u], "serving gRPC");
        let shown = run("tonic_client", &["grpc", &u]);
        assert!(
            shown.contains("hello, fog (the server saw caller "),
            "{shown}"
        );
        assert!(shown.contains("count 5"), "{shown}");

        let _web = start("hyper_server", &["web", &u], "serving HTTP");
        let shown = run("hyper_client", &["web", &u]);
        assert!(shown.starts_with("200 OK"), "{shown}");
        assert!(
            shown.contains("hello ") && shown.contains(" from /"),
            "{shown}"
        );

        let _app = start("axum_server", &["app", &u], "serving axum");
        let shown = run("hyper_client", &["app", &u]);
        assert!(shown.contains("from axum"), "{shown}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_port_forward_and_file_transfer_examples_reach_fog_serve_services() {
    let (server, _stun, url) = servers().await;
    // The serving side, in process: a web page exposed, and an inbox.
    let web = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web_addr = web.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut tcp, _)) = web.accept().await {
            let mut request = [0u8; 1024];
            let _ = tcp.read(&mut request).await;
            let _ = tcp
                .write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nhello")
                .await;
        }
    });
    let inbox = std::env::temp_dir().join(format!("fog-example-inbox-{}", std::process::id()));
    let node = fog::Node::builder()
        .signal(server.url())
        .name("services")
        .bind()
        .await
        .unwrap();
    let services = fog::service::Services::new()
        .expose(
            fog::service::Exposed::resolve(&[web_addr.to_string()])
                .await
                .unwrap(),
        )
        .inbox(fog::service::Inbox::open(&inbox).unwrap());
    let mut incoming = node.incoming();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        while let Some(conn) = incoming.next().await {
            tokio::spawn(services.clone().serve_connection(conn));
        }
    });

    let file = inbox.with_extension("payload");
    std::fs::write(&file, vec![7u8; 3 * 1024 * 1024]).unwrap();
    let u = url.clone();
    let f = file.clone();
    let shown = tokio::task::spawn_blocking(move || {
        run("file_transfer", &["services", f.to_str().unwrap(), &u])
    })
    .await
    .unwrap();
    assert!(shown.contains("100%"), "{shown}");
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    assert!(shown.contains(&format!("saved as {name}")), "{shown}");
    assert_eq!(
        std::fs::read(inbox.join(&name)).unwrap(),
        vec![7u8; 3 * 1024 * 1024]
    );

    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listen.local_addr().unwrap().to_string();
    drop(listen);
    let u = url.clone();
    let reply = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let _forward = start("port_forward", &["services", &port, &u], "forwarding");
        let mut tcp = std::net::TcpStream::connect(&port).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut reply = String::new();
        tcp.read_to_string(&mut reply).unwrap();
        reply
    })
    .await
    .unwrap();
    assert!(reply.ends_with("hello"), "{reply}");
    let _ = std::fs::remove_dir_all(&inbox);
    let _ = std::fs::remove_file(&file);
}
