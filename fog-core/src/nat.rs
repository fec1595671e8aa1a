//! What a NAT probe learns about the local network (RFC 4787 / RFC 5780 terms).

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// How the NAT maps an inside address and port to an outside one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// One mapping for every destination.
    EndpointIndependent,
    /// A new mapping per destination address.
    AddressDependent,
    /// A new mapping per destination address and port.
    AddressAndPortDependent,
}

/// Which outside sources may send to a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filtering {
    /// Anyone.
    EndpointIndependent,
    /// Addresses the inside host has sent to.
    AddressDependent,
    /// Address and port pairs the inside host has sent to.
    AddressAndPortDependent,
}

/// How the NAT picks outside ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortAllocation {
    /// The inside port is kept.
    Preserving,
    /// Each new mapping takes the next port, `port_delta` apart.
    Sequential,
    /// No pattern.
    Random,
}

/// The classic NAT type, from mapping and filtering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatType {
    /// No NAT and no filtering: the host's own address is public.
    Open,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    RestrictedCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestrictedCone,
    /// A mapping per destination.
    Symmetric,
    /// No UDP gets through.
    UdpBlocked,
}

impl NatType {
    /// The name used in JSON and on the command line.
    pub fn as_str(&self) -> &'static str {
        match self {
            NatType::Open => "open",
            NatType::FullCone => "full-cone",
            NatType::RestrictedCone => "restricted-cone",
            NatType::PortRestrictedCone => "port-restricted-cone",
            NatType::Symmetric => "symmetric",
            NatType::UdpBlocked => "udp-blocked",
        }
    }
}

impl fmt::Display for NatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the node knows about its NAT. Fields the probe could not determine are `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatProfile {
    /// The NAT type.
    pub nat_type: Option<NatType>,
    /// Mapping behaviour.
    pub mapping: Option<Mapping>,
    /// Filtering behaviour.
    pub filtering: Option<Filtering>,
    /// Port allocation.
    pub port_allocation: Option<PortAllocation>,
    /// Step between consecutive ports of a sequential NAT.
    pub port_delta: Option<i32>,
    /// The public address a STUN server saw.
    pub public: Option<SocketAddr>,
    /// Whether the NAT hairpins (a host reaching its own public address).
    pub hairpinning: Option<bool>,
}
