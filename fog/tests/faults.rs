//! Faults a deployed node lives through, with real processes: the signal server restarts, or is
//! gone for a minute, while a `fog serve` node runs and a 50 MB stream crosses it. The stream
//! must arrive whole, the node must stay up, and it must be reachable by name afterwards.

mod common;
mod lab;

use std::process::Command;
use std::time::Duration;

use fog::Event;
use fog_natlab::process::{output_within, spawn_watched, ChildGuard, Lines};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FOG: &str = env!("CARGO_BIN_EXE_fog");
/// The stream that crosses the fault.
const STREAM_BYTES: usize = 50 * 1024 * 1024;

/// `fog server` on `listen` (signal only, STUN on a port of its own).
fn signal_server(listen: &str) -> (ChildGuard, Lines, String) {
    signal_server_with(listen, &[])
}

/// [`signal_server`] with more arguments.
fn signal_server_with(listen: &str, more: &[&str]) -> (ChildGuard, Lines, String) {
    let (guard, lines) = spawn_watched(
        Command::new(FOG)
            .args(["server", "--signal", listen, "--stun", "127.0.0.1:0"])
            .args(more),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let url = lines
        .expect("fog signal server on", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("fog server: {e}"));
    (guard, lines, url)
}

/// SHA-256 of what is fed in, in pieces.
struct Hasher(ring::digest::Context);

impl Hasher {
    fn new() -> Self {
        Hasher(ring::digest::Context::new(&ring::digest::SHA256))
    }

    fn hex(self) -> String {
        self.0
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Runs the fault: the signal server is killed, stays away for `outage`, and comes back on the
/// same address, while a client node streams 50 MB through `fog serve`'s echo (half before
/// the fault, a trickle during it, the rest after).
fn stream_across_signal_outage(outage: Duration) {
    let key_dir = tempfile::tempdir().unwrap();
    let key = key_dir.path().join("serve.key");
    let (server, _server_lines, url) = signal_server("127.0.0.1:0");
    let listen = url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_string();
    let name = format!("fault-echo-{}", outage.as_secs());
    let (mut serve, serve_lines) = spawn_watched(Command::new(FOG).args([
        "serve",
        "--signal",
        &url,
        "--name",
        &name,
        "--key",
        key.to_str().unwrap(),
    ]))
    .unwrap();
    serve_lines
        .expect("peer id:", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("fog serve: {e}"));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(async {
        fog::Node::builder()
            .signal(&url)
            .bind_addr("127.0.0.1:0".parse().unwrap())
            .bind()
            .await
            .expect("client node registers")
    });
    let mut events = client.events();
    let conn = runtime
        .block_on(common::within("connect", 20, client.connect(&name)))
        .expect("connects by name");
    let (mut send, mut recv) = runtime.block_on(conn.open_bi()).unwrap();

    // The echo comes back on its own task, hashed as it comes.
    let reader = runtime.spawn(async move {
        let mut hasher = Hasher::new();
        let mut total = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = recv.read(&mut buf).await.expect("echo reads");
            if n == 0 {
                break;
            }
            hasher.0.update(&buf[..n]);
            total += n;
        }
        (total, hasher.hex())
    });
    let (during_tx, during_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = runtime.spawn(async move {
        const BLOCK: usize = 64 * 1024;
        let mut sent = Hasher::new();
        let mut index = 0u64;
        let mut write = |len: usize| {
            let data = lab::test_data(len, index);
            index += 1;
            sent.0.update(&data);
            data
        };
        let mut total = 0usize;
        // Half before the fault.
        while total < STREAM_BYTES / 2 {
            let data = write(BLOCK);
            send.write_all(&data).await.expect("write before the fault");
            total += data.len();
        }
        // A trickle while the signal server is away: the stream keeps moving.
        let mut during = during_rx;
        loop {
            tokio::select! {
                _ = &mut during => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    let data = write(1024);
                    send.write_all(&data).await.expect("write during the fault");
                    total += data.len();
                }
            }
        }
        // The rest after it.
        while total < STREAM_BYTES {
            let len = BLOCK.min(STREAM_BYTES - total);
            let data = write(len);
            send.write_all(&data).await.expect("write after the fault");
            total += data.len();
        }
        send.shutdown().await.expect("finish");
        (total, sent.hex())
    });

    // The fault.
    drop(server);
    serve_lines
        .expect("signal lost:", Duration::from_secs(40))
        .unwrap_or_else(|e| panic!("fog serve did not notice the signal server go: {e}"));
    std::thread::sleep(outage);
    assert!(
        serve.0.try_wait().unwrap().is_none(),
        "fog serve exited while the signal server was away"
    );
    let (_server, _lines, again) = signal_server(&listen);
    assert_eq!(again, url);
    serve_lines
        .expect("signal restored:", Duration::from_secs(40))
        .unwrap_or_else(|e| panic!("fog serve did not register again: {e}"));
    let _ = during_tx.send(());

    let (sent_bytes, sent_hash) = runtime
        .block_on(common::within("the stream's writer", 120, writer))
        .unwrap();
    let (echoed_bytes, echoed_hash) = runtime
        .block_on(common::within("the echo", 120, reader))
        .unwrap();
    assert!(sent_bytes >= STREAM_BYTES);
    assert_eq!(echoed_bytes, sent_bytes, "bytes lost or added");
    assert_eq!(
        echoed_hash, sent_hash,
        "the echo differs from what was sent"
    );

    // The client node saw both sides of the fault as events (it comes back on a backoff of
    // its own, so it may still be on its way).
    let seen = runtime.block_on(common::within("the client's SignalRestored", 45, async {
        let mut seen = Vec::new();
        while let Ok(event) = events.recv().await {
            match event {
                Event::SignalLost { .. } => seen.push("lost"),
                Event::SignalRestored { .. } => {
                    seen.push("restored");
                    break;
                }
                _ => {}
            }
        }
        seen
    }));
    assert_eq!(seen, ["lost", "restored"], "client events");

    // fog serve is still up and reachable by name, from a fresh process.
    assert!(serve.0.try_wait().unwrap().is_none(), "fog serve exited");
    let out = output_within(
        Command::new(FOG).args(["connect", &name, "--signal", &url, "--json"]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "connect by name after the fault: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    conn.close("done");
    runtime.block_on(client.shutdown());
}

#[test]
fn a_stream_and_the_node_survive_a_signal_server_restart() {
    stream_across_signal_outage(Duration::ZERO);
}

#[test]
fn a_stream_and_the_node_survive_the_signal_server_gone_for_a_minute() {
    stream_across_signal_outage(Duration::from_secs(60));
}

#[test]
fn serve_fails_with_a_message_and_a_non_zero_status_when_its_name_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, _lines, url) = signal_server("127.0.0.1:0");
    let _holder = serve_named(&url, "taken", &dir.path().join("k1")).unwrap();
    let other_key = dir.path().join("k2");
    let out = output_within(
        Command::new(FOG)
            .args(["serve", "--signal", &url, "--name", "taken", "--key"])
            .arg(&other_key),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(!out.status.success(), "a second holder of the name ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("held by another key"), "{stderr}");
}

/// `fog serve --name NAME --key KEY` at `url`: `Ok` with the process once it registered the
/// name, `Err` with what it printed when it exited instead.
fn serve_named(
    url: &str,
    name: &str,
    key: &std::path::Path,
) -> Result<(ChildGuard, Lines), String> {
    let (mut guard, lines) = spawn_watched(Command::new(FOG).args([
        "serve",
        "--signal",
        url,
        "--name",
        name,
        "--key",
        key.to_str().unwrap(),
    ]))
    .unwrap();
    match lines.expect("name:", Duration::from_secs(10)) {
        Ok(_) => Ok((guard, lines)),
        Err(e) => {
            let _ = guard.0.wait();
            Err(e)
        }
    }
}

#[test]
fn a_name_stays_with_its_key_across_a_signal_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (k1, k2) = (dir.path().join("k1"), dir.path().join("k2"));
    let state_arg = state.to_str().unwrap();
    let start_server = |listen: &str| {
        let (guard, _lines, url) = signal_server_with(listen, &["--state", state_arg]);
        (guard, url)
    };
    let (server, url) = start_server("127.0.0.1:0");
    let listen = url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_string();
    let holder = serve_named(&url, "lasting", &k1).expect("the first key takes the name");
    drop(holder);
    drop(server);

    let (_server, again) = start_server(&listen);
    assert_eq!(again, url);
    let refused = serve_named(&url, "lasting", &k2)
        .err()
        .expect("another key is refused");
    assert!(refused.contains("held by another key"), "{refused}");
    serve_named(&url, "lasting", &k1).expect("the name's own key takes it back");
}

#[test]
fn a_name_unused_for_its_time_goes_to_the_next_key() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (dir.path().join("k1"), dir.path().join("k2"));
    let (_server, _lines, url) = signal_server_with("127.0.0.1:0", &["--name-ttl", "1"]);
    let holder = serve_named(&url, "fleeting", &k1).expect("the first key takes the name");
    drop(holder);
    // Refused while the name is in its time, then given to the new key: bounded, not timed.
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let taken = loop {
        match serve_named(&url, "fleeting", &k2) {
            Ok(taken) => break taken,
            Err(why) => {
                assert!(why.contains("held by another key"), "{why}");
                assert!(
                    std::time::Instant::now() < until,
                    "the name was never released: {why}"
                );
            }
        }
    };
    drop(taken);
}

#[test]
fn a_name_that_answers_with_another_key_is_refused_unless_accepted() {
    let dir = tempfile::tempdir().unwrap();
    // Two signal servers that bind the same name to two keys: the second one lies.
    let (_honest, _l1, honest) = signal_server("127.0.0.1:0");
    let (_liar, _l2, liar) = signal_server("127.0.0.1:0");
    let _real = serve_named(&honest, "known", &dir.path().join("real.key")).unwrap();
    let _impostor = serve_named(&liar, "known", &dir.path().join("impostor.key")).unwrap();
    let dialer_key = dir.path().join("dialer").join("key");
    let connect = |url: &str, more: &[&str]| {
        output_within(
            Command::new(FOG)
                .args(["connect", "known", "--signal", url, "--json", "--key"])
                .arg(&dialer_key)
                .args(more),
            Duration::from_secs(30),
        )
        .unwrap()
    };
    let first = connect(&honest, &[]);
    assert!(first.status.success(), "{first:?}");
    let known_peers = std::fs::read_to_string(dir.path().join("dialer").join("known_peers"))
        .expect("known_peers beside the key");
    assert!(known_peers.starts_with("known "), "{known_peers}");

    let refused = connect(&liar, &[]);
    assert!(!refused.status.success(), "the impostor was accepted");
    let json: serde_json::Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(json["error"], "name key changed", "{json}");
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("name known now belongs to another key"),
        "{json}"
    );
    // Told to, the node takes the new key and remembers it.
    let accepted = connect(&liar, &["--accept-new-key"]);
    assert!(accepted.status.success(), "{accepted:?}");
    let again = connect(&liar, &[]);
    assert!(again.status.success(), "{again:?}");
    let back = connect(&honest, &[]);
    assert!(
        !back.status.success(),
        "the old key is no longer the name's"
    );
}

#[test]
fn serve_without_a_key_keeps_its_peer_id_and_name_across_restarts() {
    let config = tempfile::tempdir().unwrap();
    let (_server, _lines, url) = signal_server("127.0.0.1:0");
    let serve = || {
        let (guard, lines) = spawn_watched(
            Command::new(FOG)
                .env("XDG_CONFIG_HOME", config.path())
                .args(["serve", "--signal", &url, "--name", "sticky"]),
        )
        .unwrap();
        let id = lines.expect("peer id:", Duration::from_secs(10)).unwrap();
        lines.expect("name:", Duration::from_secs(10)).unwrap();
        (guard, id)
    };
    let (first, id) = serve();
    drop(first);
    let (_second, again) = serve();
    assert_eq!(again, id, "a restart changed the peer id");
    let out = output_within(
        Command::new(FOG)
            .env("XDG_CONFIG_HOME", config.path())
            .args(["id", "--name", "sticky"]),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);
}
