//! TURN relay (RFC 8656) for nodes that find no direct path.
//!
//! The relay serves TURN over UDP and, optionally, over TCP (messages framed on the stream, see
//! [`tcp`]); relayed addresses are UDP on the relay's IP. It is built on the `turn` crate's
//! server, with three things in front of it that the crate does not do:
//!
//! * **No open relay.** Only short-lived credentials from the signal server work: the TURN REST
//!   API scheme ([`credentials`]), checked against a secret the signal server shares. Bad,
//!   expired or unknown usernames get 401.
//! * **Quotas per node** ([`quota`]), counted against the peer id in the username: simultaneous
//!   allocations (486 beyond), relayed bytes per second (excess datagrams dropped), and the total
//!   lifetime of an allocation.
//! * **No reaching into the relay's host**: peers on loopback or the relay's own IP are refused
//!   (403) and their datagrams dropped, unless [`RelayConfig::allow_loopback_peers`] is set.
//!   The one exception is the relay's own live allocations: two nodes that can only reach the
//!   relay (both behind UDP-blocking firewalls, on TURN over TCP) meet allocation to
//!   allocation, and the relay hands those datagrams from one to the other in memory, without
//!   the network (so it needs no hairpin when its relayed IP is a public one it does not hold).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use fog_server::relay::{RelayConfig, RelaySecret, RelayServer};
//! let secret = RelaySecret::random();
//! let relay = RelayServer::bind(RelayConfig::new("203.0.113.1:3478".parse()?, secret)).await?;
//! println!("fog relay on {}", relay.udp_addr());
//! # Ok(()) }
//! ```

mod conn;
pub mod credentials;
mod gate;
pub mod quota;
pub mod tcp;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fog_core::PeerId;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use turn::server::config::{ConnConfig, ServerConfig};
use turn::server::Server;

pub use credentials::{Credentials, RelaySecret};
pub use quota::QuotaConfig;

use quota::{ClientKey, Ledger, Transport};

/// The realm the relay announces; clients derive the long-term key from it.
pub const REALM: &str = "fog";

/// How the relay is set up.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Where TURN over UDP listens.
    pub udp: SocketAddr,
    /// Where TURN over TCP listens, if anywhere.
    pub tcp: Option<SocketAddr>,
    /// The IP announced in relayed addresses and relay URLs. Needed when `udp` is a wildcard;
    /// defaults to `udp`'s IP otherwise.
    pub relay_ip: Option<IpAddr>,
    /// The secret shared with the signal server.
    pub secret: RelaySecret,
    /// Per-node limits.
    pub quota: QuotaConfig,
    /// Let peers be on loopback or the relay's own IP. Off in service (the relay must not become
    /// a way into its own host); on for tests and labs that run everything on one host.
    pub allow_loopback_peers: bool,
}

impl RelayConfig {
    /// UDP on `udp`, no TCP, default quotas, loopback peers refused.
    pub fn new(udp: SocketAddr, secret: RelaySecret) -> Self {
        RelayConfig {
            udp,
            tcp: None,
            relay_ip: None,
            secret,
            quota: QuotaConfig::default(),
            allow_loopback_peers: false,
        }
    }
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A socket could not be bound.
    #[error("cannot bind relay socket {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// No IP to announce.
    #[error("the relay listens on the wildcard {0}: give the IP peers reach it on (relay_ip)")]
    RelayIp(SocketAddr),
    /// The relay IP is not of the listener's address family.
    #[error("relay IP {relay_ip} and listener {listen} are of different address families")]
    Family {
        /// The relay IP.
        relay_ip: IpAddr,
        /// The listener.
        listen: SocketAddr,
    },
    /// The TURN engine refused the configuration.
    #[error("TURN server: {0}")]
    Turn(String),
}

/// What the gates, relayed sockets and credential callback share.
pub(crate) struct Shared {
    secret: RelaySecret,
    realm: String,
    relay_ip: IpAddr,
    allow_loopback_peers: bool,
    quota: QuotaConfig,
    ledger: Mutex<Ledger>,
    /// Unauthenticated requests the engine may see per second (see [`CHALLENGES_PER_SEC`]).
    challenges: Mutex<quota::TokenBucket>,
    /// The live allocations by relayed port: where datagrams between two of them go.
    own: Mutex<std::collections::HashMap<u16, conn::Inbox>>,
}

/// Unauthenticated requests handed to the TURN engine per second, all clients together; the rest
/// are dropped. The engine answers each with a 401 and a fresh nonce that it keeps in a table it
/// never prunes, so an unbounded stream of them would grow its memory without end. An honest
/// client sends one per allocation.
pub const CHALLENGES_PER_SEC: u64 = 200;

impl Shared {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn own(&self) -> MutexGuard<'_, std::collections::HashMap<u16, conn::Inbox>> {
        self.own.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The inbox of the live allocation at `peer`, when `peer` is one of ours.
    fn own_allocation(&self, peer: SocketAddr) -> Option<conn::Inbox> {
        if gate::same_ip(peer.ip(), self.relay_ip) {
            self.own().get(&peer.port()).cloned()
        } else {
            None
        }
    }

    /// Whether the relay may exchange datagrams with `peer`: anyone but its own host (see
    /// [`gate::peer_allowed`]), and its own live allocations.
    fn peer_allowed(&self, peer: SocketAddr) -> bool {
        gate::peer_allowed(peer.ip(), self.relay_ip, self.allow_loopback_peers)
            || self.own_allocation(peer).is_some()
    }

    /// Whether one more unauthenticated request may reach the engine now.
    fn challenge(&self) -> bool {
        self.challenges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(1, std::time::Instant::now())
    }
}

/// A running relay. Dropping it (or [`close`](Self::close)) stops it and ends its allocations.
pub struct RelayServer {
    server: Server,
    udp: SocketAddr,
    tcp: Option<SocketAddr>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl Drop for RelayServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl RelayServer {
    /// Binds the listeners and starts relaying.
    pub async fn bind(config: RelayConfig) -> Result<Self, RelayError> {
        let udp_socket = UdpSocket::bind(config.udp)
            .await
            .map_err(|source| RelayError::Bind {
                addr: config.udp,
                source,
            })?;
        let udp = udp_socket.local_addr().map_err(|source| RelayError::Bind {
            addr: config.udp,
            source,
        })?;
        let relay_ip = match config.relay_ip {
            Some(ip) if ip.is_unspecified() => return Err(RelayError::RelayIp(udp)),
            Some(ip) => ip,
            None if udp.ip().is_unspecified() => return Err(RelayError::RelayIp(udp)),
            None => udp.ip(),
        };
        if relay_ip.is_ipv4() != udp.is_ipv4() {
            return Err(RelayError::Family {
                relay_ip,
                listen: udp,
            });
        }
        let shared = Arc::new(Shared {
            secret: config.secret,
            realm: REALM.to_string(),
            relay_ip,
            allow_loopback_peers: config.allow_loopback_peers,
            quota: config.quota,
            ledger: Mutex::new(Ledger::new(config.quota)),
            challenges: Mutex::new(quota::TokenBucket::new(
                CHALLENGES_PER_SEC,
                std::time::Instant::now(),
            )),
            own: Mutex::default(),
        });
        let (stop, stopped) = watch::channel(false);

        let mut listeners: Vec<(Arc<dyn webrtc_util::Conn + Send + Sync>, Transport, IpAddr)> =
            vec![(Arc::new(udp_socket), Transport::Udp, udp.ip())];
        let mut tcp = None;
        if let Some(addr) = config.tcp {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| RelayError::Bind { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| RelayError::Bind { addr, source })?;
            let on_close = {
                let shared = Arc::downgrade(&shared);
                Arc::new(move |client: SocketAddr| {
                    if let Some(shared) = shared.upgrade() {
                        shared.ledger().revoke(&ClientKey {
                            transport: Transport::Tcp,
                            addr: client,
                        });
                    }
                })
            };
            let conn = tcp::TcpConn::new(listener, on_close)
                .map_err(|source| RelayError::Bind { addr, source })?;
            // Relayed sockets are UDP on the UDP listener's IP, whichever transport asked.
            listeners.push((Arc::new(conn), Transport::Tcp, udp.ip()));
            tcp = Some(local);
        }

        let conn_configs = listeners
            .into_iter()
            .map(|(inner, transport, bind_ip)| {
                let slot = gate::Slot::default();
                ConnConfig {
                    conn: Arc::new(gate::Gate {
                        inner,
                        transport,
                        shared: shared.clone(),
                        slot: slot.clone(),
                        stop: stopped.clone(),
                    }),
                    relay_addr_generator: Box::new(conn::Generator { slot, bind_ip }),
                }
            })
            .collect();
        let server = Server::new(ServerConfig {
            conn_configs,
            realm: REALM.to_string(),
            auth_handler: Arc::new(conn::Auth {
                shared: shared.clone(),
            }),
            channel_bind_timeout: Duration::ZERO,
            alloc_close_notify: None,
        })
        .await
        .map_err(|e| RelayError::Turn(e.to_string()))?;
        tracing::info!(%udp, ?tcp, %relay_ip, "relay listening");
        Ok(RelayServer {
            server,
            udp,
            tcp,
            shared,
            stop,
        })
    }

    /// The TURN-over-UDP listener.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp
    }

    /// The TURN-over-TCP listener.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The IP of relayed addresses.
    pub fn relay_ip(&self) -> IpAddr {
        self.shared.relay_ip
    }

    /// The relay's URLs (RFC 7065), as the signal server announces them:
    /// `turn:IP:PORT?transport=udp`, then `…?transport=tcp` when TCP is on.
    pub fn urls(&self) -> Vec<String> {
        let mut urls = vec![turn_url(
            SocketAddr::new(self.shared.relay_ip, self.udp.port()),
            "udp",
        )];
        if let Some(tcp) = self.tcp {
            urls.push(turn_url(
                SocketAddr::new(self.shared.relay_ip, tcp.port()),
                "tcp",
            ));
        }
        urls
    }

    /// The shared secret.
    pub fn secret(&self) -> &RelaySecret {
        &self.shared.secret
    }

    /// The per-node limits.
    pub fn quota(&self) -> &QuotaConfig {
        &self.shared.quota
    }

    /// Allocations `node` holds now.
    pub fn allocations(&self, node: &PeerId) -> usize {
        self.shared.ledger().allocations(node)
    }

    /// Stops relaying and ends every allocation.
    pub async fn close(self) {
        let _ = self.stop.send(true);
        let _ = self.server.close().await;
    }
}

/// `turn:ADDR?transport=T`.
pub fn turn_url(addr: SocketAddr, transport: &str) -> String {
    format!("turn:{addr}?transport={transport}")
}
