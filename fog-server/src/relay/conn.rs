//! Relayed sockets with quotas, the relay address generator that makes them, and the TURN
//! engine's credential callback.
//!
//! The engine sends to and reads from peers only through the relayed socket it gets from the
//! generator, so wrapping that socket is where the per-node byte rate, the allocation deadline
//! and the peer address policy hold for every path (Send indications, ChannelData, and datagrams
//! from peers), whatever the engine does.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use fog_core::PeerId;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use turn::relay::RelayAddressGenerator;
use webrtc_util::Conn;

use super::credentials::{password_for, unix_now};
use super::gate::{peer_allowed, take, Slot};

/// Datagrams queued for one allocation from the relay's other allocations; more are dropped,
/// as a congested path would.
const INBOX_LEN: usize = 256;

/// Where the relay's other allocations put datagrams for one allocation: the datagram and the
/// sending allocation's relayed address.
pub(crate) type Inbox = tokio::sync::mpsc::Sender<(Vec<u8>, SocketAddr)>;
use super::quota::{Allocation, ClientKey};
use super::Shared;

/// One allocation's claim on its node's quota; ending the allocation (dropping its socket)
/// gives the claim back.
struct Lease {
    shared: Arc<Shared>,
    node: PeerId,
    key: ClientKey,
    deadline: Instant,
    /// The relayed port, under which the allocation is known to the others.
    port: u16,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shared.own().remove(&self.port);
        let mut ledger = self.shared.ledger();
        ledger.remove(&self.key, self.deadline);
        ledger.release(&self.node);
    }
}

/// A relayed UDP socket counted against its node.
pub(crate) struct RelayConn {
    /// Dropped before the socket: the allocation leaves the relay's table while it still
    /// holds its port, so a new allocation on that port is never removed in its place.
    lease: Lease,
    socket: UdpSocket,
    revoked: watch::Receiver<bool>,
    /// Datagrams from the relay's other allocations.
    inbox: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<(Vec<u8>, SocketAddr)>>,
    /// This allocation's relayed address, the source the others see.
    relayed: SocketAddr,
}

impl RelayConn {
    fn ended(&self) -> bool {
        *self.revoked.borrow() || Instant::now() >= self.lease.deadline
    }

    /// Whether the network may carry datagrams between this allocation and `peer` (never the
    /// relay's own host: its allocations meet in memory).
    fn allowed(&self, peer: SocketAddr) -> bool {
        let shared = &self.lease.shared;
        peer_allowed(peer.ip(), shared.relay_ip, shared.allow_loopback_peers)
    }

    fn charge(&self, bytes: usize) -> bool {
        let passed = self
            .lease
            .shared
            .ledger()
            .charge(&self.lease.node, bytes, Instant::now());
        if !passed {
            tracing::trace!(node = %self.lease.node, bytes, "relay rate quota: datagram dropped");
        }
        passed
    }
}

fn ended() -> webrtc_util::Error {
    webrtc_util::Error::Io(std::io::Error::from(std::io::ErrorKind::NotConnected).into())
}

#[async_trait]
impl Conn for RelayConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other(
            "relayed sockets do not connect".into(),
        ))
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        self.recv_from(buf).await.map(|(n, _)| n)
    }

    /// The next datagram from a peer within the node's rate; an error once the allocation's
    /// time is up or it was revoked, which makes the engine drop the allocation.
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let mut revoked = self.revoked.clone();
        let deadline = tokio::time::Instant::from_std(self.lease.deadline);
        let revoked = async move {
            if revoked.wait_for(|r| *r).await.is_err() {
                // The ledger no longer holds the sender: nobody can revoke any more.
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(revoked);
        let mut inbox = self.inbox.lock().await;
        loop {
            let received = tokio::select! {
                received = self.socket.recv_from(buf) => received,
                Some((datagram, from)) = inbox.recv() => {
                    let len = datagram.len().min(buf.len());
                    buf[..len].copy_from_slice(&datagram[..len]);
                    if self.charge(len) {
                        return Ok((len, from));
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(node = %self.lease.node, "relay allocation reached its maximum lifetime");
                    return Err(ended());
                }
                _ = &mut revoked => return Err(ended()),
            };
            match received {
                Ok((len, from)) if self.allowed(from) && self.charge(len) => {
                    return Ok((len, from))
                }
                // Dropped, or an ICMP error from an earlier send.
                _ => continue,
            }
        }
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other(
            "relayed sockets send to an address".into(),
        ))
    }

    /// Sends to a peer within the node's rate. Datagrams over the rate or to a refused address
    /// are dropped silently, as a congested or filtered path would.
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if self.ended() {
            return Err(ended());
        }
        if let Some(inbox) = self.lease.shared.own_allocation(target) {
            if self.charge(buf.len()) {
                // A full inbox drops the datagram, as a congested path would.
                let _ = inbox.try_send((buf.to_vec(), self.relayed));
            }
            return Ok(buf.len());
        }
        if !self.allowed(target) || !self.charge(buf.len()) {
            return Ok(buf.len());
        }
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// Makes relayed sockets on the relay's IP for allocations the gate accepted.
pub(crate) struct Generator {
    pub slot: Slot,
    /// Where relayed sockets are bound (the listener's IP, or a wildcard).
    pub bind_ip: IpAddr,
}

#[async_trait]
impl RelayAddressGenerator for Generator {
    fn validate(&self) -> Result<(), turn::Error> {
        Ok(())
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        // Only the gate makes reservations, and only for the request the engine handles now.
        let reservation = take(&self.slot)
            .ok_or_else(|| turn::Error::Other("allocation without a quota reservation".into()))?;
        let relay_ip = reservation.shared.relay_ip;
        if use_ipv4 != relay_ip.is_ipv4() {
            return Err(turn::Error::Other(format!(
                "the relay has no {} address",
                if use_ipv4 { "IPv4" } else { "IPv6" }
            )));
        }
        let socket = UdpSocket::bind(SocketAddr::new(self.bind_ip, requested_port)).await?;
        let mut relayed = socket.local_addr()?;
        relayed.set_ip(relay_ip);
        let (shared, node, key) = reservation.consume();
        let deadline = Instant::now() + shared.quota.max_lifetime;
        let (revoke, revoked) = watch::channel(false);
        shared.ledger().insert(
            key,
            Allocation {
                node,
                deadline,
                revoke,
            },
        );
        tracing::debug!(%node, client = %key.addr, %relayed, "relay allocation");
        let (inbox_tx, inbox) = tokio::sync::mpsc::channel(INBOX_LEN);
        shared.own().insert(relayed.port(), inbox_tx);
        let conn = RelayConn {
            lease: Lease {
                shared,
                node,
                key,
                deadline,
                port: relayed.port(),
            },
            socket,
            revoked,
            inbox: tokio::sync::Mutex::new(inbox),
            relayed,
        };
        Ok((Arc::new(conn), relayed))
    }
}

/// The engine's credential callback: the long-term key of a valid, unexpired username. The gate
/// has already answered requests with bad credentials; this holds for any it lets through.
pub(crate) struct Auth {
    pub shared: Arc<Shared>,
}

impl turn::auth::AuthHandler for Auth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        _src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        let (_, password) = password_for(&self.shared.secret, username, unix_now())
            .map_err(|e| turn::Error::Other(e.to_string()))?;
        Ok(turn::auth::generate_auth_key(username, realm, &password))
    }
}
