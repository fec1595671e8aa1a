//! The smaller promises of the API: names, addresses, commands, async use, errors.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use common::*;
use fog_natlab::{Lab, LabError, Link, NatBehaviour};

#[test]
fn names_and_addresses() {
    let mut lab = Lab::new().expect("build a lab");
    let other = Lab::new().expect("build a second lab");
    assert_ne!(
        lab.prefix(),
        other.prefix(),
        "labs of one process must not share names"
    );
    assert!(lab
        .prefix()
        .starts_with(&format!("fl{}x", std::process::id())));

    let server = lab.server(&[A1, A2]).expect("add the server");
    assert_eq!(server.addr(), A1);
    assert_eq!(server.addrs(), &[A1, A2]);
    let r1 = lab
        .router(NatBehaviour::SymmetricSequential, Link::default())
        .unwrap();
    let r2 = lab.router(NatBehaviour::FullCone, Link::default()).unwrap();
    assert_eq!(r1.nat(), NatBehaviour::SymmetricSequential);
    assert_eq!(r1.wan_addr(), Ipv4Addr::new(203, 0, 113, 100));
    assert_eq!(r2.wan_addr(), Ipv4Addr::new(203, 0, 113, 101));
    let h1 = lab.host(&r1, Link::default()).unwrap();
    let h2 = lab.host(&r2, Link::default()).unwrap();
    let h3 = lab.host(&r2, Link::default()).unwrap();
    assert_eq!(h1.addr(), Ipv4Addr::new(10, 1, 0, 2));
    assert_eq!(h2.addr(), Ipv4Addr::new(10, 2, 0, 2));
    assert_eq!(h3.addr(), Ipv4Addr::new(10, 2, 0, 3));
    for name in [server.name(), r1.name(), h1.name(), h3.name()] {
        assert!(name.starts_with(lab.prefix()), "{name}");
        assert!(lab.namespaces().iter().any(|n| n == name), "{name}");
    }

    // Address errors.
    assert!(matches!(lab.server(&[]), Err(LabError::NoAddress)));
    assert!(matches!(
        lab.server(&[Ipv4Addr::new(192, 0, 2, 1)]),
        Err(LabError::InvalidAddress(_))
    ));
    assert!(matches!(lab.server(&[A1]), Err(LabError::AddressInUse(a)) if a == A1));
    assert!(matches!(
        lab.server(&[r1.wan_addr()]),
        Err(LabError::AddressInUse(_))
    ));
    assert!(matches!(
        lab.host(&r1, Link::with_loss(101)),
        Err(LabError::InvalidLink(_))
    ));
    let foreign = {
        let mut other = other;
        other.router(NatBehaviour::Open, Link::default()).unwrap()
    };
    assert!(matches!(
        lab.host(&foreign, Link::default()),
        Err(LabError::ForeignRouter(_))
    ));
}

#[test]
fn command_runs_inside_the_namespace() {
    let mut lab = Lab::new().expect("build a lab");
    let router = lab
        .router(NatBehaviour::PortRestrictedCone, Link::default())
        .unwrap();
    let host = lab.host(&router, Link::default()).unwrap();
    let out = host
        .command("ip")
        .args(["-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .expect("run ip in the host namespace");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{}/24", host.addr())), "{text}");

    let routes = host.command("ip").args(["route"]).output().unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(routes.contains("default via 10.1.0.1"), "{routes}");

    let forward = router
        .lan_addr()
        .map(|_| {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", router.name(), "cat"])
                .arg("/proc/sys/net/ipv4/ip_forward")
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .unwrap();
    assert_eq!(forward, "1", "routers forward");
}

#[tokio::test(flavor = "current_thread")]
async fn run_async_does_not_block_the_callers_runtime() {
    let mut lab = Lab::new().expect("build a lab");
    let server = lab.server(&[A1, A2, A3]).unwrap();
    let router = lab
        .router(
            NatBehaviour::FullCone,
            Link::with_delay(Duration::from_millis(20)),
        )
        .unwrap();
    let host = lab.host(&router, Link::default()).unwrap();
    let _responder = Responder::start(&server);

    // The closure in the host namespace waits for a message that only a task of this
    // single-threaded runtime sends: if run_async blocked this runtime, it would never come.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let sender = tokio::spawn(async move {
        let _ = tx.send(());
    });
    let (heard, mapped) = host
        .run_async(|| async {
            let heard = tokio::time::timeout(Duration::from_secs(5), rx)
                .await
                .is_ok();
            let probe = Probe::new().await;
            let mapped = probe
                .ask(SocketAddrV4::new(A1, P1), ECHO, TRIES)
                .await
                .map(|a| a.reply.mapped);
            (heard, mapped)
        })
        .await
        .expect("run_async");
    sender.await.unwrap();
    assert!(
        heard,
        "the caller's runtime made no progress within 5 s while run_async ran"
    );
    let mapped = mapped.expect("no answer from the server");
    assert_eq!(*mapped.ip(), router.wan_addr());
}

#[test]
fn panics_inside_run_reach_the_caller() {
    let mut lab = Lab::new().expect("build a lab");
    let server = lab.server(&[A1]).unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = server.run(|| async { panic!("inside the namespace") });
    }));
    let payload = caught.expect_err("the panic must reach the caller");
    let msg = payload.downcast_ref::<&str>().copied().unwrap_or_default();
    assert_eq!(msg, "inside the namespace");
}

/// Run by `non_root_gets_a_clear_error` in a child process without root.
#[test]
#[ignore = "helper: runs only as the unprivileged child of non_root_gets_a_clear_error"]
fn child_reports_lab_new_error() {
    match Lab::new() {
        Ok(_) => println!("LAB_NEW: ok"),
        Err(e) => println!("LAB_NEW: error: {e}"),
    }
}

#[test]
fn non_root_gets_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // Copy this test binary to a folder anyone may read, and run the helper test in it as
    // `nobody` (the build folder may not be readable by other users).
    let dir = std::env::temp_dir().join(format!("natlab-nonroot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.join("child");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let child = std::process::Command::new(&exe)
        .args([
            "--ignored",
            "--exact",
            "child_reports_lab_new_error",
            "--nocapture",
        ])
        .current_dir(&dir)
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the unprivileged child");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the unprivileged child did not finish within 30 s")
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("LAB_NEW:"))
        .unwrap_or_else(|| {
            panic!(
                "the child printed no verdict: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(
        line.contains("needs root") && line.contains("effective uid 65534"),
        "Lab::new without root should say it needs root: {line}"
    );
}
