//! `fog nat` behind every NAT behaviour of the test bed: a real `fog server` with an RFC 5780 STUN
//! server in a server namespace, and `fog nat` run in a host namespace behind each router.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use fog_natlab::process::{output_within, spawn_until_line, ChildGuard};
use fog_natlab::{Host, Lab, Link, NatBehaviour};

const FOG: &str = env!("CARGO_BIN_EXE_fog");
const STUN: &str = "203.0.113.9:3478";
const STUN_ALT: &str = "203.0.113.10:3479";

/// Starts `fog server` in `server`'s namespace and waits until it listens.
fn start_server(server: &Host) -> ChildGuard {
    spawn_until_line(
        server.command(FOG).args([
            "server",
            "--signal",
            "203.0.113.9:7600",
            "--stun",
            STUN,
            "--stun-alt",
            STUN_ALT,
        ]),
        "fog signal server on",
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .0
}

/// Runs `fog nat --json` in `host`'s namespace against our server, killed after 10 s.
fn fog_nat(host: &Host) -> serde_json::Value {
    fog_nat_with(host, STUN)
}

/// Runs `fog nat --stun STUN --json` in `host`'s namespace, killed after 10 s.
fn fog_nat_with(host: &Host, stun: &str) -> serde_json::Value {
    let out = output_within(
        host.command(FOG).args(["nat", "--stun", stun, "--json"]),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "fog nat failed in {}: {}",
        host.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

/// What `fog nat` must say behind each behaviour: nat_type, mapping, filtering, port allocation.
fn expected(nat: NatBehaviour) -> [&'static str; 4] {
    const EIM: &str = "endpoint-independent";
    const APD: &str = "address-and-port-dependent";
    match nat {
        NatBehaviour::Open => ["open", EIM, EIM, "preserving"],
        NatBehaviour::FullCone => ["full-cone", EIM, EIM, "preserving"],
        NatBehaviour::RestrictedCone => ["restricted-cone", EIM, "address-dependent", "preserving"],
        NatBehaviour::PortRestrictedCone => ["port-restricted-cone", EIM, APD, "preserving"],
        NatBehaviour::SymmetricSequential => ["symmetric", APD, APD, "sequential"],
        NatBehaviour::SymmetricRandom => ["symmetric", APD, APD, "random"],
        NatBehaviour::UdpBlocked => ["udp-blocked", "", "", ""],
    }
}

#[test]
fn fog_nat_names_every_behaviour_five_times_out_of_five() {
    let mut lab = Lab::new().expect("the NAT test bed needs root, ip and nft");
    let server = lab
        .server(&[
            Ipv4Addr::new(203, 0, 113, 9),
            Ipv4Addr::new(203, 0, 113, 10),
        ])
        .unwrap();
    let _fog_server = start_server(&server);
    let mut failures = Vec::new();
    for nat in NatBehaviour::ALL {
        let router = lab.router(nat, Link::default()).unwrap();
        let host = lab.host(&router, Link::default()).unwrap();
        let [nat_type, mapping, filtering, allocation] = expected(nat);
        for run in 1..=5 {
            let json = fog_nat(&host);
            let got = |field: &str| json[field].as_str().unwrap_or("").to_string();
            let right = got("nat_type") == nat_type
                && got("mapping") == mapping
                && got("filtering") == filtering
                && got("port_allocation") == allocation;
            if !right {
                failures.push(format!("{nat} run {run}: {json}"));
            }
            if nat == NatBehaviour::UdpBlocked {
                assert!(json["public"].is_null());
            } else {
                let public: std::net::SocketAddr = got("public").parse().expect("public ip:port");
                let expected_ip = match nat {
                    NatBehaviour::Open => host.addr(),
                    _ => router.wan_addr(),
                };
                assert_eq!(
                    public.ip(),
                    std::net::IpAddr::V4(expected_ip),
                    "{nat}: {json}"
                );
            }
            if nat == NatBehaviour::SymmetricSequential && right {
                assert_eq!(json["port_delta"], 1, "{json}");
            }
            let elapsed = json["elapsed_ms"].as_u64().unwrap();
            assert!(elapsed < 1500, "{nat} run {run} took {elapsed} ms: {json}");
        }
    }
    assert!(
        failures.is_empty(),
        "wrong verdicts:\n{}",
        failures.join("\n")
    );
}

/// Starts coturn (Debian's `turnserver`) as a plain RFC 5780 STUN server in `server`'s namespace.
fn start_coturn(server: &Host, primary: Ipv4Addr, alternate: Ipv4Addr) -> ChildGuard {
    let child = server
        .command("turnserver")
        .args([
            "-n",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--no-auth",
            "--log-file=stdout",
            "--listening-port=3478",
            "--alt-listening-port=3479",
        ])
        .args(["--listening-ip", &primary.to_string()])
        .args(["--listening-ip", &alternate.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("coturn's turnserver is installed (scripts/test.sh installs it)");
    ChildGuard(child)
}

#[test]
fn fog_nat_works_against_coturn_too() {
    let mut lab = Lab::new().expect("the NAT test bed needs root, ip and nft");
    let (primary, alternate) = (
        Ipv4Addr::new(203, 0, 113, 21),
        Ipv4Addr::new(203, 0, 113, 22),
    );
    let server = lab.server(&[primary, alternate]).unwrap();
    let _coturn = start_coturn(&server, primary, alternate);
    let stun = format!("{primary}:3478");
    let cases = [
        NatBehaviour::FullCone,
        NatBehaviour::PortRestrictedCone,
        NatBehaviour::SymmetricRandom,
    ];
    for nat in cases {
        let router = lab.router(nat, Link::default()).unwrap();
        let host = lab.host(&router, Link::default()).unwrap();
        let [nat_type, mapping, filtering, _] = expected(nat);
        // coturn takes a moment to listen: its first answer is awaited with a bound.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let json = loop {
            let json = fog_nat_with(&host, &stun);
            if json["nat_type"] != "udp-blocked" || std::time::Instant::now() > deadline {
                break json;
            }
        };
        assert_eq!(json["nat_type"], nat_type, "{nat} against coturn: {json}");
        assert_eq!(json["mapping"], mapping, "{nat} against coturn: {json}");
        assert_eq!(json["filtering"], filtering, "{nat} against coturn: {json}");
    }
}
