//! The `fog` binary driven as a user drives it: a server process, a serving node, `connect`.

use std::process::{Command, Output};
use std::time::Duration;

use fog_natlab::process::{output_within, spawn_until_line, ChildGuard};

const FOG: &str = env!("CARGO_BIN_EXE_fog");

/// Starts `fog ARGS` and waits (at most 10 s) for a stdout line starting with `prefix`.
fn start(args: &[&str], prefix: &str) -> (ChildGuard, String) {
    spawn_until_line(
        Command::new(FOG).args(args),
        prefix,
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `fog ARGS` to completion; killed if it runs over 30 s.
fn run(args: &[&str]) -> Output {
    output_within(Command::new(FOG).args(args), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn serve_and_connect_by_name_and_id_with_json() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = start(
        &["server", "--signal", "127.0.0.1:0", "--stun", "127.0.0.1:0"],
        "fog signal server on",
    );
    let key = dir.path().join("serve.key");
    let key = key.to_str().unwrap();
    let (_serve, peer) = start(
        &[
            "serve", "--signal", &url, "--name", "cli-echo", "--key", key,
        ],
        "peer id:",
    );

    let out = run(&[
        "connect",
        "cli-echo",
        "--signal",
        &url,
        "--json",
        "--message",
        "hi there",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let line = text(&out.stdout);
    assert_eq!(line.lines().count(), 1, "{line}");
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["peer"], peer.as_str());
    assert_eq!(json["name"], "cli-echo");
    assert_eq!(json["protocol"], "quic");
    assert_eq!(json["path"], "direct");
    assert_eq!(json["reply"], "hi there");
    assert!(json["connect_ms"].as_f64().unwrap() > 0.0);
    assert!(json["rtt_ms"].as_f64().unwrap() > 0.0);
    for field in ["local", "remote"] {
        let addr = json[field].as_str().unwrap();
        assert!(
            addr.parse::<std::net::SocketAddr>().is_ok(),
            "{field}: {addr}"
        );
    }

    // By id, without JSON; the key file gives the serving node the same id every run.
    let out = run(&["connect", &peer, "--signal", &url]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"hello\""),
        "{}",
        text(&out.stdout)
    );
    let out = run(&["connect", &peer, "--signal", &url, "--json"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(
        json["name"], "cli-echo",
        "the server-verified name, also when dialled by id"
    );
    let out = run(&["id", "--key", key]);
    assert_eq!(text(&out.stdout).trim(), peer);
}

#[test]
fn failures_are_one_line_naming_the_cause() {
    let (_server, url) = start(
        &["server", "--signal", "127.0.0.1:0", "--stun", "127.0.0.1:0"],
        "fog signal server on",
    );
    let stranger = fog::Identity::generate().peer_id().to_string();

    let out = run(&["connect", &stranger, "--signal", &url]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: peer unknown:"), "{err}");

    let out = run(&["connect", &stranger, "--signal", &url, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(json["error"], "peer unknown");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("ws://{}/ws", closed.local_addr().unwrap());
    drop(closed);
    let out = run(&["connect", &stranger, "--signal", &dead]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: signal unreachable:"),
        "{}",
        text(&out.stderr)
    );

    let out = run(&["connect", &stranger, "--signal", &url, "--timeout", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--timeout"));
}

#[test]
fn id_creates_a_private_key_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    let first = run(&["id", "--key", key.to_str().unwrap()]);
    let second = run(&["id", "--key", key.to_str().unwrap()]);
    assert!(first.status.success());
    assert_eq!(text(&first.stdout), text(&second.stdout));
    assert_eq!(text(&first.stdout).trim().len(), 52);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn demo_runs_and_shows_the_events() {
    let out = run(&["demo"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let shown = text(&out.stdout);
    for step in [
        "registered",
        "offer sent",
        "check answered",
        "connected in",
        "echo \"hello\"",
    ] {
        assert!(shown.contains(step), "demo output lacks {step:?}:\n{shown}");
    }
}

#[test]
fn nat_reports_json_against_a_fog_stun_server() {
    // 127.0.0.1 and 127.0.0.2: two loopback addresses, so the server can do RFC 5780.
    let free = || {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    // A port free on 127.0.0.1 may be taken on 127.0.0.2 by a test running beside this one:
    // pick new ports then (setup, not a check).
    let (_server, primary) = (0..20)
        .find_map(|_| {
            let (primary, alternate) = (
                format!("127.0.0.1:{}", free()),
                format!("127.0.0.2:{}", free()),
            );
            spawn_until_line(
                Command::new(FOG).args([
                    "server",
                    "--signal",
                    "127.0.0.1:0",
                    "--stun",
                    &primary,
                    "--stun-alt",
                    &alternate,
                ]),
                "fog signal server on",
                Duration::from_secs(10),
            )
            .ok()
            .map(|(server, _)| (server, primary))
        })
        .expect("fog server binds its four STUN sockets");
    let out = run(&["nat", "--stun", &primary, "--json"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    // Loopback has no NAT.
    assert_eq!(json["nat_type"], "open", "{json}");
    assert_eq!(json["mapping"], "endpoint-independent");
    assert_eq!(json["filtering"], "endpoint-independent");
    assert_eq!(json["port_allocation"], "preserving");
    assert!(json["public"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(json["elapsed_ms"].as_u64().unwrap() < 1500);

    // Nobody answering is a verdict, not a crash.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent = silent.local_addr().unwrap().to_string();
    let out = run(&["nat", "--stun", &silent, "--json"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(json["nat_type"], "udp-blocked");
    assert_eq!(json["port_allocation"], serde_json::Value::Null);
}
