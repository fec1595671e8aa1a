//! Every network signal as an event on a broadcast channel.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::attempt::{Candidate, PathKind, Protocol};
use crate::identity::PeerId;

/// Something that happened on the network. Subscribe with [`EventBus::subscribe`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The signal server accepted this node's key (and name).
    Registered {
        /// This node.
        peer: PeerId,
        /// Its name, when it registered one.
        name: Option<String>,
    },
    /// The connection to the signal server broke; the node is connecting again. Live
    /// connections are not touched (they do not need the signal server).
    SignalLost {
        /// Why.
        error: String,
    },
    /// The node is registered at a signal server again after [`Event::SignalLost`].
    SignalRestored {
        /// The server that took it.
        url: String,
    },
    /// The NAT probe's verdict is new or changed.
    NatChanged {
        /// The verdict.
        profile: crate::nat::NatProfile,
    },
    /// A local candidate was found.
    CandidateGathered {
        /// The candidate.
        candidate: Candidate,
    },
    /// An offer went to a peer.
    OfferSent {
        /// The peer id or name we asked for.
        target: String,
    },
    /// A peer offered a connection.
    OfferReceived {
        /// The peer.
        peer: PeerId,
    },
    /// The peer answered our offer.
    AnswerReceived {
        /// The peer.
        peer: PeerId,
        /// How many candidates it sent.
        candidates: usize,
    },
    /// A connectivity check went out.
    CheckSent {
        /// Where to.
        remote: SocketAddr,
    },
    /// A connectivity check was answered.
    CheckSucceeded {
        /// From where.
        remote: SocketAddr,
        /// Its round trip.
        rtt: Duration,
    },
    /// The path the connection will use.
    PathSelected {
        /// The remote address.
        remote: SocketAddr,
        /// Direct or relayed.
        kind: PathKind,
    },
    /// A relay allocated an address for this node.
    RelayAllocated {
        /// The relay server.
        relay: SocketAddr,
        /// The address it allocated.
        allocated: SocketAddr,
    },
    /// A better path replaced the one in use (lower RTT, or the LAN), or a relay replaced a
    /// dead direct path; open streams carry on.
    PathChanged {
        /// The remote address before.
        from: SocketAddr,
        /// The remote address now.
        to: SocketAddr,
        /// Direct or relayed, now.
        kind: PathKind,
        /// Round trip of the check that chose it.
        rtt: Duration,
    },
    /// The transport protocol both sides agreed on.
    ProtocolSelected {
        /// The protocol.
        protocol: Protocol,
    },
    /// A connection is up.
    Connected {
        /// The peer.
        peer: PeerId,
        /// Its address.
        remote: SocketAddr,
        /// The protocol.
        protocol: Protocol,
        /// Direct or relayed.
        path: PathKind,
        /// From request to connected.
        elapsed: Duration,
    },
    /// A stream was opened on a connection.
    StreamOpened {
        /// The peer.
        peer: PeerId,
    },
    /// A connection ended.
    Disconnected {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// An attempt failed.
    Error {
        /// The peer, when known.
        peer: Option<PeerId>,
        /// What failed.
        message: String,
    },
}

/// The sending side of the event channel; cheap to clone. Events nobody listens to are dropped.
#[derive(Clone, Debug)]
pub struct EventBus {
    sender: broadcast::Sender<Event>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// A bus that keeps the last 1024 events for slow subscribers.
    pub fn new() -> Self {
        EventBus {
            sender: broadcast::channel(1024).0,
        }
    }

    /// Publishes `event` (also as a `tracing` debug record).
    pub fn emit(&self, event: Event) {
        tracing::debug!(?event, "fog event");
        let _ = self.sender.send(event);
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_events_in_order() {
        let bus = EventBus::new();
        let mut rx = bus.subscribe();
        bus.emit(Event::SignalLost { error: "a".into() });
        bus.emit(Event::SignalLost { error: "b".into() });
        assert_eq!(
            rx.recv().await.unwrap(),
            Event::SignalLost { error: "a".into() }
        );
        assert_eq!(
            rx.recv().await.unwrap(),
            Event::SignalLost { error: "b".into() }
        );
    }

    #[test]
    fn events_serialize_with_a_tag() {
        let json = serde_json::to_string(&Event::SignalLost { error: "x".into() }).unwrap();
        assert_eq!(json, r#"{"event":"signal_lost","error":"x"}"#);
    }
}
