//! `NatProbeLayer`: puts the node's NAT profile on every attempt, from a cache that probes once
//! and refreshes in the background.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fog_core::{Attempt, BoxError, Connection, Event, EventBus};
use tower::{Service, ServiceExt};
use tower_layer::Layer;

use super::probe::{probe_nat, NatReport, ProbeConfig, ProbeError};
use crate::future::{take_inner, ResponseFuture};

struct CacheInner {
    config: ProbeConfig,
    max_age: Duration,
    events: EventBus,
    current: Mutex<Option<(Instant, NatReport)>>,
    /// One probe at a time; callers that find a probe running wait for its verdict.
    probing: tokio::sync::Mutex<()>,
}

/// The node's NAT verdict: probed on first use, refreshed when older than `max_age` or when
/// [`refresh`](Self::refresh) is called, with an event when it changes. Cheap to clone.
#[derive(Clone)]
pub struct NatCache {
    inner: Arc<CacheInner>,
}

impl NatCache {
    /// A cache probing with `config`, whose verdict is trusted for `max_age`.
    pub fn new(config: ProbeConfig, max_age: Duration, events: EventBus) -> Self {
        NatCache {
            inner: Arc::new(CacheInner {
                config,
                max_age,
                events,
                current: Mutex::new(None),
                probing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The STUN servers it probes with.
    pub fn servers(&self) -> &[std::net::SocketAddr] {
        &self.inner.config.servers
    }

    /// The last verdict, however old.
    pub fn current(&self) -> Option<NatReport> {
        self.inner
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, report)| report.clone())
    }

    fn fresh(&self) -> Option<NatReport> {
        let current = self.inner.current.lock().unwrap_or_else(|e| e.into_inner());
        match current.as_ref() {
            Some((at, report)) if at.elapsed() < self.inner.max_age => Some(report.clone()),
            _ => None,
        }
    }

    /// A verdict no older than `max_age`, probing when there is none.
    pub async fn get(&self) -> Result<NatReport, ProbeError> {
        if let Some(report) = self.fresh() {
            return Ok(report);
        }
        let _probing = self.inner.probing.lock().await;
        if let Some(report) = self.fresh() {
            return Ok(report);
        }
        self.probe_now().await
    }

    /// Probes now, whatever the cache holds.
    pub async fn refresh(&self) -> Result<NatReport, ProbeError> {
        let _probing = self.inner.probing.lock().await;
        self.probe_now().await
    }

    async fn probe_now(&self) -> Result<NatReport, ProbeError> {
        let report = probe_nat(&self.inner.config).await?;
        let previous = self
            .inner
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace((Instant::now(), report.clone()));
        if previous.map(|(_, p)| p.profile) != Some(report.profile.clone()) {
            self.inner.events.emit(Event::NatChanged {
                profile: report.profile.clone(),
            });
        }
        Ok(report)
    }

    /// Keeps the verdict fresh: re-probes every `max_age`, and at once when the host's interface
    /// addresses change (checked every `watch` interval). Stops when the returned task is aborted.
    pub fn spawn_refresher(&self, watch: Duration) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            let addresses = || {
                let mut ips: Vec<_> = if_addrs::get_if_addrs()
                    .map(|i| i.into_iter().map(|i| i.ip()).collect())
                    .unwrap_or_default();
                ips.sort();
                ips
            };
            let mut known = addresses();
            let mut last_probe = Instant::now();
            // A connect may have probed already: probing again now would open flows in the
            // middle of its punching and spoil a sequential NAT's port prediction.
            if let Err(e) = cache.get().await {
                tracing::warn!(error = %e, "NAT probe failed");
            }
            loop {
                tokio::time::sleep(watch).await;
                let now = addresses();
                if now != known || last_probe.elapsed() >= cache.inner.max_age {
                    known = now;
                    last_probe = Instant::now();
                    if let Err(e) = cache.refresh().await {
                        tracing::warn!(error = %e, "NAT probe failed");
                    }
                }
            }
        })
    }
}

/// Puts the node's NAT profile on the attempt (`attempt.local_nat`), so it travels in the offer
/// and later layers can plan by it.
#[derive(Clone)]
pub struct NatProbeLayer {
    cache: NatCache,
}

impl NatProbeLayer {
    /// A layer reading `cache`.
    pub fn new(cache: NatCache) -> Self {
        NatProbeLayer { cache }
    }
}

impl<S> Layer<S> for NatProbeLayer {
    type Service = NatProbe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        NatProbe {
            inner,
            cache: self.cache.clone(),
        }
    }
}

/// The service of [`NatProbeLayer`].
#[derive(Clone)]
pub struct NatProbe<S> {
    inner: S,
    cache: NatCache,
}

impl<S> Service<Attempt> for NatProbe<S>
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
        let cache = self.cache.clone();
        ResponseFuture::new(async move {
            use tracing::Instrument;
            // Without a verdict the attempt goes on: the NAT type guides, it does not gate.
            match cache
                .get()
                .instrument(tracing::debug_span!("nat_probe"))
                .await
            {
                Ok(report) => attempt.local_nat = Some(report.profile),
                Err(e) => tracing::debug!(error = %e, "no NAT profile"),
            }
            inner.oneshot(attempt).await.map_err(Into::into)
        })
    }
}
