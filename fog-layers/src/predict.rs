//! `PortPredictLayer`: predicted candidates for a sequential symmetric NAT.
//!
//! Such a NAT gives each new flow the next port, `port_delta` apart. Right before signalling,
//! the layer opens one throwaway flow (a STUN binding from a fresh socket) to see where the
//! counter stands, and offers the ports the connection's next flows will get. The peer checks
//! those ports, and the checks meet the node's own checks leaving from them.

use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use fog_core::{
    Attempt, BoxError, Candidate, CandidateKind, Connection, Event, Gathering, NatProfile,
    PortAllocation,
};
use tower::{Service, ServiceExt};
use tower_layer::Layer;

use crate::future::{take_inner, ResponseFuture};
use crate::nat_probe::stun_client::{Retransmit, StunSocket};

/// How many ports are predicted: the connection's first flows, with room for a few others that
/// slip in between.
pub const PREDICTED_PORTS: u16 = 8;

/// Longest wait for the lookups before this layer (server-reflexive, relay allocation) to
/// open their flows before the port counter is read.
pub const EARLIER_FLOWS_WAIT: Duration = Duration::from_secs(2);

/// The predicted candidates after the NAT handed out `observed` (the public address of the
/// newest flow), for a NAT that steps by `delta`: the next [`PREDICTED_PORTS`] ports, in order,
/// the earliest ranked highest.
pub fn predict(observed: SocketAddr, delta: i32) -> Vec<Candidate> {
    (1..=i32::from(PREDICTED_PORTS))
        .filter_map(|k| {
            let port = i32::from(observed.port()) + k * delta;
            let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
            Some(Candidate {
                addr: SocketAddr::new(observed.ip(), port),
                kind: CandidateKind::Predicted,
                priority: (40 << 8) + u32::from(PREDICTED_PORTS) - k as u32,
            })
        })
        .collect()
}

/// The step of a sequential NAT, when `profile` is one.
fn sequential_delta(profile: Option<&NatProfile>) -> Option<i32> {
    let profile = profile?;
    match profile.port_allocation {
        Some(PortAllocation::Sequential) => profile.port_delta.filter(|d| *d != 0),
        _ => None,
    }
}

/// Adds predicted candidates when the local NAT (from `NatProbeLayer`) is sequential symmetric;
/// does nothing otherwise. Put it after every layer that opens flows of its own through the
/// NAT (`GatherLayer`'s server-reflexive lookup, `RelayFallbackLayer`'s allocation): it reads
/// the NAT's port counter once their lookups are done.
#[derive(Clone, Debug)]
pub struct PortPredictLayer {
    stun: Vec<SocketAddr>,
}

impl PortPredictLayer {
    /// Observes the NAT's port counter through `stun` (the node's STUN servers).
    pub fn new(stun: Vec<SocketAddr>) -> Self {
        PortPredictLayer { stun }
    }
}

impl<S> Layer<S> for PortPredictLayer {
    type Service = PortPredict<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PortPredict {
            inner,
            stun: self.stun.clone(),
        }
    }
}

/// The service of [`PortPredictLayer`].
#[derive(Clone, Debug)]
pub struct PortPredict<S> {
    inner: S,
    stun: Vec<SocketAddr>,
}

/// The public address of a brand-new flow: where the NAT's counter stands now.
async fn observe(stun: &[SocketAddr]) -> Option<SocketAddr> {
    let server = *stun.first()?;
    let any: SocketAddr = "0.0.0.0:0".parse().expect("valid");
    let socket = StunSocket::bind(any).await.ok()?;
    let wait = Retransmit {
        rto: Duration::from_millis(50),
        deadline: Duration::from_millis(600),
    };
    socket.binding(server, None, wait).await.map(|a| a.mapped)
}

impl<S> Service<Attempt> for PortPredict<S>
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
        let stun = self.stun.clone();
        ResponseFuture::new(async move {
            if let Some(delta) = sequential_delta(attempt.local_nat.as_ref()) {
                use tracing::Instrument;
                // After the lookups before it: the server-reflexive lookup and the relay
                // allocation each open a mapping of their own, and the counter must be read
                // after them, or every prediction is off by the flows that came between. A
                // lookup that takes too long (a relay that does not answer) is not waited for.
                let earlier = attempt.local_gathering.clone();
                let events = attempt.events.clone();
                let lookup = async move {
                    let _ = tokio::time::timeout(
                        EARLIER_FLOWS_WAIT,
                        fog_core::trickle::gathered(&earlier),
                    )
                    .await;
                    let Some(observed) = observe(&stun).await else {
                        return Vec::new();
                    };
                    let predicted = predict(observed, delta);
                    for candidate in &predicted {
                        events.emit(Event::CandidateGathered {
                            candidate: *candidate,
                        });
                    }
                    predicted
                };
                attempt.local_gathering.push(Gathering::spawn(
                    "predicted",
                    lookup.instrument(tracing::debug_span!("port_predict", delta)),
                ));
            }
            inner.oneshot(attempt).await.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_ports_in_order_best_first() {
        let predicted = predict("203.0.113.1:20005".parse().unwrap(), 1);
        let ports: Vec<u16> = predicted.iter().map(|c| c.addr.port()).collect();
        assert_eq!(ports, (20006..20014).collect::<Vec<_>>());
        assert!(predicted.windows(2).all(|w| w[0].priority > w[1].priority));
        assert!(predicted.iter().all(|c| c.kind == CandidateKind::Predicted));
    }

    #[test]
    fn steps_of_any_size_and_sign_stay_in_port_range() {
        let ports: Vec<u16> = predict("203.0.113.1:8270".parse().unwrap(), 256)
            .iter()
            .map(|c| c.addr.port())
            .collect();
        assert_eq!(ports[0], 8526);
        assert_eq!(ports[7], 8270 + 8 * 256);
        let near_top = predict("203.0.113.1:65530".parse().unwrap(), 2);
        assert_eq!(near_top.len(), 2);
        let down = predict("203.0.113.1:10".parse().unwrap(), -3);
        assert_eq!(
            down.iter().map(|c| c.addr.port()).collect::<Vec<_>>(),
            vec![7, 4, 1]
        );
    }

    #[test]
    fn only_sequential_nats_predict() {
        let mut profile = NatProfile {
            port_allocation: Some(PortAllocation::Sequential),
            port_delta: Some(1),
            ..NatProfile::default()
        };
        assert_eq!(sequential_delta(Some(&profile)), Some(1));
        profile.port_allocation = Some(PortAllocation::Random);
        assert_eq!(sequential_delta(Some(&profile)), None);
        assert_eq!(sequential_delta(None), None);
    }
}
