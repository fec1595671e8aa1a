//! The fog signal server.
//!
//! Nodes connect over WebSocket (default `0.0.0.0:7600`, path `/ws`) and exchange JSON messages
//! ([`fog_core::signal`]). A node registers by signing the server's random challenge with its
//! key, so no one can register or receive as someone else's key; a name is bound to the first key
//! that registers it. The server resolves names, forwards offers and answers between registered
//! peers (stamping the verified sender on each), tells a node when the peer it asked for is
//! unknown or offline, and answers malformed, oversized or out-of-order messages with an error
//! while it keeps serving. A registered node can ask for short-lived credentials for the
//! [`relay`] when it wants to reach a registered peer.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let server = fog_server::SignalServer::bind(fog_server::SignalConfig::default()).await?;
//! println!("signal server on {}", server.url());
//! server.serve_forever().await;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod names;
pub mod relay;
mod session;
mod state;
pub mod stun;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use state::State;

/// Configuration of the signal server.
#[derive(Clone, Debug)]
pub struct SignalConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// STUN servers announced to registering nodes (`host:port`).
    pub stun: Vec<String>,
    /// Relays announced to registering nodes (`turn:IP:PORT?transport=udp|tcp`, see
    /// [`relay::RelayServer::urls`]).
    pub relays: Vec<String>,
    /// The secret shared with the relays. Without it no relay credentials are granted (the
    /// answer to `relay_credentials` is an empty list).
    pub relay_secret: Option<relay::RelaySecret>,
    /// How long granted relay credentials stay valid. An allocation is refreshed with the same
    /// credentials, so this should be at least the relay's maximum allocation lifetime.
    pub relay_credential_ttl: std::time::Duration,
    /// Where the name table is kept across restarts (`names.json` in it); `None` keeps names
    /// in memory only.
    pub state_dir: Option<std::path::PathBuf>,
    /// How long a name stays with a key that is not registered before another key may take it.
    pub name_ttl: std::time::Duration,
}

/// Default validity of relay credentials: the default maximum allocation lifetime and a margin.
pub const RELAY_CREDENTIAL_TTL: std::time::Duration = std::time::Duration::from_secs(15 * 60);

impl Default for SignalConfig {
    fn default() -> Self {
        SignalConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], fog_core::signal::SIGNAL_PORT)),
            stun: Vec::new(),
            relays: Vec::new(),
            relay_secret: None,
            relay_credential_ttl: RELAY_CREDENTIAL_TTL,
            state_dir: None,
            name_ttl: names::NAME_TTL,
        }
    }
}

/// A running signal server. Dropping it (or [`shutdown`](Self::shutdown)) stops it.
pub struct SignalServer {
    local: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl SignalServer {
    /// Binds the listener and starts serving in the background. Fails when the state
    /// directory's name table cannot be read.
    pub async fn bind(config: SignalConfig) -> std::io::Result<Self> {
        let names = match &config.state_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                names::Names::load(dir, config.name_ttl)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
            }
            None => names::Names::new(config.name_ttl),
        };
        let listener = TcpListener::bind(config.listen).await?;
        let local = listener.local_addr()?;
        let state = Arc::new(State::new(
            config.stun,
            config.relays,
            config
                .relay_secret
                .map(|secret| (secret, config.relay_credential_ttl)),
            names,
            config.state_dir,
        ));
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(keep_names(state.clone(), stopped.clone()));
        let task = tokio::spawn(accept_loop(listener, state.clone(), stopped));
        tracing::info!(%local, "signal server listening");
        Ok(SignalServer {
            local,
            state,
            stop,
            task,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The URL nodes use: `ws://ADDR/ws` (a wildcard address is shown as loopback).
    pub fn url(&self) -> String {
        let mut addr = self.local;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("ws://{addr}{}", fog_core::signal::SIGNAL_PATH)
    }

    /// The server's shared state (registered peers and names).
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Serves until the task ends (it does not, unless shut down).
    pub async fn serve_forever(self) {
        let SignalServer { task, stop, .. } = self;
        let _keep = stop;
        let _ = task.await;
    }

    /// Stops accepting and closes every session.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// How often names unused for their time are released and the table's times are saved.
const NAME_UPKEEP: std::time::Duration = std::time::Duration::from_secs(60);

/// Releases expired names and saves the table now and then, and once more when the server
/// stops.
async fn keep_names(state: Arc<State>, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(NAME_UPKEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => state.name_upkeep(),
            _ = stopped.changed() => {
                state.name_upkeep();
                return;
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, stopped: watch::Receiver<bool>) {
    let mut stop = stopped.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, from)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(session::run(stream, from, state.clone(), stopped.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
}
