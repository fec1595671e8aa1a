//! Trickled candidates: each side sends its host candidates at once and the slower ones
//! (server-reflexive, predicted) as they are found, so gathering overlaps with signalling.
//!
//! Locally a gathering layer starts its lookups in the background and leaves a [`Gathering`] in
//! the attempt; the signal layer forwards each one's result to the peer as it completes. The
//! peer's late candidates arrive as a [`CandidateList`] that only grows, watched through a
//! [`RemoteTrickle`].

use std::fmt;
use std::future::Future;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::attempt::Candidate;

/// Most candidates one side may trickle in one session; more are dropped.
pub const MAX_TRICKLED: usize = 32;

/// One background lookup of local candidates. Cloning shares the result; the lookup runs on
/// its own task, so it makes progress whether or not anyone polls it yet.
#[derive(Clone)]
pub struct Gathering {
    /// What it is (for logs): `srflx`, `predicted` …
    pub what: &'static str,
    result: Shared<BoxFuture<'static, Vec<Candidate>>>,
}

impl fmt::Debug for Gathering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gathering({})", self.what)
    }
}

impl Gathering {
    /// Starts `lookup` on its own task. Must be called inside a tokio runtime.
    pub fn spawn<F>(what: &'static str, lookup: F) -> Self
    where
        F: Future<Output = Vec<Candidate>> + Send + 'static,
    {
        let task = tokio::spawn(lookup);
        Gathering {
            what,
            result: async move { task.await.unwrap_or_default() }
                .boxed()
                .shared(),
        }
    }

    /// The candidates it found (empty when the lookup failed).
    pub fn result(&self) -> impl Future<Output = Vec<Candidate>> + Send + 'static {
        self.result.clone()
    }
}

/// Waits for all of `gatherings` (each bounds its own time) and returns what they found.
pub async fn gathered(gatherings: &[Gathering]) -> Vec<Candidate> {
    let results = futures_util::future::join_all(gatherings.iter().map(Gathering::result)).await;
    results.into_iter().flatten().collect()
}

/// A side's trickled candidates so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateList {
    /// Every candidate trickled so far, in arrival order.
    pub candidates: Vec<Candidate>,
    /// The side said it has nothing more to send.
    pub complete: bool,
}

impl CandidateList {
    /// Adds `more` (up to [`MAX_TRICKLED`] in all, duplicates dropped); true when something
    /// changed.
    pub fn extend(&mut self, more: &[Candidate], complete: bool) -> bool {
        let mut changed = false;
        for candidate in more {
            if self.candidates.len() >= MAX_TRICKLED {
                break;
            }
            if !self.candidates.iter().any(|c| c.addr == candidate.addr) {
                self.candidates.push(*candidate);
                changed = true;
            }
        }
        if complete && !self.complete {
            self.complete = true;
            changed = true;
        }
        changed
    }
}

impl CandidateList {
    /// Replaces the relayed candidates with `relayed` (the peer made its allocations again);
    /// true when something changed. The others stay.
    pub fn replace_relayed(&mut self, relayed: &[Candidate]) -> bool {
        use crate::attempt::CandidateKind;
        let before = self.candidates.len();
        self.candidates
            .retain(|c| c.kind != CandidateKind::Relay || relayed.iter().any(|r| r.addr == c.addr));
        let removed = self.candidates.len() != before;
        let fresh: Vec<Candidate> = relayed
            .iter()
            .copied()
            .filter(|c| c.kind == CandidateKind::Relay)
            .collect();
        self.extend(&fresh, false) || removed
    }
}

/// The peer's trickled candidates, as they arrive.
#[derive(Clone, Debug)]
pub struct RemoteTrickle {
    rx: watch::Receiver<CandidateList>,
}

impl RemoteTrickle {
    /// Watches `rx`, which the signalling side fills.
    pub fn new(rx: watch::Receiver<CandidateList>) -> Self {
        RemoteTrickle { rx }
    }

    /// What arrived so far.
    pub fn current(&self) -> CandidateList {
        self.rx.borrow().clone()
    }

    /// Waits until the list changes; `None` when no more can come (complete and all of it
    /// seen, or the signalling side is gone).
    pub async fn changed(&mut self) -> Option<CandidateList> {
        // What arrived unseen is delivered first, even when the list is complete by now: the
        // last candidates and `done` often come together.
        if !self.rx.has_changed().unwrap_or(false) && self.rx.borrow().complete {
            return None;
        }
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }

    /// Waits for any change, also after the list is complete (the peer's relayed candidates
    /// made again while the connection is up); `None` once the signalling side is gone.
    pub async fn updated(&mut self) -> Option<CandidateList> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }

    /// Waits until `enough` holds for what arrived, or the peer is done, at most `limit`;
    /// returns what arrived, all of it seen.
    pub async fn wait_for(
        &mut self,
        limit: Duration,
        enough: impl Fn(&CandidateList) -> bool,
    ) -> CandidateList {
        let _ = tokio::time::timeout(limit, async {
            // What is read here counts as seen, so `changed` brings only what comes after.
            let now = self.rx.borrow_and_update().clone();
            if enough(&now) {
                return;
            }
            while let Some(list) = self.changed().await {
                if enough(&list) {
                    return;
                }
            }
        })
        .await;
        self.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(port: u16) -> Candidate {
        Candidate::srflx(std::net::SocketAddr::from(([203, 0, 113, 1], port)))
    }

    #[test]
    fn lists_grow_without_duplicates_and_stay_bounded() {
        let mut list = CandidateList::default();
        assert!(list.extend(&[cand(1), cand(1)], false));
        assert_eq!(list.candidates.len(), 1);
        assert!(!list.extend(&[cand(1)], false));
        let many: Vec<Candidate> = (2..100).map(cand).collect();
        list.extend(&many, false);
        assert_eq!(list.candidates.len(), MAX_TRICKLED);
        assert!(list.extend(&[], true));
        assert!(!list.extend(&[], true));
    }

    #[tokio::test]
    async fn relayed_candidates_are_replaced_and_seen_after_completion() {
        let relay = |port| Candidate::relay(std::net::SocketAddr::from(([203, 0, 113, 9], port)));
        let (tx, rx) = watch::channel(CandidateList::default());
        let mut remote = RemoteTrickle::new(rx);
        tx.send_modify(|l| {
            l.extend(&[cand(1), relay(50)], true);
        });
        remote
            .wait_for(Duration::from_secs(5), |l| l.complete)
            .await;
        assert!(remote.changed().await.is_none(), "complete for the punch");
        tx.send_if_modified(|l| l.replace_relayed(&[relay(60), cand(2)]));
        let updated = remote.updated().await.expect("the update is seen");
        assert_eq!(updated.candidates, vec![cand(1), relay(60)]);
        // The same again changes nothing.
        assert!(!tx.send_if_modified(|l| l.replace_relayed(&[relay(60)])));
    }

    #[tokio::test]
    async fn gatherings_run_without_being_polled_and_share_results() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let g = Gathering::spawn("srflx", async move {
            let _ = tx.send(());
            vec![cand(7)]
        });
        // The lookup ran on its own task before anyone awaited the result.
        rx.await.unwrap();
        assert_eq!(gathered(&[g.clone(), g]).await, vec![cand(7), cand(7)]);
    }

    #[tokio::test]
    async fn a_remote_trickle_ends_when_complete() {
        let (tx, rx) = watch::channel(CandidateList::default());
        let mut remote = RemoteTrickle::new(rx);
        tx.send_modify(|l| {
            l.extend(&[cand(1)], false);
        });
        assert_eq!(remote.changed().await.unwrap().candidates, vec![cand(1)]);
        tx.send_modify(|l| {
            l.extend(&[cand(2)], true);
        });
        let done = remote
            .wait_for(Duration::from_secs(5), |l| l.complete)
            .await;
        assert!(done.complete);
        assert_eq!(done.candidates.len(), 2);
        assert!(remote.changed().await.is_none());
    }

    #[tokio::test]
    async fn the_last_candidates_are_delivered_when_done_comes_with_them() {
        let (tx, rx) = watch::channel(CandidateList::default());
        let mut remote = RemoteTrickle::new(rx);
        tx.send_modify(|l| {
            l.extend(&[cand(1)], false);
        });
        tx.send_modify(|l| {
            l.extend(&[], true);
        });
        let last = remote
            .changed()
            .await
            .expect("the unseen candidate comes first");
        assert_eq!(last.candidates, vec![cand(1)]);
        assert!(last.complete);
        assert!(remote.changed().await.is_none());
    }
}
