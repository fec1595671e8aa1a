//! `StrategyLayer`: the plan for a pair of NATs, from a table in plain code.

use std::net::IpAddr;
use std::task::{Context, Poll};

use fog_core::{
    Attempt, BoxError, ConnectError, Connection, NatProfile, NatType, PortAllocation, Strategy,
};
use tower::{Service, ServiceExt};
use tower_layer::Layer;

use crate::future::{take_inner, ResponseFuture};

/// A NAT as the strategy table sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatClass {
    /// No NAT.
    Open,
    /// Full cone.
    FullCone,
    /// Restricted cone (address-dependent filtering).
    RestrictedCone,
    /// Port-restricted cone.
    PortRestrictedCone,
    /// Symmetric with sequential ports.
    SymmetricSequential,
    /// Symmetric with random (or unknown) ports.
    SymmetricRandom,
    /// No UDP.
    UdpBlocked,
    /// Not probed, or the probe could not tell.
    Unknown,
}

impl NatClass {
    /// The class of a probed profile.
    pub fn of(profile: Option<&NatProfile>) -> NatClass {
        let Some(profile) = profile else {
            return NatClass::Unknown;
        };
        match profile.nat_type {
            Some(NatType::Open) => NatClass::Open,
            Some(NatType::FullCone) => NatClass::FullCone,
            Some(NatType::RestrictedCone) => NatClass::RestrictedCone,
            Some(NatType::PortRestrictedCone) => NatClass::PortRestrictedCone,
            Some(NatType::Symmetric) => match profile.port_allocation {
                Some(PortAllocation::Sequential) if profile.port_delta.is_some() => {
                    NatClass::SymmetricSequential
                }
                _ => NatClass::SymmetricRandom,
            },
            Some(NatType::UdpBlocked) => NatClass::UdpBlocked,
            None => NatClass::Unknown,
        }
    }
}

/// The plan for NATs `a` and `b` (the table is symmetric).
pub fn plan(a: NatClass, b: NatClass) -> Strategy {
    use NatClass::*;
    match (a, b) {
        (UdpBlocked, _) | (_, UdpBlocked) => Strategy::RelayOnly,
        (SymmetricRandom, SymmetricRandom)
        | (SymmetricRandom, SymmetricSequential)
        | (SymmetricSequential, SymmetricRandom) => Strategy::RelayOnly,
        (Open | FullCone, _) | (_, Open | FullCone) => Strategy::Direct,
        (SymmetricRandom, PortRestrictedCone) | (PortRestrictedCone, SymmetricRandom) => {
            Strategy::Spray
        }
        // The cone learns the symmetric side's address from its checks: the cone's own check to
        // the symmetric side's public address already opened its filter for that address.
        (SymmetricRandom, RestrictedCone) | (RestrictedCone, SymmetricRandom) => Strategy::Punch,
        (SymmetricSequential, _) | (_, SymmetricSequential) => Strategy::Predict,
        _ => Strategy::Punch,
    }
}

/// True when both sides have the same public IP (from server-reflexive candidates or the NAT
/// profiles): they share a NAT.
pub fn behind_the_same_nat(local: Option<IpAddr>, remote: Option<IpAddr>) -> bool {
    matches!((local, remote), (Some(a), Some(b)) if a == b)
}

/// Sets `attempt.strategy` from the two NAT profiles, and ends the attempt at once with
/// "no direct path" when none can exist and no relay path is known.
#[derive(Clone, Copy, Debug, Default)]
pub struct StrategyLayer;

impl StrategyLayer {
    /// The layer.
    pub fn new() -> Self {
        StrategyLayer
    }
}

impl<S> Layer<S> for StrategyLayer {
    type Service = StrategyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StrategyService { inner }
    }
}

/// The service of [`StrategyLayer`].
#[derive(Clone, Debug)]
pub struct StrategyService<S> {
    inner: S,
}

fn choose(attempt: &Attempt) -> Result<Strategy, ConnectError> {
    let remote = attempt.remote.as_ref().ok_or(ConnectError::MissingInput {
        layer: "StrategyLayer",
        needs: "the peer's NAT profile (SignalLayer)",
    })?;
    if behind_the_same_nat(attempt.local_public_ip(), attempt.remote_public_ip()) {
        // One NAT for both: the LAN between them needs no traversal at all.
        return Ok(Strategy::Punch);
    }
    let mine = NatClass::of(attempt.local_nat.as_ref());
    let theirs = NatClass::of(remote.nat.as_ref());
    let strategy = plan(mine, theirs);
    let relay_possible = !attempt.relay_paths.is_empty()
        || attempt
            .local_gathering
            .iter()
            .any(|g| g.what == crate::relay::RELAY_GATHERING)
        || remote
            .candidates
            .iter()
            .any(|c| c.kind == fog_core::CandidateKind::Relay);
    if strategy == Strategy::RelayOnly && !relay_possible {
        return Err(ConnectError::NoPath(format!(
            "no direct path can exist between a {mine:?} NAT and a {theirs:?} NAT, and no relay is known"
        )));
    }
    Ok(strategy)
}

impl<S> Service<Attempt> for StrategyService<S>
where
    S: Service<Attempt, Response = Connection> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    type Response = Connection;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut attempt: Attempt) -> Self::Future {
        let inner = take_inner(&mut self.inner);
        let chosen = choose(&attempt);
        ResponseFuture::new(async move {
            let strategy = chosen?;
            tracing::debug!(%strategy, "strategy");
            attempt.strategy = Some(strategy);
            inner.oneshot(attempt).await.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use NatClass::*;

    const ALL: [NatClass; 8] = [
        Open,
        FullCone,
        RestrictedCone,
        PortRestrictedCone,
        SymmetricSequential,
        SymmetricRandom,
        UdpBlocked,
        Unknown,
    ];

    /// The whole table, one row per class of the first NAT, columns in `ALL` order.
    const TABLE: [[Strategy; 8]; 8] = {
        use Strategy::*;
        [
            //  open    full    rest    port-r   seq      rand       blocked    unknown
            [
                Direct, Direct, Direct, Direct, Direct, Direct, RelayOnly, Direct,
            ],
            [
                Direct, Direct, Direct, Direct, Direct, Direct, RelayOnly, Direct,
            ],
            [
                Direct, Direct, Punch, Punch, Predict, Punch, RelayOnly, Punch,
            ],
            [
                Direct, Direct, Punch, Punch, Predict, Spray, RelayOnly, Punch,
            ],
            [
                Direct, Direct, Predict, Predict, Predict, RelayOnly, RelayOnly, Predict,
            ],
            [
                Direct, Direct, Punch, Spray, RelayOnly, RelayOnly, RelayOnly, Punch,
            ],
            [
                RelayOnly, RelayOnly, RelayOnly, RelayOnly, RelayOnly, RelayOnly, RelayOnly,
                RelayOnly,
            ],
            [
                Direct, Direct, Punch, Punch, Predict, Punch, RelayOnly, Punch,
            ],
        ]
    };

    #[test]
    fn every_cell_of_the_table() {
        for (i, a) in ALL.iter().enumerate() {
            for (j, b) in ALL.iter().enumerate() {
                assert_eq!(plan(*a, *b), TABLE[i][j], "{a:?} x {b:?}");
            }
        }
    }

    #[test]
    fn the_table_is_symmetric() {
        for a in ALL {
            for b in ALL {
                assert_eq!(plan(a, b), plan(b, a), "{a:?} x {b:?}");
            }
        }
    }

    #[test]
    fn a_shared_public_address_means_a_shared_nat() {
        let ip = |a: &str| Some(a.parse::<IpAddr>().unwrap());
        assert!(behind_the_same_nat(ip("203.0.113.1"), ip("203.0.113.1")));
        assert!(!behind_the_same_nat(ip("203.0.113.1"), ip("203.0.113.2")));
        assert!(!behind_the_same_nat(None, ip("203.0.113.2")));
    }

    #[test]
    fn profiles_map_to_classes() {
        let symmetric = |allocation, delta| NatProfile {
            nat_type: Some(NatType::Symmetric),
            port_allocation: allocation,
            port_delta: delta,
            ..NatProfile::default()
        };
        assert_eq!(
            NatClass::of(Some(&symmetric(Some(PortAllocation::Sequential), Some(1)))),
            SymmetricSequential
        );
        assert_eq!(
            NatClass::of(Some(&symmetric(Some(PortAllocation::Random), None))),
            SymmetricRandom
        );
        assert_eq!(NatClass::of(Some(&symmetric(None, None))), SymmetricRandom);
        assert_eq!(NatClass::of(None), Unknown);
        assert_eq!(NatClass::of(Some(&NatProfile::default())), Unknown);
    }
}
