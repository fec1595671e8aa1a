//! Node identity: an Ed25519 key pair, and the [`PeerId`] that names it.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Length of the printable form of a [`PeerId`] (base32 of 32 bytes, no padding).
pub const PEER_ID_LEN: usize = 52;

/// A peer's identity: its Ed25519 public key, printed as 52 lowercase base32 characters.
///
/// It is safe to copy and paste (no `+`, `/` or `=`), and it is what every transport checks during
/// its handshake, so a peer id can be trusted as soon as a connection to it exists.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId([u8; 32]);

impl PeerId {
    /// The peer id of a raw 32-byte Ed25519 public key.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        PeerId(bytes)
    }

    /// The raw public key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The public key as a verifying key; fails when the bytes are not a valid curve point.
    pub fn verifying_key(&self) -> Result<VerifyingKey, IdentityError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| IdentityError::InvalidPublicKey)
    }

    /// Checks that `signature` is this peer's signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), IdentityError> {
        let signature =
            Signature::from_slice(signature).map_err(|_| IdentityError::BadSignature)?;
        self.verifying_key()?
            .verify(message, &signature)
            .map_err(|_| IdentityError::BadSignature)
    }

    /// A short form for logs: the first 8 characters.
    pub fn short(&self) -> String {
        self.to_string()[..8].to_string()
    }
}

fn encoding() -> data_encoding::Encoding {
    data_encoding::BASE32_NOPAD.clone()
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encoding().encode(&self.0).to_ascii_lowercase())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.short())
    }
}

impl FromStr for PeerId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() != PEER_ID_LEN {
            return Err(IdentityError::InvalidPeerId(s.chars().take(80).collect()));
        }
        let bytes = encoding()
            .decode(s.to_ascii_uppercase().as_bytes())
            .map_err(|_| IdentityError::InvalidPeerId(s.to_string()))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| IdentityError::InvalidPeerId(s.to_string()))?;
        Ok(PeerId(bytes))
    }
}

impl Serialize for PeerId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What can go wrong with keys and peer ids.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The text is not a peer id.
    #[error("not a peer id: {0:?} (expected {PEER_ID_LEN} base32 characters)")]
    InvalidPeerId(String),
    /// The 32 bytes are not an Ed25519 public key.
    #[error("the peer id is not a valid Ed25519 public key")]
    InvalidPublicKey,
    /// A signature did not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file holds something else than a fog key.
    #[error("key file {0} is not a fog key (expected 32 bytes, or 64 hex characters)")]
    KeyFormat(String),
}

/// A node's key pair. Cheap to clone.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.peer_id())
    }
}

impl Identity {
    /// A new random identity.
    pub fn generate() -> Self {
        Identity {
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// The identity of a 32-byte Ed25519 secret key.
    pub fn from_secret_bytes(secret: [u8; 32]) -> Self {
        Identity {
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// Loads the key from `path`, or creates it there (mode 0600) when the file does not exist.
    ///
    /// The file holds the secret key as 64 hex characters and a newline.
    pub fn load_or_generate(path: impl AsRef<Path>) -> Result<Self, IdentityError> {
        let path = path.as_ref();
        let file_error = |source| IdentityError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => Self::decode_key_file(&bytes)
                .ok_or_else(|| IdentityError::KeyFormat(path.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = Self::generate();
                match identity.save(path) {
                    Ok(()) => Ok(identity),
                    // Another process made it first: its key is the one.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let bytes = std::fs::read(path).map_err(file_error)?;
                        Self::decode_key_file(&bytes)
                            .ok_or_else(|| IdentityError::KeyFormat(path.display().to_string()))
                    }
                    Err(e) => Err(file_error(e)),
                }
            }
            Err(e) => Err(file_error(e)),
        }
    }

    fn decode_key_file(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?.trim();
        Some(Self::from_secret_bytes(crate::hex::decode_array(text)?))
    }

    /// Writes the secret key to a new file at `path`, readable only by its owner. The file
    /// appears whole or not at all (written beside it, then linked into place), and an
    /// existing file is never replaced (`AlreadyExists`), so two processes that create the
    /// same key file at once end up with one key.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)?;
            }
        }
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(
            ".{}.{:016x}.tmp",
            std::process::id(),
            rand_suffix()
        ));
        let temporary = path.with_file_name(name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let written = (|| {
            let mut file = options.open(&temporary)?;
            let text = crate::hex::encode(&self.key.to_bytes());
            file.write_all(format!("{text}\n").as_bytes())?;
            file.sync_all()?;
            std::fs::hard_link(&temporary, path)
        })();
        let _ = std::fs::remove_file(&temporary);
        written
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        PeerId(self.key.verifying_key().to_bytes())
    }

    /// Signs `message` with the node key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// The secret key bytes (for building TLS certificates).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The key as PKCS#8 DER (for building TLS certificates).
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        self.key
            .to_pkcs8_der()
            .expect("an Ed25519 key always encodes as PKCS#8")
            .as_bytes()
            .to_vec()
    }
}

/// A random number for temporary file names.
fn rand_suffix() -> u64 {
    use rand::RngCore;
    rand::rngs::OsRng.next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_round_trips_through_text() {
        let id = Identity::generate().peer_id();
        let text = id.to_string();
        assert_eq!(text.len(), PEER_ID_LEN);
        assert!(text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_eq!(text.parse::<PeerId>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<PeerId>().unwrap(), id);
    }

    #[test]
    fn bad_peer_ids_are_errors() {
        assert!("".parse::<PeerId>().is_err());
        assert!("1e:34:a1:44:2c:1c".parse::<PeerId>().is_err());
        assert!("!".repeat(PEER_ID_LEN).parse::<PeerId>().is_err());
    }

    #[test]
    fn signatures_verify_only_for_the_signer() {
        let a = Identity::generate();
        let b = Identity::generate();
        let sig = a.sign(b"msg");
        assert!(a.peer_id().verify(b"msg", &sig).is_ok());
        assert!(a.peer_id().verify(b"other", &sig).is_err());
        assert!(b.peer_id().verify(b"msg", &sig).is_err());
        assert!(a.peer_id().verify(b"msg", &sig[..10]).is_err());
    }

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/node.key");
        let first = Identity::load_or_generate(&path).unwrap();
        let again = Identity::load_or_generate(&path).unwrap();
        assert_eq!(first.peer_id(), again.peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn processes_that_create_one_key_file_at_once_get_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("key");
        let ids: Vec<PeerId> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| Identity::load_or_generate(&path).unwrap().peer_id()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        assert_eq!(Identity::load_or_generate(&path).unwrap().peer_id(), ids[0]);
        // No temporary files are left beside it.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        assert_eq!(
            Identity::generate().save(&path).unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
    }

    #[test]
    fn garbage_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        std::fs::write(&path, b"not a key").unwrap();
        let err = Identity::load_or_generate(&path).unwrap_err();
        assert!(err.to_string().contains("not a fog key"), "{err}");
    }
}
