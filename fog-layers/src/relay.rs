//! `RelayFallbackLayer`: a relay path beside the direct ones, so that every pair of peers
//! connects, and the first bytes need not wait for punching.
//!
//! The layer asks the signal server for relay credentials for this peer (and uses any TURN
//! server configured with long-term credentials, such as a coturn), allocates on the relays in
//! the background (on the node's own socket) and keeps the first allocation that
//! succeeds: the relay that answers first is the nearest. Its address goes to the peer as a
//! `relay` candidate, trickled like the others. The punch layer then checks the relay pairs
//! together with the direct ones: whichever answers first carries the connection, and a direct
//! pair found later takes it over (relay first, then upgrade). Put it before `SignalLayer`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use fog_core::signal::RelayGrant;
use fog_core::{
    Attempt, BoxError, Candidate, Connection, Event, EventBus, Gathering, NatType, PeerRef, Prober,
    RelaySlot, Signaller, TurnTransport, TurnUrl,
};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tower::{Service, ServiceExt};
use tower_layer::Layer;

use crate::future::{take_inner, ResponseFuture};

/// What the background lookup of relay candidates is called in `Attempt::local_gathering`.
pub const RELAY_GATHERING: &str = "relay";

/// How often a connection's allocations are looked at for renewal.
const RENEWAL_CHECK: std::time::Duration = std::time::Duration::from_secs(1);
/// Least time between two renewals of a connection's allocations (one that failed, because
/// the relay is still down or our link is, is tried again after it).
const RENEWAL_GAP: std::time::Duration = std::time::Duration::from_secs(3);

/// Allocates relay paths through `prober`, with credentials from `signaller`.
#[derive(Clone)]
pub struct RelayFallbackLayer {
    prober: Arc<dyn Prober>,
    signaller: Arc<dyn Signaller>,
    servers: Vec<RelayGrant>,
}

impl RelayFallbackLayer {
    /// A layer that allocates from `prober`'s socket with credentials the signal server issues.
    pub fn new(prober: Arc<dyn Prober>, signaller: Arc<dyn Signaller>) -> Self {
        RelayFallbackLayer {
            prober,
            signaller,
            servers: Vec::new(),
        }
    }

    /// Also uses these TURN servers (a coturn with long-term credentials, for example).
    pub fn with_servers(mut self, servers: Vec<RelayGrant>) -> Self {
        self.servers = servers;
        self
    }
}

impl<S> Layer<S> for RelayFallbackLayer {
    type Service = RelayFallback<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RelayFallback {
            inner,
            prober: self.prober.clone(),
            signaller: self.signaller.clone(),
            servers: self.servers.clone(),
        }
    }
}

/// The service of [`RelayFallbackLayer`].
#[derive(Clone)]
pub struct RelayFallback<S> {
    inner: S,
    prober: Arc<dyn Prober>,
    signaller: Arc<dyn Signaller>,
    servers: Vec<RelayGrant>,
}

/// Resolves a relay URL of `transport` to an address of the socket's family; `None` for other
/// transports and names that do not resolve.
async fn relay_addr(url: &str, transport: TurnTransport, local: SocketAddr) -> Option<SocketAddr> {
    let url: TurnUrl = url.parse().ok()?;
    if url.transport != transport {
        return None;
    }
    let found = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .ok()?
        .find(|a| a.is_ipv4() == local.is_ipv4());
    found
}

/// The configured relays' grants and the signal server's fresh ones for reaching `peer`.
async fn grants(
    signaller: &dyn Signaller,
    peer: PeerRef,
    configured: Vec<RelayGrant>,
) -> Vec<RelayGrant> {
    let mut grants = configured;
    match signaller.relay_credentials(peer).await {
        Ok(granted) => grants.extend(granted),
        Err(e) => tracing::debug!(error = %e, "no relay credentials from the signal server"),
    }
    grants
}

/// Gets credentials and allocates on every relay at once; the first allocation wins and the
/// others are dropped (which ends them).
async fn allocate_nearest(
    prober: Arc<dyn Prober>,
    signaller: Arc<dyn Signaller>,
    peer: PeerRef,
    configured: Vec<RelayGrant>,
    transport: TurnTransport,
    slot: RelaySlot,
    events: EventBus,
) -> Vec<Candidate> {
    let grants = grants(&*signaller, peer, configured).await;
    let local = prober.local_addr();
    let mut allocations = FuturesUnordered::new();
    for grant in grants {
        let prober = prober.clone();
        allocations.push(async move {
            let server = relay_addr(&grant.url, transport, local)
                .await
                .ok_or_else(|| {
                    format!("{} is not a {transport:?} relay we can reach", grant.url)
                })?;
            prober
                .allocate_relay(server, transport, grant.username, grant.password)
                .await
        });
    }
    while let Some(result) = allocations.next().await {
        match result {
            Ok(relay) => {
                let allocated = relay.relayed_addr();
                events.emit(Event::RelayAllocated {
                    relay: relay.server(),
                    allocated,
                });
                let candidate = Candidate::relay(allocated);
                events.emit(Event::CandidateGathered { candidate });
                slot.push(relay);
                return vec![candidate];
            }
            Err(e) => tracing::debug!(error = %e, "relay allocation failed"),
        }
    }
    Vec::new()
}

/// Everything the keeper of a connection's allocations needs.
struct Keeper {
    prober: Arc<dyn Prober>,
    signaller: Arc<dyn Signaller>,
    configured: Vec<RelayGrant>,
    transport: TurnTransport,
    slot: RelaySlot,
    events: EventBus,
    session: fog_core::SessionKeys,
    lifeline: fog_core::LifelineWatch,
}

impl Keeper {
    /// Keeps the connection's allocations for as long as it lives: one that ends (the relay's
    /// maximum lifetime, credentials that expire) or is lost (the relay restarted) is made
    /// again with fresh credentials, and the peer gets the new relayed address.
    async fn run(self, peer: fog_core::PeerId) {
        let mut tick = tokio::time::interval(RENEWAL_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<tokio::time::Instant> = None;
        while self.lifeline.alive() {
            tick.tick().await;
            let stale: Vec<SocketAddr> = self
                .slot
                .all()
                .iter()
                .filter(|r| r.needs_renewal())
                .map(|r| r.server())
                .collect();
            if stale.is_empty() || last.is_some_and(|at| at.elapsed() < RENEWAL_GAP) {
                continue;
            }
            last = Some(tokio::time::Instant::now());
            let renewed = self.renew(peer, &stale).await;
            if renewed == 0 {
                continue;
            }
            let relayed: Vec<Candidate> = self
                .slot
                .all()
                .iter()
                .map(|r| Candidate::relay(r.relayed_addr()))
                .collect();
            if let Err(e) = self
                .signaller
                .update_path(peer, self.session, relayed)
                .await
            {
                tracing::debug!(%peer, error = %e, "relayed address not sent to the peer");
            }
        }
    }

    /// Allocates again on the relays in `stale`; how many it made.
    async fn renew(&self, peer: fog_core::PeerId, stale: &[SocketAddr]) -> usize {
        let grants = grants(&*self.signaller, PeerRef::Id(peer), self.configured.clone()).await;
        let local = self.prober.local_addr();
        let mut made = 0;
        for grant in grants {
            let Some(server) = relay_addr(&grant.url, self.transport, local).await else {
                continue;
            };
            if !stale.contains(&server) {
                continue;
            }
            match self
                .prober
                .clone()
                .allocate_relay(server, self.transport, grant.username, grant.password)
                .await
            {
                Ok(relay) => {
                    let allocated = relay.relayed_addr();
                    tracing::debug!(%server, %allocated, "relay allocation made again");
                    self.events.emit(Event::RelayAllocated {
                        relay: server,
                        allocated,
                    });
                    self.slot.replace(relay);
                    made += 1;
                }
                Err(e) => tracing::debug!(%server, error = %e, "relay allocation not made again"),
            }
        }
        made
    }
}

impl<S> Service<Attempt> for RelayFallback<S>
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
        // Where UDP is blocked, the relay is reached over TCP; everyone else uses UDP.
        let transport = match attempt.local_nat.as_ref().and_then(|n| n.nat_type) {
            Some(NatType::UdpBlocked) => TurnTransport::Tcp,
            _ => TurnTransport::Udp,
        };
        let lookup = allocate_nearest(
            self.prober.clone(),
            self.signaller.clone(),
            attempt.target.clone(),
            self.servers.clone(),
            transport,
            attempt.relays.clone(),
            attempt.events.clone(),
        );
        let keeper = Keeper {
            prober: self.prober.clone(),
            signaller: self.signaller.clone(),
            configured: self.servers.clone(),
            transport,
            slot: attempt.relays.clone(),
            events: attempt.events.clone(),
            session: attempt.session,
            lifeline: attempt.lifeline.watch(),
        };
        ResponseFuture::new(async move {
            use tracing::Instrument;
            let span = tracing::debug_span!("relay", target = %attempt.target);
            attempt.local_gathering.push(Gathering::spawn(
                RELAY_GATHERING,
                lookup.instrument(span.clone()),
            ));
            let connection = inner.oneshot(attempt).await.map_err(Into::into)?;
            tokio::spawn(keeper.run(connection.peer_id()).instrument(span));
            Ok(connection)
        })
    }
}
