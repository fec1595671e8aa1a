//! Port forwarding and file transfer between two peers behind different NATs of the test bed:
//! `curl` through `fog forward` to a Python `http.server` that the other side exposes with
//! `fog serve --expose`, a refused forward to a service it did not expose, and a 100 MB
//! `fog send` to `fog serve --inbox`, killed halfway and resumed.

mod lab;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fog_natlab::process::{
    output_within, spawn_until_line, spawn_until_line_with_stderr, ChildGuard,
};
use fog_natlab::{Host, Lab, Link, NatBehaviour};
use lab::*;

/// A host behind a restricted cone and one behind a port-restricted cone.
fn two_peers(lab: &mut Lab) -> (Host, Host) {
    let ra = lab
        .router(NatBehaviour::RestrictedCone, Link::default())
        .unwrap();
    let a = lab.host(&ra, Link::default()).unwrap();
    let rb = lab
        .router(NatBehaviour::PortRestrictedCone, Link::default())
        .unwrap();
    let b = lab.host(&rb, Link::default()).unwrap();
    (a, b)
}

/// `python3 -m http.server` on 127.0.0.1:`port` in `host`, serving `dir`.
fn http_server(host: &Host, port: u16, dir: &Path) -> ChildGuard {
    spawn_until_line(
        host.command("python3").args([
            "-u",
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
            dir.to_str().unwrap(),
        ]),
        "Serving HTTP",
        Duration::from_secs(15),
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .0
}

/// `fog forward` in `host`; the local address it listens on, and where its stderr goes.
fn fog_forward(host: &Host, peer: &str, to: Option<&str>, log: &Path) -> (ChildGuard, String) {
    let mut command = host.command(FOG);
    command.args([
        "forward",
        peer,
        "--signal",
        SIGNAL,
        "--listen",
        "127.0.0.1:0",
    ]);
    if let Some(to) = to {
        command.args(["--to", to]);
    }
    let (guard, line) = spawn_until_line_with_stderr(
        &mut command,
        "forwarding ",
        Duration::from_secs(30),
        std::fs::File::create(log).unwrap().into(),
    )
    .unwrap_or_else(|e| panic!("{e}; stderr: {}", std::fs::read_to_string(log).unwrap()));
    let addr = line.split_whitespace().next().unwrap().to_string();
    (guard, addr)
}

fn curl(host: &Host, url: &str) -> std::process::Output {
    output_within(
        host.command("curl")
            .args(["-sS", "--max-time", "20", url])
            .stdin(Stdio::null()),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn curl_reaches_an_exposed_service_through_fog_forward_and_nothing_else() {
    let (mut lab, _server) = lab_with_fog_server(false);
    let (a, b) = two_peers(&mut lab);
    let files = tempfile::tempdir().unwrap();
    let page = test_data(300 * 1024, 7);
    std::fs::write(files.path().join("page.bin"), &page).unwrap();
    std::fs::write(files.path().join("secret.txt"), b"not for peers").unwrap();
    let _exposed = http_server(&b, 8000, files.path());
    let _hidden = http_server(&b, 8001, files.path());
    let _serve = start(
        &b,
        &[
            "serve",
            "--signal",
            SIGNAL,
            "--name",
            "forward-target",
            "--expose",
            "127.0.0.1:8000",
        ],
        "peer id:",
    );

    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("forward.log");
    let (_forward, addr) = fog_forward(&a, "forward-target", None, &log);
    for _ in 0..2 {
        // Two HTTP connections: two streams over one P2P connection.
        let out = curl(&a, &format!("http://{addr}/page.bin"));
        assert!(
            out.status.success(),
            "curl: {}; fog forward: {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap()
        );
        assert_eq!(out.stdout.len(), page.len());
        assert!(out.stdout == page, "the page arrived changed");
    }

    let refused_log = logs.path().join("refused.log");
    let (_refused, addr) = fog_forward(&a, "forward-target", Some("127.0.0.1:8001"), &refused_log);
    let out = curl(&a, &format!("http://{addr}/secret.txt"));
    assert!(
        !out.status.success() && out.stdout.is_empty(),
        "a service that was not exposed answered: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The refusal reaches the forwarding side with its reason.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&refused_log).unwrap();
        if text.contains("not_exposed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal reported by fog forward: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Size of the part of a transfer in `inbox`, if one is there.
fn part_len(inbox: &Path) -> u64 {
    std::fs::read_dir(inbox.join(".fog-partial"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

fn send_command(host: &Host, file: &Path) -> std::process::Command {
    let mut command = host.command(FOG);
    command.args([
        "send",
        "inbox-node",
        file.to_str().unwrap(),
        "--signal",
        SIGNAL,
        "--json",
    ]);
    command
}

#[test]
fn a_100_mb_file_arrives_verified_and_resumes_after_the_sender_is_killed() {
    const SIZE: usize = 100 * 1024 * 1024;
    let (mut lab, _server) = lab_with_fog_server(false);
    let (a, b) = two_peers(&mut lab);
    let outbox = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let file: PathBuf = outbox.path().join("big.bin");
    let data = test_data(SIZE, 42);
    std::fs::File::create(&file)
        .unwrap()
        .write_all(&data)
        .unwrap();
    let sha256 = sha256_hex(&data);
    drop(data);
    let _serve = start(
        &b,
        &[
            "serve",
            "--signal",
            SIGNAL,
            "--name",
            "inbox-node",
            "--inbox",
            inbox.path().to_str().unwrap(),
        ],
        "peer id:",
    );

    // The first sender is killed once at least 30 MB are in.
    let mut first = ChildGuard(
        send_command(&a, &file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    while part_len(inbox.path()) < 30 * 1024 * 1024 {
        assert!(
            first.0.try_wait().unwrap().is_none(),
            "the sender ended before it was killed"
        );
        assert!(Instant::now() < deadline, "30 MB did not arrive in 90 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let kept = part_len(inbox.path());
    assert!(kept < SIZE as u64, "the whole file arrived before the kill");

    let out = output_within(&mut send_command(&a, &file), Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fog send: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["bytes"], SIZE as u64, "{report}");
    assert_eq!(report["sha256"], sha256.as_str(), "{report}");
    assert_eq!(report["path"], "big.bin", "{report}");
    assert!(report["seconds"].as_f64().unwrap() > 0.0, "{report}");
    let resumed = report["resumed_from"].as_u64().unwrap();
    assert!(
        resumed >= kept.min(30 * 1024 * 1024) && resumed < SIZE as u64,
        "resumed from {resumed}, {kept} kept: {report}"
    );
    let saved = std::fs::read(inbox.path().join("big.bin")).unwrap();
    assert_eq!(saved.len(), SIZE);
    assert_eq!(sha256_hex(&saved), sha256, "the saved file differs");
    assert_eq!(part_len(inbox.path()), 0, "the part was left behind");
}
