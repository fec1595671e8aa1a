//! The connectivity-check interface a punch layer drives; the shared UDP socket implements it.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::attempt::SessionKeys;
use crate::identity::PeerId;

/// A valid reply to one of our checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckReply {
    /// Who answered (the address our check went to).
    pub remote: SocketAddr,
    /// Time from our check to its reply.
    pub rtt: Duration,
}

/// What a watched session sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckEvent {
    /// One of our checks was answered.
    Answered(CheckReply),
    /// A valid check of the peer arrived (and was answered) from `from`: the peer's address as
    /// our NAT sees it, worth a check of our own (a peer-reflexive candidate).
    Received {
        /// Where it came from.
        from: SocketAddr,
    },
}

/// An allocation on a relay, made by a [`Prober`]. Dropping the last handle ends it.
pub trait RelayHandle: Send + Sync + 'static {
    /// The relay server.
    fn server(&self) -> SocketAddr;
    /// The address the relay allocated: peers send here to reach us.
    fn relayed_addr(&self) -> SocketAddr;
    /// The address to send to (checks or transport) to reach `peer` through the relay.
    fn path_to(&self, peer: SocketAddr) -> SocketAddr;
    /// Whether the allocation is ending or lost and must be made again (with fresh
    /// credentials) for relayed paths to go on.
    fn needs_renewal(&self) -> bool {
        false
    }
    /// Says that the relayed path through the allocation died with no other path left (the
    /// relay may have restarted and forgotten it): it is made again.
    fn mark_lost(&self) {}
}

/// Sends authenticated connectivity checks and answers the peer's.
pub trait Prober: Send + Sync + 'static {
    /// The local socket address checks leave from (and the connection will use).
    fn local_addr(&self) -> SocketAddr;

    /// Starts answering checks of `session` for a while and returns what happens in it: replies
    /// to our checks, and the peer's checks. Dropping the receiver stops the delivery, not the
    /// answering.
    fn watch(&self, session: &SessionKeys) -> mpsc::UnboundedReceiver<CheckEvent>;

    /// Sends one check of `session` to `remote`.
    fn send_check(&self, session: &SessionKeys, remote: SocketAddr) -> std::io::Result<()>;

    /// This socket's address as the STUN server `stun` sees it (its server-reflexive address);
    /// `None` when no answer came in time (the socket gives the server a few seconds).
    fn server_reflexive(&self, stun: SocketAddr) -> BoxFuture<'_, Option<SocketAddr>>;

    /// `count` fresh sockets that answer checks on their own, for birthday spraying against a
    /// random symmetric NAT; empty when this prober cannot make them. Dropping one closes it,
    /// unless a transport took it over for the connection.
    fn spray_sockets(&self, count: usize) -> BoxFuture<'_, Vec<Arc<dyn Prober>>> {
        let _ = count;
        Box::pin(async { Vec::new() })
    }

    /// Says that `session`'s checks are with `peer`: every address a valid check of the session
    /// comes from or is answered from then leads to the peer's route (see
    /// [`route_to`](Self::route_to)), so that the transport sees one address for the peer from
    /// its first packet on, whichever pair it arrives over. Call after [`watch`](Self::watch).
    fn expect_peer(&self, session: &SessionKeys, peer: &PeerId) {
        let _ = (session, peer);
    }

    /// Sends what a transport on this socket sends to `peer` to `remote` from now on, and
    /// returns the stable address the transport uses for the peer while the path under it
    /// changes (a better pair, a relay). `None` when this prober does not route: the transport
    /// then uses `remote` itself and the path cannot change under it.
    fn route_to(&self, peer: &PeerId, remote: SocketAddr) -> Option<SocketAddr> {
        let _ = (peer, remote);
        None
    }

    /// Allocates on the TURN relay `server` with these credentials, from this prober's socket
    /// (TURN over UDP) or from a TCP connection of its own. The default cannot relay.
    fn allocate_relay(
        self: Arc<Self>,
        server: SocketAddr,
        transport: crate::turn::TurnTransport,
        username: String,
        password: String,
    ) -> BoxFuture<'static, Result<Arc<dyn RelayHandle>, String>> {
        let _ = (server, transport, username, password);
        Box::pin(async { Err("this socket cannot use relays".to_string()) })
    }

    /// Notes that `addr` is an address a peer allocated on a relay: a connection sending there
    /// is relayed, and says so.
    fn note_peer_relay(&self, addr: SocketAddr) {
        let _ = addr;
    }

    /// Whether sending to `addr` goes through a relay: a path through one of our allocations,
    /// or a relayed address the peer told us of. Checks answered from such an address make a
    /// relayed path, whatever kind of candidate they came in as.
    fn is_relayed(&self, addr: SocketAddr) -> bool {
        let _ = addr;
        false
    }

    /// When a datagram of a routed connection last came from `addr` (any datagram, not only
    /// checks); `None` when the prober does not know.
    fn last_heard(&self, addr: SocketAddr) -> Option<std::time::Instant> {
        let _ = addr;
        None
    }

    /// When a datagram of `peer`'s routed connection last came in, over any path; `None`
    /// when the prober does not know.
    fn last_heard_from(&self, peer: &crate::PeerId) -> Option<std::time::Instant> {
        let _ = peer;
        None
    }

    /// The prober as `Any`, so that a transport can take over the socket it wraps.
    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}
