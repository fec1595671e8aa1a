//! NAT behaviours and the nftables rules that give a router each of them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// How a [`Router`](crate::Router) treats UDP between its LAN and the WAN.
///
/// The names follow RFC 3489's classic terms; the RFC 4787 / RFC 5780 terms (mapping and
/// filtering) are given per variant. The string forms (used by [`FromStr`] and
/// [`Display`](fmt::Display)) are `open`, `full-cone`, `restricted-cone`,
/// `port-restricted-cone`, `symmetric-sequential`, `symmetric-random` and `udp-blocked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NatBehaviour {
    /// No NAT at all: hosts behind the router have public addresses (the router is a transparent
    /// bridge, like a modem in bridge mode), so a STUN server sees a host's own address and port.
    Open,
    /// Endpoint-independent mapping, endpoint-independent filtering, port preserved.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering, port preserved.
    RestrictedCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering, port preserved
    /// (Linux conntrack's own behaviour).
    PortRestrictedCone,
    /// Address-and-port-dependent mapping: every new UDP flow takes the next external port
    /// (20000, 20001, … wrapping after 1000 flows), address-and-port-dependent filtering.
    SymmetricSequential,
    /// Address-and-port-dependent mapping with a random external port per flow,
    /// address-and-port-dependent filtering.
    SymmetricRandom,
    /// No UDP leaves the LAN at all; TCP is masqueraded as usual.
    UdpBlocked,
}

impl NatBehaviour {
    /// Every behaviour, in declaration order.
    pub const ALL: [NatBehaviour; 7] = [
        NatBehaviour::Open,
        NatBehaviour::FullCone,
        NatBehaviour::RestrictedCone,
        NatBehaviour::PortRestrictedCone,
        NatBehaviour::SymmetricSequential,
        NatBehaviour::SymmetricRandom,
        NatBehaviour::UdpBlocked,
    ];

    /// The name used by [`FromStr`] and [`Display`](fmt::Display), e.g. `"full-cone"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            NatBehaviour::Open => "open",
            NatBehaviour::FullCone => "full-cone",
            NatBehaviour::RestrictedCone => "restricted-cone",
            NatBehaviour::PortRestrictedCone => "port-restricted-cone",
            NatBehaviour::SymmetricSequential => "symmetric-sequential",
            NatBehaviour::SymmetricRandom => "symmetric-random",
            NatBehaviour::UdpBlocked => "udp-blocked",
        }
    }

    /// `true` for every behaviour except [`NatBehaviour::Open`].
    pub const fn translates(self) -> bool {
        !matches!(self, NatBehaviour::Open)
    }
}

impl fmt::Display for NatBehaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`NatBehaviour`] from an unknown name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown NAT behaviour {0:?} (expected one of: open, full-cone, restricted-cone, port-restricted-cone, symmetric-sequential, symmetric-random, udp-blocked)")]
pub struct ParseNatBehaviourError(pub String);

impl FromStr for NatBehaviour {
    type Err = ParseNatBehaviourError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NatBehaviour::ALL
            .into_iter()
            .find(|nat| nat.as_str() == s)
            .ok_or_else(|| ParseNatBehaviourError(s.to_string()))
    }
}

/// The WAN interface of every router, inside the router's namespace.
pub(crate) const WAN_IF: &str = "w0";

/// First external port of the symmetric-sequential NAT.
pub(crate) const SEQUENTIAL_FIRST_PORT: u16 = 20000;
/// How many ports the symmetric-sequential NAT steps through before it wraps.
pub(crate) const SEQUENTIAL_PORTS: u16 = 1000;

/// The nftables ruleset (for `nft -f -`) of a NAT router, or `None` for [`NatBehaviour::Open`].
///
/// `wan` is the router's WAN address and `first_host` the LAN address of the first host behind
/// it (the full-cone and restricted-cone rules forward inbound UDP there).
pub(crate) fn ruleset(nat: NatBehaviour, wan: Ipv4Addr, first_host: Ipv4Addr) -> Option<String> {
    // nft's parser wants one statement per line in these rules.
    let w = WAN_IF;
    // Home routers drop unsolicited UDP to themselves; without this Linux answers ICMP
    // port-unreachable, and a peer packet that arrives before our first outbound one could create
    // a conntrack entry that later forces a different port.
    let quiet = format!(
        "table ip quiet {{\n chain in {{\n  type filter hook input priority 0;\n  iifname \"{w}\" meta l4proto udp drop\n }}\n}}\n"
    );
    let nat_table = match nat {
        NatBehaviour::Open => return None,
        NatBehaviour::FullCone => format!(
            "table ip nat {{\n\
             \x20chain pre {{\n\
             \x20 type nat hook prerouting priority -100;\n\
             \x20 iifname \"{w}\" udp dport 1024-65535 dnat to {first_host}\n\
             \x20}}\n\
             \x20chain post {{\n\
             \x20 type nat hook postrouting priority 100;\n\
             \x20 oifname \"{w}\" masquerade persistent\n\
             \x20}}\n\
             }}\n"
        ),
        NatBehaviour::RestrictedCone => format!(
            "table ip nat {{\n\
             \x20set peers {{\n\
             \x20 type ipv4_addr . inet_service;\n\
             \x20 flags dynamic,timeout;\n\
             \x20 timeout 120s;\n\
             \x20}}\n\
             \x20chain outbound {{\n\
             \x20 type filter hook forward priority 0;\n\
             \x20 oifname \"{w}\" meta l4proto udp update @peers {{ ip daddr . udp sport }}\n\
             \x20}}\n\
             \x20chain pre {{\n\
             \x20 type nat hook prerouting priority -100;\n\
             \x20 iifname \"{w}\" meta l4proto udp ip saddr . udp dport @peers dnat to {first_host}\n\
             \x20}}\n\
             \x20chain post {{\n\
             \x20 type nat hook postrouting priority 100;\n\
             \x20 oifname \"{w}\" masquerade persistent\n\
             \x20}}\n\
             }}\n"
        ),
        NatBehaviour::PortRestrictedCone => format!(
            "table ip nat {{\n\
             \x20chain post {{\n\
             \x20 type nat hook postrouting priority 100;\n\
             \x20 oifname \"{w}\" masquerade\n\
             \x20}}\n\
             }}\n"
        ),
        NatBehaviour::SymmetricSequential => {
            // `numgen` alone writes the port in host byte order (offset 20000 comes out as
            // 8270, stepping by 256); a map from the counter to ports gives a step of 1.
            let map = (0..SEQUENTIAL_PORTS)
                .map(|i| format!("{i} : {}", SEQUENTIAL_FIRST_PORT + i))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "table ip nat {{\n\
                 \x20chain post {{\n\
                 \x20 type nat hook postrouting priority 100;\n\
                 \x20 oifname \"{w}\" ip protocol udp snat to {wan} : numgen inc mod {SEQUENTIAL_PORTS} map {{ {map} }}\n\
                 \x20 oifname \"{w}\" masquerade\n\
                 \x20}}\n\
                 }}\n"
            )
        }
        NatBehaviour::SymmetricRandom => format!(
            "table ip nat {{\n\
             \x20chain post {{\n\
             \x20 type nat hook postrouting priority 100;\n\
             \x20 oifname \"{w}\" masquerade fully-random\n\
             \x20}}\n\
             }}\n"
        ),
        NatBehaviour::UdpBlocked => format!(
            "table ip nat {{\n\
             \x20chain outbound {{\n\
             \x20 type filter hook forward priority 0;\n\
             \x20 oifname \"{w}\" meta l4proto udp drop\n\
             \x20}}\n\
             \x20chain post {{\n\
             \x20 type nat hook postrouting priority 100;\n\
             \x20 oifname \"{w}\" masquerade\n\
             \x20}}\n\
             }}\n"
        ),
    };
    Some(quiet + &nat_table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for nat in NatBehaviour::ALL {
            assert_eq!(nat.to_string().parse::<NatBehaviour>(), Ok(nat));
        }
        assert_eq!(
            "symmetric-sequential".parse::<NatBehaviour>(),
            Ok(NatBehaviour::SymmetricSequential)
        );
        let err = "cone".parse::<NatBehaviour>().unwrap_err();
        assert!(err.to_string().contains("\"cone\""), "{err}");
    }

    #[test]
    fn every_nat_has_quiet_table() {
        let wan = Ipv4Addr::new(203, 0, 113, 100);
        let host = Ipv4Addr::new(10, 1, 0, 2);
        assert!(ruleset(NatBehaviour::Open, wan, host).is_none());
        for nat in NatBehaviour::ALL.into_iter().filter(|n| n.translates()) {
            let rules = ruleset(nat, wan, host).unwrap();
            assert!(rules.contains("table ip quiet"), "{nat}: {rules}");
            assert!(rules.contains("table ip nat"), "{nat}: {rules}");
        }
        let seq = ruleset(NatBehaviour::SymmetricSequential, wan, host).unwrap();
        assert!(seq.contains("0 : 20000, 1 : 20001"));
        assert!(seq.contains("999 : 20999 }"));
    }
}
