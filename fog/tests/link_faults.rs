//! Faults of the network under a running connection, on the test bed with the relay on: an
//! access link that goes dark for 10 s (each side's), the relay's allocations ending every
//! 20 s, the relay restarting, and two peers whose UDP is blocked (an address that changes is
//! here too, ignored until it holds every time). A
//! node inside the dialer's namespace streams 50 MB through `fog serve`'s echo across the
//! fault; the echo must come back whole (SHA-256), `fog serve` must still run and be reachable
//! by name, and the time from the fault's end to the first echoed byte is printed.

mod lab;

use std::time::{Duration, Instant};

use fog_natlab::{Host, Link, NatBehaviour};
use lab::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The stream that crosses the fault.
const STREAM_BYTES: usize = 50 * 1024 * 1024;
/// How long a link stays dark.
const OUTAGE: Duration = Duration::from_secs(10);
/// One 64 KiB block per tick: 4 MiB/s.
const PACE: Duration = Duration::from_micros(15_625);

/// Gives `host` a new address in its LAN (as a new DHCP lease or another Wi-Fi would) and
/// takes the old one away: its sockets stay open, and what they send leaves from the new
/// address, through a new NAT mapping.
fn renumber(host: &Host) {
    let old = host.addr();
    let [a, b, c, d] = old.octets();
    let new = std::net::Ipv4Addr::new(a, b, c, d.wrapping_add(100));
    let gateway = std::net::Ipv4Addr::new(a, b, c, 1);
    for args in [
        vec!["sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1"],
        vec!["ip", "addr", "add", &format!("{new}/24"), "dev", "eth0"],
        vec!["ip", "addr", "del", &format!("{old}/24"), "dev", "eth0"],
        vec![
            "ip",
            "route",
            "replace",
            "default",
            "via",
            &gateway.to_string(),
        ],
    ] {
        let out = host.command(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// SHA-256, hex.
fn hex(digest: ring::digest::Digest) -> String {
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// What the dialer's side saw.
struct Streamed {
    sent: (usize, String),
    echoed: (usize, String),
    /// From the fault's end to the first echoed byte after it.
    recovery: Option<Duration>,
    /// The longest time the echo stood still, once it had started.
    longest_stall: Duration,
    path_after: String,
}

/// Streams 50 MB from a node in `dialer` to `name`'s echo: half, then a trickle while
/// `fault` runs (it gets called with the stream half done and returns when the fault is over),
/// then the rest.
fn stream_across(dialer: &Host, name: &str, fault: impl FnOnce()) -> Streamed {
    // RUST_LOG=fog=debug (or any filter) shows what the dialer's node does.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let (half_tx, half_rx) = std::sync::mpsc::channel::<()>();
    let (over_tx, over_rx) = tokio::sync::oneshot::channel::<Instant>();
    let name = name.to_string();
    let dialer = dialer.clone();
    let node_thread = std::thread::spawn(move || {
        dialer
            .run(move || async move {
                let node = fog::Node::builder()
                    .signal(SIGNAL)
                    .bind()
                    .await
                    .expect("the dialer's node registers");
                let conn = tokio::time::timeout(Duration::from_secs(30), node.connect(&name))
                    .await
                    .expect("connect within 30 s")
                    .expect("connects by name");
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                let (over_seen_tx, over_seen_rx) = tokio::sync::watch::channel(None::<Instant>);
                let reader = tokio::spawn(async move {
                    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
                    let mut total = 0usize;
                    let mut recovery = None;
                    let mut longest_stall = Duration::ZERO;
                    let mut last_read: Option<Instant> = None;
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = recv.read(&mut buf).await.expect("echo reads");
                        if n == 0 {
                            break;
                        }
                        if let Some(last) = last_read {
                            longest_stall = longest_stall.max(last.elapsed());
                        }
                        last_read = Some(Instant::now());
                        if recovery.is_none() {
                            if let Some(over) = *over_seen_rx.borrow() {
                                recovery = Some(over.elapsed());
                            }
                        }
                        hash.update(&buf[..n]);
                        total += n;
                    }
                    (total, hex(hash.finish()), recovery, longest_stall)
                });
                let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
                let mut index = 0u64;
                let mut total = 0usize;
                let mut next = |len: usize| {
                    let data = test_data(len, index);
                    index += 1;
                    hash.update(&data);
                    data
                };
                // Paced at the relay's default rate for one node (4 MiB/s), as a deployed
                // relay would hold it: two debug builds of the relay at full speed on two cores
                // would measure the machine, not the fault.
                let mut pace = tokio::time::interval(PACE);
                while total < STREAM_BYTES / 2 {
                    pace.tick().await;
                    let data = next(64 * 1024);
                    send.write_all(&data).await.expect("write before the fault");
                    total += data.len();
                }
                half_tx.send(()).unwrap();
                let mut over_rx = over_rx;
                let over = loop {
                    tokio::select! {
                        over = &mut over_rx => break over.expect("the fault ends"),
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {
                            let data = next(1024);
                            send.write_all(&data).await.expect("write during the fault");
                            total += data.len();
                        }
                    }
                };
                over_seen_tx.send_replace(Some(over));
                while total < STREAM_BYTES {
                    pace.tick().await;
                    let data = next((64 * 1024).min(STREAM_BYTES - total));
                    send.write_all(&data).await.expect("write after the fault");
                    total += data.len();
                }
                send.shutdown().await.expect("finish");
                let sent = (total, hex(hash.finish()));
                let (echoed, echoed_hash, recovery, longest_stall) =
                    tokio::time::timeout(Duration::from_secs(120), reader)
                        .await
                        .expect("the echo ends within 120 s")
                        .unwrap();
                let path_after = format!("{:?}", conn.path_kind());
                conn.close("done");
                node.shutdown().await;
                Streamed {
                    sent,
                    echoed: (echoed, echoed_hash),
                    recovery,
                    longest_stall,
                    path_after,
                }
            })
            .expect("the dialer's namespace thread")
    });
    half_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("half the stream written within 120 s");
    fault();
    let _ = over_tx.send(Instant::now());
    node_thread
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// `fog serve` behind `b`, a dialer behind `a`, a 50 MB stream across `fault` (given the
/// dialer's and the server's hosts); then `fog serve` must still answer by name.
fn run(a: NatBehaviour, b: NatBehaviour, label: &str, fault: impl FnOnce(&Host, &Host)) {
    let (mut lab, _server) = lab_with_fog_server(true);
    run_in(&mut lab, a, b, label, |dialer, served, _| {
        fault(dialer, served)
    });
}

/// How long a relayed stream may stand still when its allocation is made again.
const RENEWED_WITHIN: Duration = Duration::from_secs(10);

/// A pair with no direct path, relayed for a minute by a relay that ends every allocation after
/// 20 s: the allocations are made again before they end, the peers learn the new relayed
/// addresses, and the stream goes on.
#[test]
fn a_relayed_stream_outlives_the_relays_maximum_lifetime() {
    let (mut lab, _server_host, _server) =
        lab_with_server_args(true, &["--relay-max-lifetime", "20"]);
    let streamed = run_in(
        &mut lab,
        NatBehaviour::SymmetricRandom,
        NatBehaviour::SymmetricRandom,
        "max-lifetime",
        |_, _, _| std::thread::sleep(Duration::from_secs(60)),
    );
    assert_eq!(streamed.path_after, "Relay");
    assert!(
        streamed.longest_stall < RENEWED_WITHIN,
        "the stream stood still for {:?}",
        streamed.longest_stall
    );
}

/// The relay (with the signal server: one `fog server`) restarts under a relayed stream: both
/// peers allocate again on the new relay, tell each other, and the stream goes on within
/// 10 s of the relay being back.
#[test]
fn a_relayed_stream_survives_the_relay_restarting() {
    let (mut lab, server_host, server) = lab_with_server_args(true, &[]);
    let mut server = Some(server);
    let streamed = run_in(
        &mut lab,
        NatBehaviour::SymmetricRandom,
        NatBehaviour::SymmetricRandom,
        "relay-restart",
        |_, _, _| {
            drop(server.take());
            server = Some(start(
                &server_host,
                &fog_server_args(true, &[]),
                "fog signal server on",
            ));
        },
    );
    assert_eq!(streamed.path_after, "Relay");
    let recovery = streamed.recovery.expect("the echo moved after the restart");
    assert!(
        recovery < RENEWED_WITHIN,
        "the stream came back {recovery:?} after the relay"
    );
}

/// [`run`] in `lab`; `fault` also gets the name `fog serve` runs under.
fn run_in(
    lab: &mut fog_natlab::Lab,
    a: NatBehaviour,
    b: NatBehaviour,
    label: &str,
    fault: impl FnOnce(&Host, &Host, &str),
) -> Streamed {
    let ra = lab.router(a, Link::default()).unwrap();
    let dialer = lab.host(&ra, Link::default()).unwrap();
    let rb = lab.router(b, Link::default()).unwrap();
    let served = lab.host(&rb, Link::default()).unwrap();
    let name = format!("fault-{label}-{}", std::process::id());
    // With RUST_LOG set, fog serve's log goes to a file in the temporary directory.
    let serve_log = match std::env::var_os("RUST_LOG") {
        Some(_) => {
            let path = std::env::temp_dir().join(format!("{name}.log"));
            println!("{label}: fog serve logs to {}", path.display());
            std::process::Stdio::from(std::fs::File::create(path).unwrap())
        }
        None => std::process::Stdio::null(),
    };
    let (mut serve, _) = fog_natlab::process::spawn_until_line_with_stderr(
        served
            .command(FOG)
            .args(["serve", "--signal", SIGNAL, "--name", &name]),
        "peer id:",
        Duration::from_secs(15),
        serve_log,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let streamed = stream_across(&dialer, &name, || fault(&dialer, &served, &name));
    assert!(streamed.sent.0 >= STREAM_BYTES);
    assert_eq!(
        streamed.echoed.0, streamed.sent.0,
        "{label}: bytes lost or added"
    );
    assert_eq!(
        streamed.echoed.1, streamed.sent.1,
        "{label}: the echo differs"
    );
    println!(
        "{label}: {} MB echoed whole, first byte {} after the fault, longest stall {:.2} s, on the {} path",
        streamed.sent.0 >> 20,
        streamed
            .recovery
            .map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64())),
        streamed.longest_stall.as_secs_f64(),
        streamed.path_after
    );
    assert!(
        serve.0.try_wait().unwrap().is_none(),
        "{label}: fog serve exited"
    );
    let out = connect(&dialer, &name);
    assert!(
        out.status.success(),
        "{label}: reachable by name after the fault: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    streamed
}

#[test]
fn a_stream_survives_the_dialers_link_dark_for_10_s() {
    run(
        NatBehaviour::PortRestrictedCone,
        NatBehaviour::PortRestrictedCone,
        "dialer-dark",
        |dialer, _| {
            let _dark = dialer.go_dark().unwrap();
            std::thread::sleep(OUTAGE);
        },
    );
}

#[test]
fn a_stream_survives_the_servers_link_dark_for_10_s() {
    run(
        NatBehaviour::SymmetricSequential,
        NatBehaviour::RestrictedCone,
        "server-dark",
        |_, served| {
            let _dark = served.go_dark().unwrap();
            std::thread::sleep(OUTAGE);
        },
    );
}

#[test]
fn a_stream_between_two_udp_blocked_peers_crosses_the_relay_over_tcp() {
    run(
        NatBehaviour::UdpBlocked,
        NatBehaviour::UdpBlocked,
        "udp-blocked",
        |_, _| {},
    );
}

#[test]
#[ignore = "not reliable yet: about one run in four the server side never moves off the dead pair \
            after the dialer's address changes (see README, Faults)"]
fn a_stream_survives_the_dialers_address_changing() {
    run(
        NatBehaviour::PortRestrictedCone,
        NatBehaviour::PortRestrictedCone,
        "renumbered",
        |dialer, _| renumber(dialer),
    );
}

/// A node relayed to one peer takes a second relayed peer while the first streams: both share
/// the node's allocation on the relay (a second allocation from the same socket would be the
/// same TURN 5-tuple, which a relay refuses).
#[test]
fn a_relayed_node_takes_a_second_relayed_peer_while_the_first_streams() {
    let (mut lab, _server) = lab_with_fog_server(true);
    let second_router = lab
        .router(NatBehaviour::SymmetricRandom, Link::default())
        .unwrap();
    let second = lab.host(&second_router, Link::default()).unwrap();
    run_in(
        &mut lab,
        NatBehaviour::SymmetricRandom,
        NatBehaviour::SymmetricRandom,
        "second-relayed",
        |_, _, name| {
            let out = connect(&second, name);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "the second peer connects: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            assert_eq!(json["path"], "relay", "{json}");
        },
    );
}
