//! Names bound to keys, kept across the server's restarts (in a file under `--state DIR`) and
//! released when unused for a configurable time.
//!
//! The table itself is plain code: [`Names::claim`] decides who may hold a name at a given
//! time, and the file is one JSON document replaced atomically (written beside it, then
//! renamed), so a crash leaves either the old table or the new one, never half of one.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fog_core::PeerId;
use serde::{Deserialize, Serialize};

/// Default time after which a name whose key has not been registered is released.
pub const NAME_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The file under the state directory.
const FILE: &str = "names.json";

/// One name's binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The key that holds it.
    pub peer: PeerId,
    /// When the key was last registered or went offline (Unix seconds).
    pub last_seen: u64,
}

/// What a claim of a name came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key already held it.
    Held,
    /// It was free (or released after its time) and is the key's now: the table changed.
    Bound,
    /// Another key holds it.
    Taken,
}

/// Names and their keys.
#[derive(Debug, Default)]
pub struct Names {
    bindings: HashMap<String, Binding>,
    ttl: Duration,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    names: HashMap<String, Binding>,
}

impl Names {
    /// An empty table releasing names unused for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Names {
            bindings: HashMap::new(),
            ttl,
        }
    }

    /// The key bound to `name`.
    pub fn get(&self, name: &str) -> Option<PeerId> {
        self.bindings.get(name).map(|b| b.peer)
    }

    /// Every key that holds a name.
    pub fn holders(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.bindings.values().map(|b| b.peer)
    }

    /// How many names are bound.
    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    /// Whether no name is bound.
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    /// `peer` asks for `name` at `now` (Unix seconds) while `online` says which keys are
    /// registered right now. A name held by another key is released to `peer` only when that
    /// key is offline and has not been seen for the table's time.
    pub fn claim(
        &mut self,
        name: &str,
        peer: PeerId,
        now: u64,
        online: impl Fn(&PeerId) -> bool,
    ) -> Claim {
        match self.bindings.get_mut(name) {
            Some(binding) if binding.peer == peer => {
                binding.last_seen = now;
                Claim::Held
            }
            Some(binding)
                if online(&binding.peer)
                    || now.saturating_sub(binding.last_seen) < self.ttl.as_secs() =>
            {
                Claim::Taken
            }
            _ => {
                self.bindings.insert(
                    name.to_string(),
                    Binding {
                        peer,
                        last_seen: now,
                    },
                );
                Claim::Bound
            }
        }
    }

    /// `peer` was seen at `now` (it registered, or went offline): its names' time starts again.
    pub fn seen(&mut self, peer: &PeerId, now: u64) {
        for binding in self.bindings.values_mut().filter(|b| b.peer == *peer) {
            binding.last_seen = now;
        }
    }

    /// Releases the names of offline keys unused for the table's time; true when any went.
    pub fn expire(&mut self, now: u64, online: impl Fn(&PeerId) -> bool) -> bool {
        let before = self.bindings.len();
        let ttl = self.ttl.as_secs();
        self.bindings
            .retain(|_, b| online(&b.peer) || now.saturating_sub(b.last_seen) < ttl);
        self.bindings.len() != before
    }

    /// The table as the file holds it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&Saved {
            names: self.bindings.clone(),
        })
        .expect("names serialize")
    }

    /// Loads the table from `dir` (empty when there is no file yet).
    pub fn load(dir: &Path, ttl: Duration) -> Result<Self, NamesError> {
        let path = dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Names::new(ttl)),
            Err(source) => return Err(NamesError::Io { path, source }),
        };
        let saved: Saved =
            serde_json::from_str(&text).map_err(|source| NamesError::Corrupt { path, source })?;
        Ok(Names {
            bindings: saved.names,
            ttl,
        })
    }
}

/// Writes `json` to `dir`'s names file atomically: a temporary file beside it, synced, then
/// renamed over it.
pub fn save(dir: &Path, json: &str) -> Result<(), NamesError> {
    let path = dir.join(FILE);
    let temporary: PathBuf = dir.join(format!("{FILE}.tmp"));
    let io = |source| NamesError::Io {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::File::create(&temporary).map_err(io)?;
    file.write_all(json.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temporary, &path).map_err(io)?;
    Ok(())
}

/// The name table's file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum NamesError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a name table.
    #[error("{path} is not a fog name table: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// Seconds since the Unix epoch now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fog_core::Identity;

    const DAY: u64 = 24 * 3600;

    #[test]
    fn a_name_is_first_come_and_stays_with_its_key_while_in_use() {
        let (a, b) = (
            Identity::generate().peer_id(),
            Identity::generate().peer_id(),
        );
        let mut names = Names::new(Duration::from_secs(30 * DAY));
        assert_eq!(names.claim("x", a, 1000, |_| false), Claim::Bound);
        assert_eq!(names.claim("x", b, 1001, |_| false), Claim::Taken);
        assert_eq!(names.claim("x", a, 2000, |_| true), Claim::Held);
        // Online keys keep their names however long ago they registered.
        assert_eq!(
            names.claim("x", b, 2000 + 90 * DAY, |p| *p == a),
            Claim::Taken
        );
        assert_eq!(names.get("x"), Some(a));
    }

    #[test]
    fn a_name_unused_for_its_time_is_released() {
        let (a, b) = (
            Identity::generate().peer_id(),
            Identity::generate().peer_id(),
        );
        let mut names = Names::new(Duration::from_secs(30 * DAY));
        names.claim("x", a, 0, |_| false);
        names.seen(&a, 10 * DAY);
        assert_eq!(names.claim("x", b, 39 * DAY, |_| false), Claim::Taken);
        assert_eq!(names.claim("x", b, 40 * DAY, |_| false), Claim::Bound);
        assert_eq!(names.get("x"), Some(b));
        names.claim("y", a, 40 * DAY, |_| false);
        assert!(!names.expire(69 * DAY, |_| false));
        assert!(names.expire(70 * DAY + 1, |p| *p == b));
        assert_eq!(names.get("y"), None);
        assert_eq!(names.get("x"), Some(b));
    }

    #[test]
    fn the_table_survives_a_save_and_a_load() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::generate().peer_id();
        let ttl = Duration::from_secs(DAY);
        assert!(Names::load(dir.path(), ttl).unwrap().is_empty());
        let mut names = Names::new(ttl);
        names.claim("x", a, 5, |_| false);
        save(dir.path(), &names.to_json()).unwrap();
        let loaded = Names::load(dir.path(), ttl).unwrap();
        assert_eq!(loaded.get("x"), Some(a));
        assert_eq!(loaded.len(), 1);
        std::fs::write(dir.path().join(FILE), "{not json").unwrap();
        assert!(matches!(
            Names::load(dir.path(), ttl),
            Err(NamesError::Corrupt { .. })
        ));
    }
}
