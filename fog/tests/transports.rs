//! Every transport over every kind of path of the test bed: two peers behind port-restricted
//! cone NATs echo and move 20 MB (same SHA-256 on both sides) with `fog connect --protocol P`
//! and `fog send --protocol P` to `fog serve --inbox` (which accepts every protocol): over the
//! direct path, over the relay (the direct pair dropped by nftables), and with 5 % loss on one
//! access link. Over QUIC and raw UDP a datagram makes the round trip as well.

mod lab;

use std::path::Path;
use std::time::Duration;

use fog_natlab::process::output_within;
use fog_natlab::{Host, Lab, Link, NatBehaviour};
use lab::*;

const SIZE: usize = 20 * 1024 * 1024;

/// How the path between the peers is made.
#[derive(Clone, Copy, Debug, PartialEq)]
enum PathCase {
    Direct,
    Relay,
    Lossy,
}

/// Runs `fog ARGS --json` in `host` (killed after `limit`); its JSON line.
fn fog_json(host: &Host, args: &[&str], limit: Duration) -> serde_json::Value {
    let out = output_within(host.command(FOG).args(args), limit).unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "fog {args:?}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("no JSON: {stdout}"))
}

/// How long the 20 MB send may take. WebRTC's SCTP (`webrtc-sctp`) waits at least 1 s for
/// any loss that fast retransmission misses, so at 5 % loss it needs far longer than the rest.
fn send_limit(protocol: &str, case: PathCase) -> Duration {
    match (protocol, case) {
        ("rtc", PathCase::Lossy) => Duration::from_secs(600),
        _ => Duration::from_secs(120),
    }
}

/// One protocol over one kind of path: echo, then 20 MB into the inbox.
fn run_case(lab: &mut Lab, protocol: &str, case: PathCase, file: &Path, sha256: &str) {
    let ra = lab
        .router(NatBehaviour::PortRestrictedCone, Link::default())
        .unwrap();
    let lossy = Link {
        delay: Duration::ZERO,
        loss_percent: 5,
    };
    let a = lab
        .host(
            &ra,
            if case == PathCase::Lossy {
                lossy
            } else {
                Link::default()
            },
        )
        .unwrap();
    let rb = lab
        .router(NatBehaviour::PortRestrictedCone, Link::default())
        .unwrap();
    let b = lab.host(&rb, Link::default()).unwrap();
    let block = DirectBlock::new(&ra, &rb);
    if case == PathCase::Relay {
        block.on();
    }
    let inbox = tempfile::tempdir().unwrap();
    let name = format!("{protocol}-{case:?}").to_lowercase();
    let _serve = start(
        &b,
        &[
            "serve",
            "--signal",
            SIGNAL,
            "--name",
            &name,
            "--inbox",
            inbox.path().to_str().unwrap(),
        ],
        "peer id:",
    );
    let want_path = if case == PathCase::Relay {
        "relay"
    } else {
        "direct"
    };
    let echo = fog_json(
        &a,
        &[
            "connect",
            &name,
            "--signal",
            SIGNAL,
            "--protocol",
            protocol,
            "--json",
            "--timeout",
            "60",
        ],
        Duration::from_secs(90),
    );
    assert_eq!(echo["reply"], "hello", "{protocol} {case:?}: {echo}");
    assert_eq!(echo["protocol"], protocol, "{case:?}: {echo}");
    // QUIC and raw UDP carry datagrams too: the serving node echoes them.
    if protocol == "quic" || protocol == "udp" {
        assert_eq!(
            echo["datagram_reply"], "hello",
            "{protocol} {case:?}: {echo}"
        );
    } else {
        assert!(echo["datagram_reply"].is_null(), "{protocol}: {echo}");
    }
    // With a relay at hand, the first answer may come through it (a lost direct check, a busy
    // machine); the direct pair takes over once it answers, which the transfer below shows.
    if case == PathCase::Relay {
        assert_eq!(echo["path"], "relay", "{protocol} {case:?}: {echo}");
    }

    let sent = fog_json(
        &a,
        &[
            "send",
            &name,
            file.to_str().unwrap(),
            "--signal",
            SIGNAL,
            "--protocol",
            protocol,
            "--json",
        ],
        send_limit(protocol, case),
    );
    assert_eq!(sent["protocol"], protocol, "{case:?}: {sent}");
    assert_eq!(sent["path_kind"], want_path, "{protocol} {case:?}: {sent}");
    assert_eq!(sent["bytes"], SIZE as u64, "{protocol} {case:?}: {sent}");
    assert_eq!(sent["sha256"], sha256, "{protocol} {case:?}: {sent}");
    let saved = std::fs::read(inbox.path().join(sent["path"].as_str().unwrap())).unwrap();
    assert_eq!(
        sha256_hex(&saved),
        sha256,
        "{protocol} {case:?}: the saved file differs"
    );
    eprintln!(
        "{protocol} {case:?}: 20 MB in {:.1} s",
        sent["seconds"].as_f64().unwrap()
    );
}

fn all_paths(protocol: &str) {
    let (mut lab, _server) = lab_with_fog_server(true);
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("twenty.bin");
    let data = test_data(SIZE, 3);
    std::fs::write(&file, &data).unwrap();
    let sha256 = sha256_hex(&data);
    for case in [PathCase::Direct, PathCase::Relay, PathCase::Lossy] {
        run_case(&mut lab, protocol, case, &file, &sha256);
    }
}

#[test]
fn quic_carries_echo_and_20_mb_directly_over_the_relay_and_with_loss() {
    all_paths("quic");
}

#[test]
fn kcp_carries_echo_and_20_mb_directly_over_the_relay_and_with_loss() {
    all_paths("kcp");
}

#[test]
fn utp_carries_echo_and_20_mb_directly_over_the_relay_and_with_loss() {
    all_paths("utp");
}

#[test]
fn sctp_carries_echo_and_20_mb_directly_over_the_relay_and_with_loss() {
    all_paths("sctp");
}

#[test]
fn udp_carries_echo_and_20_mb_directly_over_the_relay_and_with_loss() {
    all_paths("udp");
}

#[test]
fn rtc_carries_echo_and_20_mb_directly_over_the_relay_and_with_loss() {
    all_paths("rtc");
}
