//! The keys behind the names a node has connected to, kept in a file beside its key (as ssh's
//! `known_hosts`): a name that later answers with another key is refused, so that a signal
//! server that hands a name to someone else (or lies) cannot slip a stranger in under it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fog_core::PeerId;

/// What a node has learned about names, and where it keeps it.
#[derive(Debug)]
pub struct KnownPeers {
    path: PathBuf,
    names: Mutex<BTreeMap<String, PeerId>>,
}

/// What the file says about a name and the key that answered for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The name was not known: it is now, with this key.
    New,
    /// The same key as before.
    Same,
    /// Another key than before.
    Changed {
        /// The key the file had.
        was: PeerId,
    },
}

impl KnownPeers {
    /// The file at `path` (empty when it does not exist yet). Lines that are not `NAME PEER_ID`
    /// are skipped.
    pub fn open(path: impl Into<PathBuf>) -> std::io::Result<Self> {
        let path = path.into();
        let names = match std::fs::read_to_string(&path) {
            Ok(text) => parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(KnownPeers {
            path,
            names: Mutex::new(names),
        })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key recorded for `name`.
    pub fn get(&self, name: &str) -> Option<PeerId> {
        self.lock().get(name).copied()
    }

    /// Checks `peer` against what is recorded for `name`, and records it when the name is new
    /// or `accept` says a changed key is to be taken.
    pub fn check(&self, name: &str, peer: PeerId, accept: bool) -> std::io::Result<Verdict> {
        let mut names = self.lock();
        let verdict = match names.get(name) {
            None => Verdict::New,
            Some(was) if *was == peer => return Ok(Verdict::Same),
            Some(was) => Verdict::Changed { was: *was },
        };
        if verdict == Verdict::New || accept {
            names.insert(name.to_string(), peer);
            save(&self.path, &names)?;
        }
        Ok(verdict)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PeerId>> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn parse(text: &str) -> BTreeMap<String, PeerId> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?;
            let peer = words.next()?.parse().ok()?;
            Some((name.to_string(), peer))
        })
        .collect()
}

/// Rewrites the file atomically (a temporary file beside it, then a rename), mode 0600.
fn save(path: &Path, names: &BTreeMap<String, PeerId>) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // A name of its own per writer: two nodes sharing the file must not write one temporary.
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".{}.{:08x}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ));
    let temporary = path.with_file_name(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = (|| {
        let mut file = options.open(&temporary)?;
        for (name, peer) in names {
            writeln!(file, "{name} {peer}")?;
        }
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use fog_core::Identity;

    #[test]
    fn a_name_keeps_its_first_key_until_told_otherwise_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_peers");
        let (a, b) = (
            Identity::generate().peer_id(),
            Identity::generate().peer_id(),
        );
        let known = KnownPeers::open(&path).unwrap();
        assert_eq!(known.check("x", a, false).unwrap(), Verdict::New);
        assert_eq!(known.check("x", a, false).unwrap(), Verdict::Same);
        assert_eq!(
            known.check("x", b, false).unwrap(),
            Verdict::Changed { was: a }
        );
        let reopened = KnownPeers::open(&path).unwrap();
        assert_eq!(reopened.get("x"), Some(a), "a refused key is not recorded");
        assert_eq!(
            reopened.check("x", b, true).unwrap(),
            Verdict::Changed { was: a }
        );
        assert_eq!(KnownPeers::open(&path).unwrap().get("x"), Some(b));
    }

    #[test]
    fn junk_lines_are_skipped() {
        let a = Identity::generate().peer_id();
        let parsed = parse(&format!("x {a}\n\n# comment\ny not-a-key\nz\n"));
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed.get("x"), Some(&a));
    }
}
