//! `GatherLayer`: adds the node's host candidates to the attempt.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use fog_core::{Attempt, BoxError, Candidate, Connection, Event, Gathering, Prober};
use tower::{Service, ServiceExt};
use tower_layer::Layer;
use tracing::Instrument;

use crate::future::{take_inner, ResponseFuture};

/// Host candidates for `port` on `addresses`: every address that a peer could send to, LAN
/// addresses first. Unspecified, multicast and IPv6 link-local addresses (which need a scope a
/// peer cannot know) are left out.
pub fn host_candidates(addresses: &[IpAddr], port: u16) -> Vec<Candidate> {
    let mut candidates: Vec<Candidate> = addresses
        .iter()
        .filter(|ip| !ip.is_unspecified() && !ip.is_multicast())
        .filter(|ip| match ip {
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            IpAddr::V4(v4) => !v4.is_broadcast(),
        })
        .map(|ip| Candidate::host(SocketAddr::new(*ip, port)))
        .collect();
    candidates.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.addr.cmp(&b.addr)));
    candidates.dedup_by_key(|c| c.addr);
    candidates
}

/// The addresses of the machine's interfaces that match the family of `bound`.
pub fn interface_addresses(bound: SocketAddr) -> Vec<IpAddr> {
    if !bound.ip().is_unspecified() {
        return vec![bound.ip()];
    }
    if_addrs::get_if_addrs()
        .map(|ifaces| ifaces.into_iter().map(|i| i.ip()))
        .into_iter()
        .flatten()
        .filter(|ip| ip.is_ipv4() == bound.is_ipv4())
        .collect()
}

/// Adds host candidates of every usable interface, for the socket bound at `local`, and with
/// [`with_stun`](Self::with_stun) the socket's server-reflexive address.
#[derive(Clone)]
pub struct GatherLayer {
    local: SocketAddr,
    reflexive: Option<(Arc<dyn Prober>, Vec<SocketAddr>)>,
}

impl GatherLayer {
    /// Gathers for the socket bound at `local` (the address the connection will use).
    pub fn new(local: SocketAddr) -> Self {
        GatherLayer {
            local,
            reflexive: None,
        }
    }

    /// Also asks the first answering of `servers`, through `prober` (the socket the connection
    /// will use), for the socket's public address: the server-reflexive candidate.
    pub fn with_stun(mut self, prober: Arc<dyn Prober>, servers: Vec<SocketAddr>) -> Self {
        if !servers.is_empty() {
            self.reflexive = Some((prober, servers));
        }
        self
    }
}

impl<S> Layer<S> for GatherLayer {
    type Service = Gather<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Gather {
            inner,
            local: self.local,
            reflexive: self.reflexive.clone(),
        }
    }
}

/// The service of [`GatherLayer`].
#[derive(Clone)]
pub struct Gather<S> {
    inner: S,
    local: SocketAddr,
    reflexive: Option<(Arc<dyn Prober>, Vec<SocketAddr>)>,
}

impl<S> Service<Attempt> for Gather<S>
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
        let local = self.local;
        let reflexive = self.reflexive.clone();
        ResponseFuture::new(async move {
            let span = tracing::debug_span!("gather", local = %local);
            let found =
                span.in_scope(|| host_candidates(&interface_addresses(local), local.port()));
            for candidate in found {
                if !attempt
                    .local_candidates
                    .iter()
                    .any(|c| c.addr == candidate.addr)
                {
                    attempt.emit(Event::CandidateGathered { candidate });
                    attempt.local_candidates.push(candidate);
                }
            }
            // A sequential symmetric NAT maps every destination to a new port: the address the
            // STUN server sees is of no use to a peer (its IP is in the NAT profile), and the
            // lookup would only move the port counter that port prediction reads next.
            let sequential = crate::strategy::NatClass::of(attempt.local_nat.as_ref())
                == crate::strategy::NatClass::SymmetricSequential;
            if let Some((prober, servers)) = reflexive.filter(|_| !sequential) {
                // The STUN round trip runs in the background; the signal layer trickles its
                // result to the peer.
                let events = attempt.events.clone();
                let known: Vec<SocketAddr> =
                    attempt.local_candidates.iter().map(|c| c.addr).collect();
                let lookup = async move {
                    for server in servers.iter().filter(|s| s.is_ipv4() == local.is_ipv4()) {
                        if let Some(public) = prober.server_reflexive(*server).await {
                            if known.contains(&public) {
                                return Vec::new();
                            }
                            let candidate = Candidate::srflx(public);
                            events.emit(Event::CandidateGathered { candidate });
                            return vec![candidate];
                        }
                    }
                    Vec::new()
                };
                attempt
                    .local_gathering
                    .push(Gathering::spawn("srflx", lookup.instrument(span)));
            }
            inner.oneshot(attempt).await.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fog_core::CandidateKind;

    #[test]
    fn unusable_addresses_are_left_out_and_lan_comes_first() {
        let addresses: Vec<IpAddr> = [
            "0.0.0.0",
            "127.0.0.1",
            "203.0.113.5",
            "10.1.0.2",
            "224.0.0.1",
            "fe80::1",
            "2001:db8::1",
            "10.1.0.2",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let found = host_candidates(&addresses, 7000);
        let addrs: Vec<String> = found.iter().map(|c| c.addr.to_string()).collect();
        assert_eq!(
            addrs,
            [
                "10.1.0.2:7000",
                "203.0.113.5:7000",
                "[2001:db8::1]:7000",
                "127.0.0.1:7000"
            ]
        );
        assert!(found.iter().all(|c| c.kind == CandidateKind::Host));
    }

    #[test]
    fn a_socket_bound_to_one_address_gathers_only_it() {
        let bound: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(interface_addresses(bound), vec![bound.ip()]);
    }
}
