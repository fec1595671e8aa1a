//! Registered peers, names, and routing between them.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fog_core::signal::{ErrorCode, RelayGrant, ServerMessage};
use fog_core::{PeerId, PeerRef};
use tokio::sync::mpsc;

use crate::names::{unix_now, Claim, Names};
use crate::relay::RelaySecret;

/// A route to one connected session.
struct Route {
    session: u64,
    name: Option<String>,
    tx: mpsc::Sender<ServerMessage>,
}

/// How long an offer may be answered.
const OFFER_TTL: Duration = Duration::from_secs(60);

/// An offer waiting for its answer: only its target may answer or reject it.
struct OpenOffer {
    offerer: PeerId,
    target: PeerId,
    at: Instant,
    /// Answered: no second reply, but trickled candidates still flow until the TTL.
    answered: bool,
}

#[derive(Default)]
struct Tables {
    online: HashMap<PeerId, Route>,
    names: Names,
    /// Times in `names` changed since the table was last saved.
    names_dirty: bool,
    known: HashSet<PeerId>,
    offers: HashMap<String, OpenOffer>,
}

/// Everything the server knows. Names stay bound to their key after the peer goes offline.
pub struct State {
    tables: Mutex<Tables>,
    /// Where the name table is saved.
    state_dir: Option<std::path::PathBuf>,
    /// Held while the table is written; taken before the tables' lock is let go, so that the
    /// newest table is always written last.
    saving: Mutex<()>,
    stun: Vec<String>,
    relays: Vec<String>,
    relay_secret: Option<(RelaySecret, Duration)>,
}

/// Why a message could not be routed.
pub(crate) struct RouteError {
    pub code: ErrorCode,
    pub message: String,
}

impl State {
    pub(crate) fn new(
        stun: Vec<String>,
        relays: Vec<String>,
        relay_secret: Option<(RelaySecret, Duration)>,
        names: Names,
        state_dir: Option<std::path::PathBuf>,
    ) -> Self {
        let known = names.holders().collect();
        State {
            tables: Mutex::new(Tables {
                names,
                known,
                ..Tables::default()
            }),
            state_dir,
            saving: Mutex::new(()),
            stun,
            relays,
            relay_secret,
        }
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Peers registered and connected now.
    pub fn online(&self) -> usize {
        self.tables().online.len()
    }

    /// STUN servers announced to nodes.
    pub(crate) fn stun(&self) -> Vec<String> {
        self.stun.clone()
    }

    /// Relays announced to nodes.
    pub(crate) fn relays(&self) -> Vec<String> {
        self.relays.clone()
    }

    /// Relay credentials for `node`, one grant per relay, valid from `now` (Unix seconds). Empty
    /// without a relay secret.
    pub(crate) fn relay_grants(&self, node: &PeerId, now: u64) -> Vec<RelayGrant> {
        let Some((secret, ttl)) = &self.relay_secret else {
            return Vec::new();
        };
        let credentials = crate::relay::credentials::issue(secret, node, now, *ttl);
        self.relays
            .iter()
            .map(|url| RelayGrant {
                url: url.clone(),
                username: credentials.username.clone(),
                password: credentials.password.clone(),
                expires: credentials.expires,
            })
            .collect()
    }

    /// Checks that `target` (a peer id or name) is registered and online, and returns its id.
    pub(crate) fn online_peer(&self, target: &PeerRef) -> Result<PeerId, RouteError> {
        let tables = self.tables();
        let peer = Self::lookup(&tables, target)?;
        Self::route(&tables, target, &peer).map(|_| peer)
    }

    /// Registers `peer` on `session`; the name must be free or already bound to `peer`.
    pub(crate) fn register(
        &self,
        peer: PeerId,
        name: Option<String>,
        session: u64,
        tx: mpsc::Sender<ServerMessage>,
    ) -> Result<(), RouteError> {
        let mut tables = self.tables();
        let mut bound = false;
        if let Some(name) = &name {
            if let Err(message) = fog_core::attempt::validate_name(name) {
                return Err(RouteError {
                    code: ErrorCode::InvalidName,
                    message,
                });
            }
            let Tables { names, online, .. } = &mut *tables;
            match names.claim(name, peer, unix_now(), |p| online.contains_key(p)) {
                Claim::Taken => {
                    return Err(RouteError {
                        code: ErrorCode::NameTaken,
                        message: format!("the name {name:?} is held by another key"),
                    })
                }
                Claim::Held => tables.names_dirty = true,
                Claim::Bound => bound = true,
            }
        }
        tables.known.insert(peer);
        // A newer session of the same key replaces the older one.
        tables.online.insert(peer, Route { session, name, tx });
        if bound {
            // Saved before the node hears it has the name, so a restart cannot lose it.
            tables.names_dirty = false;
            self.save_names(tables);
        }
        Ok(())
    }

    /// Saves the name table under the state directory (when there is one). A failure is
    /// logged, not fatal: the names stay bound in memory.
    fn save_names(&self, tables: std::sync::MutexGuard<'_, Tables>) {
        let Some(dir) = &self.state_dir else { return };
        let json = tables.names.to_json();
        let _saving = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        drop(tables);
        if let Err(e) = crate::names::save(dir, &json) {
            tracing::error!(error = %e, "cannot save the name table");
        }
    }

    /// Releases names unused for their time and saves the table if it changed.
    pub(crate) fn name_upkeep(&self) {
        let mut tables = self.tables();
        let Tables {
            names,
            online,
            names_dirty,
            ..
        } = &mut *tables;
        let released = names.expire(unix_now(), |p| online.contains_key(p));
        if released || *names_dirty {
            *names_dirty = false;
            self.save_names(tables);
        }
    }

    /// Forgets `session`'s route (if a newer session has not replaced it).
    pub(crate) fn unregister(&self, peer: PeerId, session: u64) {
        let mut tables = self.tables();
        if tables
            .online
            .get(&peer)
            .is_some_and(|r| r.session == session)
        {
            tables.online.remove(&peer);
            tables.names.seen(&peer, unix_now());
            tables.names_dirty = true;
        }
    }

    /// The key bound to `name`.
    pub(crate) fn resolve(&self, name: &str) -> Option<PeerId> {
        self.tables().names.get(name)
    }

    /// The name of an online peer.
    pub(crate) fn name_of(&self, peer: &PeerId) -> Option<String> {
        self.tables().online.get(peer).and_then(|r| r.name.clone())
    }

    /// Forwards `from`'s offer for `session` to `target` and remembers it for the answer.
    pub(crate) fn offer(
        &self,
        from: PeerId,
        target: &PeerRef,
        session: String,
        message: ServerMessage,
    ) -> Result<(), RouteError> {
        let mut tables = self.tables();
        let to = Self::deliver(&tables, target, message)?;
        let now = Instant::now();
        if tables.offers.len() >= 1024 && tables.offers.len().is_power_of_two() {
            tables
                .offers
                .retain(|_, o| now.duration_since(o.at) < OFFER_TTL);
        }
        tables.offers.insert(
            session,
            OpenOffer {
                offerer: from,
                target: to,
                at: now,
                answered: false,
            },
        );
        Ok(())
    }

    /// Forwards `from`'s answer or refusal of the offer `session` to the peer that offered it.
    /// Only the peer the offer went to may reply, once.
    pub(crate) fn reply(
        &self,
        from: PeerId,
        to: PeerId,
        session: &str,
        message: ServerMessage,
    ) -> Result<(), RouteError> {
        let mut tables = self.tables();
        let open = tables.offers.get(session).is_some_and(|o| {
            o.offerer == to && o.target == from && !o.answered && o.at.elapsed() < OFFER_TTL
        });
        if !open {
            return Err(RouteError {
                code: ErrorCode::BadMessage,
                message: format!("no open offer {session} from {to} to you"),
            });
        }
        let accepted = matches!(message, ServerMessage::Answer { .. });
        if accepted {
            if let Some(offer) = tables.offers.get_mut(session) {
                offer.answered = true;
            }
        } else {
            tables.offers.remove(session);
        }
        Self::deliver(&tables, &PeerRef::Id(to), message).map(|_| ())
    }

    /// Forwards `from`'s trickled candidates to the other peer of the offered `session`; only
    /// the two peers of a live offer may send them to each other.
    pub(crate) fn trickle(
        &self,
        from: PeerId,
        to: &PeerRef,
        session: &str,
        message: ServerMessage,
    ) -> Result<(), RouteError> {
        let tables = self.tables();
        let to_id = match to {
            PeerRef::Id(id) => Some(*id),
            PeerRef::Name(name) => tables.names.get(name),
        };
        let member = tables.offers.get(session).is_some_and(|o| {
            o.at.elapsed() < OFFER_TTL
                && to_id.is_some_and(|to| {
                    (o.offerer == from && o.target == to) || (o.offerer == to && o.target == from)
                })
        });
        if !member {
            return Err(RouteError {
                code: ErrorCode::BadMessage,
                message: format!("no offer {session} between you and {to}"),
            });
        }
        Self::deliver(&tables, to, message).map(|_| ())
    }

    /// Delivers a path update to `to`: no offer needed (the connection outlives it, and this
    /// server's restarts); the receiver checks the session and the sender it is stamped with.
    pub(crate) fn path_update(&self, to: PeerId, message: ServerMessage) -> Result<(), RouteError> {
        let tables = self.tables();
        Self::deliver(&tables, &PeerRef::Id(to), message).map(|_| ())
    }

    /// Delivers `message` to `target` (a peer id or name) and returns its peer id.
    fn deliver(
        tables: &Tables,
        target: &PeerRef,
        message: ServerMessage,
    ) -> Result<PeerId, RouteError> {
        let peer = Self::lookup(tables, target)?;
        let route = Self::route(tables, target, &peer)?;
        route.tx.try_send(message).map_err(|_| RouteError {
            code: ErrorCode::PeerOffline,
            message: format!("{target} is not reading its messages"),
        })?;
        Ok(peer)
    }

    /// The peer id of `target`.
    fn lookup(tables: &Tables, target: &PeerRef) -> Result<PeerId, RouteError> {
        Ok(match target {
            PeerRef::Id(id) => *id,
            PeerRef::Name(name) => tables.names.get(name).ok_or_else(|| RouteError {
                code: ErrorCode::PeerUnknown,
                message: format!("no peer has the name {name:?}"),
            })?,
        })
    }

    /// The route to `peer` (named `target` in errors), if it is online.
    fn route<'t>(
        tables: &'t Tables,
        target: &PeerRef,
        peer: &PeerId,
    ) -> Result<&'t Route, RouteError> {
        tables.online.get(peer).ok_or_else(|| {
            if tables.known.contains(peer) {
                RouteError {
                    code: ErrorCode::PeerOffline,
                    message: format!("{target} is not connected to the signal server"),
                }
            } else {
                RouteError {
                    code: ErrorCode::PeerUnknown,
                    message: format!("{target} never registered here"),
                }
            }
        })
    }
}
