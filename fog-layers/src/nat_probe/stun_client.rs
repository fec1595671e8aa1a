//! STUN transactions over one UDP socket: requests with transaction ids and retransmission,
//! answers matched by id, so a late answer to one test is never read as the answer to another.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fog_core::stun::Binding;
use rand::RngCore;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

/// A Binding answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindingAnswer {
    /// Our address as the server saw it.
    pub mapped: SocketAddr,
    /// The server's OTHER-ADDRESS, when it supports RFC 5780.
    pub other: Option<SocketAddr>,
    /// Where the answer came from.
    pub from: SocketAddr,
    /// Time from the latest send of the request to the answer.
    pub rtt: Duration,
}

/// What the receive loop hands to a waiting transaction.
enum Arrival {
    Answer(BindingAnswer),
    /// Our own request came back (hairpinning).
    OwnRequest,
}

type Waiters = Arc<Mutex<HashMap<[u8; 12], oneshot::Sender<Arrival>>>>;

/// A UDP socket that runs STUN transactions.
pub struct StunSocket {
    socket: Arc<UdpSocket>,
    waiters: Waiters,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for StunSocket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Retransmission: first after `rto`, then doubling, until `deadline` after the first send.
#[derive(Clone, Copy, Debug)]
pub struct Retransmit {
    /// First retransmission timeout.
    pub rto: Duration,
    /// Give up this long after the first send.
    pub deadline: Duration,
}

fn txid() -> [u8; 12] {
    let mut id = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut id);
    id
}

impl StunSocket {
    /// Binds a fresh socket on `addr`.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let socket = Arc::new(UdpSocket::bind(addr).await?);
        let waiters: Waiters = Arc::default();
        let reader = tokio::spawn(receive(socket.clone(), waiters.clone()));
        Ok(StunSocket {
            socket,
            waiters,
            reader,
        })
    }

    /// The local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn register(&self, id: [u8; 12]) -> oneshot::Receiver<Arrival> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        rx
    }

    fn forget(&self, id: &[u8; 12]) {
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Sends a Binding request to `server` (with CHANGE-REQUEST `(ip, port)` flags when given)
    /// and waits for its answer; `None` when none came in time.
    pub async fn binding(
        &self,
        server: SocketAddr,
        change: Option<(bool, bool)>,
        retransmit: Retransmit,
    ) -> Option<BindingAnswer> {
        let id = txid();
        let request = fog_core::stun::binding_request(&id, change);
        let mut rx = self.register(id);
        let started = tokio::time::Instant::now();
        let deadline = started + retransmit.deadline;
        let mut rto = retransmit.rto;
        let mut next_send = started;
        let mut last_send = started;
        let answer = loop {
            if tokio::time::Instant::now() >= next_send {
                let _ = self.socket.send_to(&request, server).await;
                last_send = tokio::time::Instant::now();
                next_send += rto;
                rto *= 2;
            }
            tokio::select! {
                arrival = &mut rx => match arrival {
                    // Time from the latest send: a first packet lost while ARP resolves must
                    // not make the round trip look long and slow every later test down.
                    Ok(Arrival::Answer(answer)) => break Some(BindingAnswer {
                        rtt: last_send.elapsed(),
                        ..answer
                    }),
                    _ => break None,
                },
                _ = tokio::time::sleep_until(next_send.min(deadline)) => {
                    if tokio::time::Instant::now() >= deadline {
                        break None;
                    }
                }
            }
        };
        self.forget(&id);
        answer
    }

    /// Sends a Binding request to our own public address and reports whether it came back to this
    /// socket (the NAT hairpins) within `retransmit.deadline`.
    pub async fn hairpins(&self, public: SocketAddr, retransmit: Retransmit) -> bool {
        let id = txid();
        let request = fog_core::stun::binding_request(&id, None);
        let mut rx = self.register(id);
        let deadline = tokio::time::Instant::now() + retransmit.deadline;
        let mut rto = retransmit.rto;
        let came_back = loop {
            let _ = self.socket.send_to(&request, public).await;
            let wait = (tokio::time::Instant::now() + rto).min(deadline);
            rto *= 2;
            tokio::select! {
                arrival = &mut rx => break matches!(arrival, Ok(Arrival::OwnRequest)),
                _ = tokio::time::sleep_until(wait) => {
                    if tokio::time::Instant::now() >= deadline {
                        break false;
                    }
                }
            }
        };
        self.forget(&id);
        came_back
    }
}

async fn receive(socket: Arc<UdpSocket>, waiters: Waiters) {
    let mut buf = [0u8; 1500];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            // ICMP unreachable for an earlier request: the transaction's own timeout handles it.
            Err(_) => continue,
        };
        let (id, arrival) = match fog_core::stun::parse_binding(&buf[..len]) {
            Some(Binding::Answer { id, mapped, other }) => (
                id,
                Arrival::Answer(BindingAnswer {
                    mapped,
                    other,
                    from,
                    rtt: Duration::ZERO,
                }),
            ),
            Some(Binding::Request { id }) => (id, Arrival::OwnRequest),
            None => continue,
        };
        if let Some(tx) = waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
        {
            let _ = tx.send(arrival);
        }
    }
}
