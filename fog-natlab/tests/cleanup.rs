//! Everything a Lab creates is gone after it drops: normally, during a panic, and after a killed
//! run (the next `Lab::new` removes the leftovers).

mod common;

use std::panic::{self, AssertUnwindSafe};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use fog_natlab::{Lab, Link, NatBehaviour};

/// Builds a lab with a server, a router with a delayed WAN link, a NAT host with a lossy access
/// link and an open host: veths, TAP devices, forwarders and nftables rules.
fn busy_lab() -> Lab {
    let mut lab = Lab::new().expect("build a lab");
    lab.server(&[A1, A2]).expect("add the server");
    let router = lab
        .router(
            NatBehaviour::RestrictedCone,
            Link::with_delay(Duration::from_millis(5)),
        )
        .expect("add the router");
    lab.host(&router, Link::with_loss(5)).expect("add a host");
    let open = lab
        .router(NatBehaviour::Open, Link::default())
        .expect("add an open router");
    lab.host(&open, Link::with_delay(Duration::from_millis(1)))
        .expect("add an open host");
    lab
}

fn ours(prefix: &str) -> Vec<String> {
    netns_list()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[test]
fn drop_removes_every_namespace() {
    let lab = busy_lab();
    let prefix = lab.prefix().to_string();
    let mut created = lab.namespaces().to_vec();
    created.sort();
    assert_eq!(
        created.len(),
        6,
        "wan, server, 2 routers, 2 hosts: {created:?}"
    );
    let mut listed = ours(&prefix);
    listed.sort();
    assert_eq!(
        listed, created,
        "`ip netns list` should show the lab's namespaces"
    );

    // Drop joins the link forwarders: if one did not stop, it would hang.
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(lab);
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("dropping the Lab did not finish within 10 s (a forwarder not stopping?)");
    println!("drop took {:?}", started.elapsed());
    assert_eq!(
        ours(&prefix),
        Vec::<String>::new(),
        "namespaces left after drop"
    );
}

#[test]
fn panic_unwind_removes_every_namespace() {
    let prefix = Mutex::new(String::new());
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let lab = busy_lab();
        *prefix.lock().unwrap() = lab.prefix().to_string();
        assert!(!ours(lab.prefix()).is_empty());
        panic!("deliberate panic with a live Lab");
    }));
    assert!(outcome.is_err(), "the closure should have panicked");
    let prefix = prefix.into_inner().unwrap();
    assert!(!prefix.is_empty(), "the lab was never built");
    assert_eq!(
        ours(&prefix),
        Vec::<String>::new(),
        "namespaces left after a panic"
    );
}

#[test]
fn namespaces_of_dead_runs_are_removed() {
    // A process that has exited: its pid is no longer alive, like a killed test run's.
    let mut child = Command::new("true").spawn().expect("spawn `true`");
    let dead_pid = child.id();
    child.wait().expect("wait for `true`");
    assert!(
        !std::path::Path::new(&format!("/proc/{dead_pid}")).exists(),
        "pid {dead_pid} is still alive"
    );
    let stale = format!("fl{dead_pid}x0-wan");
    // A Lab::new in another thread or process may delete it while `ip netns add` is still
    // setting it up (that is the very cleanup under test): try a few times.
    let mut errors = Vec::new();
    for _ in 0..5 {
        let out = Command::new("ip")
            .args(["netns", "add", &stale])
            .output()
            .expect("run ip netns add");
        if out.status.success() {
            errors.clear();
            break;
        }
        errors.push(String::from_utf8_lossy(&out.stderr).into_owned());
        let _ = Command::new("ip")
            .args(["netns", "delete", &stale])
            .output();
    }
    assert!(errors.is_empty(), "cannot create {stale}: {errors:?}");
    // A namespace of a live process (a `cat` waiting on its stdin) must survive.
    let mut live = Command::new("cat")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("spawn `cat`");
    let alive = format!("fl{}x0-keep", live.id());
    let status = Command::new("ip")
        .args(["netns", "add", &alive])
        .status()
        .expect("run ip netns add");
    assert!(status.success(), "cannot create {alive}");

    let lab = Lab::new().expect("build a lab");
    let listed = netns_list();
    let _ = Command::new("ip")
        .args(["netns", "delete", &alive])
        .status();
    drop(live.stdin.take());
    let _ = live.wait();
    assert!(
        !listed.contains(&stale),
        "the stale namespace {stale} survived Lab::new: {listed:?}"
    );
    assert!(
        listed.contains(&alive),
        "Lab::new deleted {alive} of a live process: {listed:?}"
    );
    assert!(listed.iter().any(|n| n.starts_with(lab.prefix())));
}

#[test]
fn hosts_fail_cleanly_after_the_lab_is_gone() {
    let mut lab = Lab::new().expect("build a lab");
    let server = lab.server(&[A1]).expect("add the server");
    drop(lab);
    let err = server
        .run(|| async {})
        .expect_err("running in a deleted namespace must fail");
    assert!(err.to_string().contains(server.name()), "{err}");
}

/// Run by `leftovers_with_a_reused_pid_are_removed` in a fresh process: before its first lab, a
/// namespace carrying its own pid can only be a leftover of a dead run that had the same pid.
#[test]
#[ignore = "helper: runs only in the child process of leftovers_with_a_reused_pid_are_removed"]
fn child_first_lab_removes_own_pid_leftovers() {
    let leftover = format!("fl{}x0-wan", std::process::id());
    let status = Command::new("ip")
        .args(["netns", "add", &leftover])
        .status()
        .expect("run ip netns add");
    assert!(status.success(), "cannot create {leftover}");
    let lab = Lab::new().expect("build a lab");
    // The lab's wan namespace has that very name: `ip netns add` would have failed had the
    // leftover not been deleted first.
    assert_eq!(lab.namespaces()[0], leftover);
    drop(lab);
    assert!(!netns_list().contains(&leftover), "{leftover} left behind");
    println!("CHILD: ok");
}

#[test]
fn leftovers_with_a_reused_pid_are_removed() {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_first_lab_removes_own_pid_leftovers",
            "--nocapture",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the child test process");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the child test process did not finish within 30 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CHILD: ok"),
        "the child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
