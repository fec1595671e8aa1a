//! NAT type detection: the probe (RFC 5780 tests against STUN servers), the classification
//! (plain code), and `NatProbeLayer`, which puts the cached verdict on every attempt.

pub mod classify;
pub mod layer;
pub mod probe;
pub mod stun_client;

pub use classify::{classify, ProbeResults};
pub use layer::{NatCache, NatProbe, NatProbeLayer};
pub use probe::{probe_nat, NatReport, ProbeConfig, ProbeError};
