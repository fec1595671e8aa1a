//! The STUN server on loopback, probed by fog's own client and by raw packets.

use std::net::SocketAddr;
use std::time::Duration;

use fog_core::NatType;
use fog_layers::nat_probe::{probe_nat, ProbeConfig};
use fog_server::stun::{StunConfig, StunServer};
use tokio::net::UdpSocket;

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn rfc5780_server() -> StunServer {
    // 127.0.0.2 is loopback too: two addresses on one machine, as RFC 5780 needs. The four
    // sockets cross two ports over two addresses, so a port free on 127.0.0.1 may be taken on
    // 127.0.0.2 by a test running beside this one: pick new ports then (setup, not a check).
    let mut last = None;
    for _ in 0..20 {
        let (p1, p2) = (free_port(), free_port());
        match StunServer::bind(StunConfig {
            primary: format!("127.0.0.1:{p1}").parse().unwrap(),
            alternate: Some(format!("127.0.0.2:{p2}").parse().unwrap()),
        })
        .await
        {
            Ok(server) => return server,
            Err(e) => last = Some(e),
        }
    }
    panic!("binds four sockets: {last:?}")
}

/// A raw Binding request: type 0x0001, length, magic cookie, transaction id, and the given
/// attributes.
fn request(txid: [u8; 12], attributes: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x00, 0x01];
    packet.extend_from_slice(&(attributes.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    packet.extend_from_slice(&txid);
    packet.extend_from_slice(attributes);
    packet
}

async fn ask(socket: &UdpSocket, to: SocketAddr, packet: &[u8]) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 1500];
    for _ in 0..5 {
        socket.send_to(packet, to).await.unwrap();
        if let Ok(Ok((len, from))) =
            tokio::time::timeout(Duration::from_millis(200), socket.recv_from(&mut buf)).await
        {
            return Some((buf[..len].to_vec(), from));
        }
    }
    None
}

#[tokio::test]
async fn a_host_without_nat_is_open_and_the_verdict_is_fast() {
    let server = rfc5780_server().await;
    let report = probe_nat(&ProbeConfig::new(vec![server.primary()]))
        .await
        .unwrap();
    let p = &report.profile;
    assert_eq!(p.nat_type, Some(NatType::Open), "{p:?}");
    assert_eq!(p.mapping, Some(fog_core::Mapping::EndpointIndependent));
    assert_eq!(p.filtering, Some(fog_core::Filtering::EndpointIndependent));
    assert_eq!(p.public.unwrap().ip().to_string(), "127.0.0.1");
    assert!(
        report.elapsed < Duration::from_millis(1500),
        "{:?}",
        report.elapsed
    );
}

#[tokio::test]
async fn change_request_picks_the_answering_socket_and_answers_stay_small() {
    let server = rfc5780_server().await;
    let addrs = server.local_addrs().to_vec();
    assert_eq!(addrs.len(), 4);
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // CHANGE-REQUEST (0x0003), length 4, flags change-ip (4) | change-port (2).
    let change_both = [0x00, 0x03, 0x00, 0x04, 0x00, 0x00, 0x00, 0x06];
    let packet = request([1; 12], &change_both);
    let (reply, from) = ask(&client, server.primary(), &packet)
        .await
        .expect("answered");
    assert_ne!(from.ip(), server.primary().ip());
    assert_ne!(from.port(), server.primary().port());
    assert!(reply.len() <= 68, "answer of {} bytes", reply.len());
    assert_eq!(&reply[8..20], &[1; 12], "the transaction id is echoed");

    let change_port = [0x00, 0x03, 0x00, 0x04, 0x00, 0x00, 0x00, 0x02];
    let (_, from) = ask(&client, server.primary(), &request([2; 12], &change_port))
        .await
        .expect("answered");
    assert_eq!(from.ip(), server.primary().ip());
    assert_ne!(from.port(), server.primary().port());
}

#[tokio::test]
async fn garbage_is_dropped_and_the_server_keeps_answering() {
    let server = rfc5780_server().await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for junk in [
        vec![],
        vec![0xff; 3],
        vec![0x00, 0x01, 0x00, 0x00],
        // A binding *response*, not a request: never answered.
        {
            let mut r = request([3; 12], &[]);
            r[1] = 0x01;
            r[0] = 0x01;
            r
        },
        // A length field that lies.
        {
            let mut r = request([4; 12], &[]);
            r[3] = 0xf0;
            r
        },
        vec![0x00; 1400],
    ] {
        client.send_to(&junk, server.primary()).await.unwrap();
    }
    let (reply, _) = ask(&client, server.primary(), &request([5; 12], &[]))
        .await
        .expect("still answering");
    // Exactly the valid request was answered: the first reply carries its id.
    assert_eq!(&reply[8..20], &[5; 12]);
}

#[tokio::test]
async fn a_plain_server_gives_the_public_address_and_no_guess() {
    let plain = StunServer::bind(StunConfig {
        primary: "127.0.0.1:0".parse().unwrap(),
        alternate: None,
    })
    .await
    .unwrap();
    let report = probe_nat(&ProbeConfig::new(vec![plain.primary()]))
        .await
        .unwrap();
    assert_eq!(report.profile.public.unwrap().ip().to_string(), "127.0.0.1");
    // No OTHER-ADDRESS: filtering could not be tested and is not claimed.
    assert_eq!(report.profile.filtering, None);
}

#[tokio::test]
async fn no_answer_is_the_udp_blocked_verdict() {
    // A bound socket that never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let report = probe_nat(&ProbeConfig::new(vec![silent.local_addr().unwrap()]))
        .await
        .unwrap();
    assert_eq!(report.profile.nat_type, Some(NatType::UdpBlocked));
    assert!(report.elapsed < Duration::from_millis(1500));
}

#[tokio::test]
async fn a_wildcard_primary_cannot_do_rfc5780() {
    let err = StunServer::bind(StunConfig {
        primary: "0.0.0.0:0".parse().unwrap(),
        alternate: Some("127.0.0.2:3479".parse().unwrap()),
    })
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("--stun-alt"), "{err}");
}
