//! Delay and loss are real, and several hosts share a router.

mod common;

use std::net::SocketAddrV4;
use std::time::Duration;

use common::*;
use fog_natlab::{Host, Lab, Link, NatBehaviour};

/// Round trips host → A1:P1 → host, after a few warm-up requests (ARP, conntrack).
fn round_trips(host: &Host, count: usize) -> Vec<Duration> {
    host.run(move || async move {
        let probe = Probe::new().await;
        let dst = SocketAddrV4::new(A1, P1);
        for i in 0..3 {
            probe
                .ask(dst, ECHO, TRIES)
                .await
                .unwrap_or_else(|| panic!("warm-up request {i}: no answer from {dst}"));
        }
        let mut rtts = Vec::new();
        for i in 0..count {
            let answer = probe
                .ask(dst, ECHO, TRIES)
                .await
                .unwrap_or_else(|| panic!("request {i}: no answer from {dst}"));
            rtts.push(answer.rtt);
        }
        rtts
    })
    .expect("run in the host namespace")
}

fn assert_rtt_about(rtts: Vec<Duration>, expected: Duration, what: &str) {
    let min = *rtts.iter().min().unwrap();
    let max = *rtts.iter().max().unwrap();
    let median = median(rtts);
    println!("{what}: rtt min {min:?} median {median:?} max {max:?} (expected {expected:?})");
    // The fastest round trip shows the configured delay; the median may carry some scheduling
    // delay of the forwarder threads when the machine is busy (other tests run meanwhile).
    let (low, high) = (expected.mul_f64(0.9), expected.mul_f64(1.1));
    assert!(
        (low..=high).contains(&min),
        "{what}: the fastest round trip {min:?} is not within 10 % of {expected:?}"
    );
    assert!(
        median <= expected.mul_f64(1.3),
        "{what}: median round trip {median:?} is over 130 % of {expected:?}"
    );
    assert!(
        min >= expected.mul_f64(0.99),
        "{what}: a round trip of {min:?} is faster than the configured {expected:?}"
    );
}

#[test]
fn access_link_delay_is_measured() {
    let mut lab = Lab::new().expect("build a lab");
    let server = lab.server(&[A1, A2, A3]).expect("add the server");
    let router = lab
        .router(NatBehaviour::PortRestrictedCone, Link::default())
        .expect("add the router");
    let slow = lab
        .host(&router, Link::with_delay(Duration::from_millis(25)))
        .expect("add the slow host");
    let _responder = Responder::start(&server);
    assert_rtt_about(
        round_trips(&slow, 20),
        Duration::from_millis(50),
        "25 ms one-way on the access link",
    );
}

#[test]
fn wan_and_access_delay_add_up() {
    let mut lab = Lab::new().expect("build a lab");
    let server = lab.server(&[A1, A2, A3]).expect("add the server");
    let router = lab
        .router(
            NatBehaviour::SymmetricRandom,
            Link::with_delay(Duration::from_millis(10)),
        )
        .expect("add the router");
    let host = lab
        .host(&router, Link::with_delay(Duration::from_millis(15)))
        .expect("add the host");
    let _responder = Responder::start(&server);
    assert_rtt_about(
        round_trips(&host, 20),
        Duration::from_millis(50),
        "10 ms WAN + 15 ms access, one-way",
    );
}

#[test]
fn open_router_links_delay_too() {
    let mut lab = Lab::new().expect("build a lab");
    let server = lab.server(&[A1, A2, A3]).expect("add the server");
    let router = lab
        .router(
            NatBehaviour::Open,
            Link::with_delay(Duration::from_millis(10)),
        )
        .expect("add the router");
    let host = lab
        .host(&router, Link::with_delay(Duration::from_millis(5)))
        .expect("add the host");
    let _responder = Responder::start(&server);
    assert_rtt_about(
        round_trips(&host, 20),
        Duration::from_millis(30),
        "open router: 10 ms WAN + 5 ms access, one-way",
    );
}

#[test]
fn no_delay_is_fast() {
    let mut lab = Lab::new().expect("build a lab");
    let server = lab.server(&[A1, A2, A3]).expect("add the server");
    let router = lab
        .router(NatBehaviour::FullCone, Link::default())
        .expect("add the router");
    let host = lab.host(&router, Link::default()).expect("add the host");
    let _responder = Responder::start(&server);
    let rtts = round_trips(&host, 20);
    let median = median(rtts.clone());
    println!(
        "0 ms: rtt min {:?} median {median:?} max {:?}",
        rtts.iter().min().unwrap(),
        rtts.iter().max().unwrap()
    );
    assert!(
        median < Duration::from_millis(5),
        "median round trip {median:?} over ideal links should be under 5 ms"
    );
}

#[test]
fn zero_delay_tap_link_is_fast() {
    // A lossy link is a TAP pair with a forwarder even without delay: its round trip must
    // stay small too (1 % loss: the retries absorb it).
    let mut lab = Lab::new().expect("build a lab");
    let server = lab.server(&[A1, A2, A3]).expect("add the server");
    let router = lab
        .router(NatBehaviour::PortRestrictedCone, Link::with_loss(1))
        .expect("add the router");
    let host = lab.host(&router, Link::with_loss(1)).expect("add the host");
    let _responder = Responder::start(&server);
    let rtts = round_trips(&host, 20);
    let median = median(rtts);
    println!("0 ms over TAP forwarders: rtt median {median:?}");
    assert!(
        median < Duration::from_millis(5),
        "median round trip {median:?} over forwarded links without delay should be under 5 ms"
    );
}

#[test]
fn loss_is_measured() {
    const SENT: u32 = 500;
    let mut lab = Lab::new().expect("build a lab");
    let server = lab.server(&[A1, A2, A3]).expect("add the server");
    let router = lab
        .router(NatBehaviour::PortRestrictedCone, Link::default())
        .expect("add the router");
    let host = lab
        .host(&router, Link::with_loss(20))
        .expect("add the lossy host");
    let _responder = Responder::start(&server);
    let received = host
        .run(|| async {
            let probe = Probe::new().await;
            let dst = SocketAddrV4::new(A1, P1);
            // Resolve ARP and create the mapping first; requests are retried through the loss.
            probe
                .ask(dst, ECHO, 20)
                .await
                .expect("warm-up: no answer through the lossy link after 20 tries");
            probe.send_data(dst, SENT).await;
            // The count query travels the same FIFO path after the data, so it counts all of it.
            probe
                .ask(dst, COUNT, 20)
                .await
                .expect("count query: no answer through the lossy link after 20 tries")
                .reply
                .value
        })
        .expect("run in the host namespace");
    let loss = f64::from(SENT - received) / f64::from(SENT) * 100.0;
    println!("20 % loss configured: {received} of {SENT} arrived, {loss:.1} % lost");
    assert!(
        (10.0..=30.0).contains(&loss),
        "measured loss {loss:.1} % is not between 10 % and 30 %"
    );
}

#[test]
fn two_hosts_behind_one_router_reach_the_server() {
    let mut lab = Lab::new().expect("build a lab");
    let server = lab.server(&[A1, A2, A3]).expect("add the server");
    let nat = lab
        .router(NatBehaviour::PortRestrictedCone, Link::default())
        .expect("add the NAT router");
    let first = lab.host(&nat, Link::default()).expect("add host 1");
    let second = lab
        .host(&nat, Link::with_delay(Duration::from_millis(2)))
        .expect("add host 2");
    let open = lab
        .router(NatBehaviour::Open, Link::default())
        .expect("add the open router");
    let open_first = lab.host(&open, Link::default()).expect("add open host 1");
    let open_second = lab.host(&open, Link::default()).expect("add open host 2");
    let _responder = Responder::start(&server);

    assert_eq!(first.addr().octets()[..3], [10, 1, 0]);
    assert_eq!(second.addr().octets()[..3], [10, 1, 0]);
    assert_ne!(first.addr(), second.addr());
    assert_eq!(nat.lan_addr(), Some(std::net::Ipv4Addr::new(10, 1, 0, 1)));
    assert_eq!(open.lan_addr(), None);

    // Both NATed hosts send from the same local port: the NAT must tell them apart.
    let seen_from = |host: &Host| {
        host.run(|| async {
            let probe = Probe {
                socket: tokio::net::UdpSocket::bind("0.0.0.0:40000")
                    .await
                    .expect("bind port 40000"),
            };
            probe
                .ask(SocketAddrV4::new(A1, P1), ECHO, TRIES)
                .await
                .map(|a| a.reply.mapped)
        })
        .expect("run in the host namespace")
    };
    let a = seen_from(&first).expect("host 1 got no answer from the server");
    let b = seen_from(&second).expect("host 2 got no answer from the server");
    println!("behind one NAT: host 1 seen as {a}, host 2 seen as {b}");
    assert_eq!(*a.ip(), nat.wan_addr());
    assert_eq!(*b.ip(), nat.wan_addr());
    assert_ne!(a, b, "two hosts behind one NAT need different mappings");

    let c = seen_from(&open_first).expect("open host 1 got no answer from the server");
    let d = seen_from(&open_second).expect("open host 2 got no answer from the server");
    println!("behind one open router: {c} and {d}");
    assert_eq!(c, SocketAddrV4::new(open_first.addr(), 40000));
    assert_eq!(d, SocketAddrV4::new(open_second.addr(), 40000));
    assert_ne!(open_first.addr(), open_second.addr());
}
