//! Sessions of one datagram transport on the node's socket, by the 32-bit key its datagrams
//! carry (KCP's conversation, SCTP's port pair).
//!
//! The peer's attempt may be a moment ahead of ours, so its first datagrams can arrive before
//! our session opens. Those are kept briefly and within bounds, and handed over when the
//! session opens, so that the first flight is not lost to a retransmission timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::socket::FogSocket;

/// Keys with early datagrams kept at once.
const MAX_EARLY_KEYS: usize = 64;
/// Early datagrams kept per key.
const MAX_EARLY_PER_KEY: usize = 32;
/// How long early datagrams wait for their session.
const EARLY_TTL: Duration = Duration::from_secs(10);

/// Open sessions and the early datagrams of sessions not open yet.
pub(crate) struct SessionTable<M> {
    open: HashMap<u32, mpsc::Sender<M>>,
    early: HashMap<u32, (Instant, Vec<M>)>,
}

impl<M> Default for SessionTable<M> {
    fn default() -> Self {
        SessionTable {
            open: HashMap::new(),
            early: HashMap::new(),
        }
    }
}

/// How a transport reads one of its datagrams: the session key, the message, and whether it
/// is worth keeping for a session that has not opened yet; `None` drops the datagram.
pub(crate) type RouteDatagram<M> = fn(Vec<u8>) -> Option<(u32, M, bool)>;

/// A transport's sessions, shared between its datagram reader and its sessions.
pub(crate) struct Sessions<M>(Arc<Mutex<SessionTable<M>>>);

impl<M> Clone for Sessions<M> {
    fn clone(&self) -> Self {
        Sessions(self.0.clone())
    }
}

impl<M: Send + 'static> Sessions<M> {
    /// Takes `protocol`'s datagrams from `socket` and hands each to its session as `route`
    /// reads it. Stops when the sessions are gone.
    pub(crate) fn route(socket: &FogSocket, protocol: u8, route: RouteDatagram<M>) -> Self {
        let sessions = Arc::new(Mutex::new(SessionTable::default()));
        let mut datagrams = socket.transport_datagrams(protocol);
        let table = Arc::downgrade(&sessions);
        tokio::spawn(async move {
            while let Some((_from, datagram)) = datagrams.recv().await {
                let Some(sessions) = table.upgrade() else {
                    return;
                };
                if let Some((key, message, keep)) = route(datagram) {
                    sessions
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .deliver(key, message, keep);
                }
            }
        });
        Sessions(sessions)
    }

    /// The table, also after a panic elsewhere (it holds no invariant a panic could break).
    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionTable<M>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<M> SessionTable<M> {
    /// Hands `message` to the session `key`; when it is not open yet and `keep` says the
    /// message matters to a session that opens later, keeps it for a while.
    pub(crate) fn deliver(&mut self, key: u32, message: M, keep: bool) {
        match self.open.get(&key) {
            // A full queue drops: the protocol's retransmission covers it.
            Some(tx) => {
                let _ = tx.try_send(message);
            }
            None if keep => self.keep_early(key, message),
            None => {}
        }
    }

    /// Opens the session `key` with `tx` as its inbox, which first gets what came early.
    pub(crate) fn open(&mut self, key: u32, tx: mpsc::Sender<M>) {
        if let Some((_, early)) = self.early.remove(&key) {
            for message in early {
                let _ = tx.try_send(message);
            }
        }
        self.open.insert(key, tx);
    }

    /// Forgets the session `key`.
    pub(crate) fn close(&mut self, key: u32) {
        self.open.remove(&key);
    }

    fn keep_early(&mut self, key: u32, message: M) {
        let now = Instant::now();
        self.early
            .retain(|_, (at, _)| now.duration_since(*at) < EARLY_TTL);
        if !self.early.contains_key(&key) && self.early.len() >= MAX_EARLY_KEYS {
            return;
        }
        let (_, kept) = self.early.entry(key).or_insert_with(|| (now, Vec::new()));
        if kept.len() < MAX_EARLY_PER_KEY {
            kept.push(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_messages_reach_the_session_when_it_opens() {
        let mut table = SessionTable::default();
        table.deliver(7, "first", true);
        table.deliver(7, "not kept", false);
        table.deliver(8, "other", true);
        let (tx, mut rx) = mpsc::channel(8);
        table.open(7, tx);
        table.deliver(7, "second", false);
        assert_eq!(rx.try_recv().unwrap(), "first");
        assert_eq!(rx.try_recv().unwrap(), "second");
        assert!(rx.try_recv().is_err());
        table.close(7);
        table.deliver(7, "late", false);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn early_messages_are_bounded() {
        let mut table = SessionTable::default();
        for key in 0..(MAX_EARLY_KEYS as u32 + 10) {
            for _ in 0..(MAX_EARLY_PER_KEY + 10) {
                table.deliver(key, key, true);
            }
        }
        assert_eq!(table.early.len(), MAX_EARLY_KEYS);
        assert!(table
            .early
            .values()
            .all(|(_, kept)| kept.len() == MAX_EARLY_PER_KEY));
    }
}
