//! Helpers shared by the tests that run `fog` in the NAT test bed: a lab whose server host runs
//! `fog server` (signal, RFC 5780 STUN, and a TURN relay when asked), and bounded process runs.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::Output;
use std::time::Duration;

use fog_natlab::process::{output_within, spawn_until_line, ChildGuard};
use fog_natlab::{Host, Lab, Router};

pub const FOG: &str = env!("CARGO_BIN_EXE_fog");
pub const SIGNAL: &str = "ws://203.0.113.9:7600/ws";
/// Where the lab's relay listens (TURN over UDP).
pub const RELAY: &str = "203.0.113.9:3480";

/// Starts `fog ARGS` in `host` and waits (bounded) for a stdout line starting with `prefix`.
pub fn start(host: &Host, args: &[&str], prefix: &str) -> ChildGuard {
    spawn_until_line(
        host.command(FOG).args(args),
        prefix,
        Duration::from_secs(15),
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .0
}

/// Runs `fog connect --json` to `peer` in `host`, killed after 30 s.
pub fn connect(host: &Host, peer: &str) -> Output {
    connect_with(host, peer, &[])
}

/// [`connect`] with more arguments, killed after 40 s.
pub fn connect_with(host: &Host, peer: &str, more: &[&str]) -> Output {
    output_within(
        host.command(FOG)
            .args([
                "connect",
                peer,
                "--signal",
                SIGNAL,
                "--json",
                "--timeout",
                "20",
            ])
            .args(more),
        Duration::from_secs(40),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A lab whose server host (203.0.113.9 and .10) runs `fog server` with RFC 5780 STUN, and a
/// relay on [`RELAY`] (UDP and TCP) when `relay` is set, with no rate limit so that transfers
/// stay quick.
pub fn lab_with_fog_server(relay: bool) -> (Lab, ChildGuard) {
    let (lab, _server, fog_server) = lab_with_server_host(relay);
    (lab, fog_server)
}

/// [`lab_with_fog_server`], and the server host, for more servers on it.
pub fn lab_with_server_host(relay: bool) -> (Lab, Host, ChildGuard) {
    lab_with_server_args(relay, &[])
}

/// The `fog server` arguments of the lab (with the relay when `relay` is set), and `more`.
pub fn fog_server_args<'a>(relay: bool, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "server",
        "--signal",
        "203.0.113.9:7600",
        "--stun",
        "203.0.113.9:3478",
        "--stun-alt",
        "203.0.113.10:3479",
    ];
    if relay {
        args.extend([
            "--relay",
            RELAY,
            "--relay-tcp",
            RELAY,
            "--relay-max-rate",
            "0",
        ]);
    }
    args.extend(more);
    args
}

/// [`lab_with_server_host`] with `more` arguments for `fog server`.
pub fn lab_with_server_args(relay: bool, more: &[&str]) -> (Lab, Host, ChildGuard) {
    let mut lab = Lab::new().expect("the NAT test bed needs root, ip and nft");
    let server = lab
        .server(&[
            Ipv4Addr::new(203, 0, 113, 9),
            Ipv4Addr::new(203, 0, 113, 10),
        ])
        .unwrap();
    let fog_server = start(
        &server,
        &fog_server_args(relay, more),
        "fog signal server on",
    );
    (lab, server, fog_server)
}

/// UDP between the two routers' public addresses dropped on the way in, before conntrack and
/// NAT see it: the direct pair is dead, the relay (on another address) is not.
pub struct DirectBlock {
    routers: Vec<(String, std::net::Ipv4Addr)>,
    table: String,
}

pub fn nft(namespace: &str, script: &str) -> std::io::Result<std::process::Output> {
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", namespace, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())?;
    child.wait_with_output()
}

impl DirectBlock {
    pub fn new(a: &Router, b: &Router) -> DirectBlock {
        DirectBlock {
            routers: vec![
                (a.name().to_string(), b.wan_addr()),
                (b.name().to_string(), a.wan_addr()),
            ],
            table: format!("fogtest_block_{}", std::process::id()),
        }
    }

    pub fn on(&self) {
        for (namespace, from) in &self.routers {
            let script = format!(
                "table inet {t} {{\n chain block {{\n type filter hook prerouting priority -300;\n \
                 ip saddr {from} meta l4proto udp drop\n }}\n}}\n",
                t = self.table
            );
            let out = nft(namespace, &script).expect("nft runs");
            assert!(
                out.status.success(),
                "nft: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    pub fn off(&self) {
        for (namespace, _) in &self.routers {
            let _ = nft(namespace, &format!("delete table inet {}", self.table));
        }
    }
}

impl Drop for DirectBlock {
    fn drop(&mut self) {
        self.off();
    }
}

/// Pseudo-random test bytes (xorshift from `seed`), so that a lost, repeated or reordered
/// block changes the hash.
pub fn test_data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// SHA-256 of `data`, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
