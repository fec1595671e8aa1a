//! Short-lived relay credentials in the TURN REST API scheme.
//!
//! The signal server and the relay share a secret and nothing else: no user table, no database.
//! The signal server hands a registered node a username `"<expiry-unix-seconds>:<peer-id>"` and
//! the password `base64(HMAC-SHA1(secret, username))`; the relay recomputes the password from the
//! username alone. This is the scheme coturn checks with `use-auth-secret` /
//! `static-auth-secret`, so the same grants also work against a coturn relay that shares the
//! secret. The peer id in the username names the node the relay's quotas are counted against;
//! nobody without the secret can mint a username for another node or extend an expiry.
//!
//! Everything here is plain synchronous code over explicit times, so the tests pin the clock.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use fog_core::PeerId;
use hmac::{Hmac, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// The secret the signal server and the relays share. Its bytes key the HMAC, exactly as coturn
/// uses the text of `static-auth-secret`; `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct RelaySecret(Vec<u8>);

impl fmt::Debug for RelaySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelaySecret({} bytes)", self.0.len())
    }
}

impl RelaySecret {
    /// A secret from its bytes; empty secrets are refused, since anyone could compute the
    /// passwords.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, CredentialError> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(CredentialError::EmptySecret);
        }
        Ok(RelaySecret(bytes))
    }

    /// A fresh random secret: 32 random bytes written as 64 hex characters (text, so the same
    /// value can be given to coturn's `static-auth-secret`).
    pub fn random() -> Self {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        RelaySecret(fog_core::hex::encode(&bytes).into_bytes())
    }

    /// Reads a secret file: its content without the trailing line break and blanks.
    pub fn from_file(path: &Path) -> Result<Self, CredentialError> {
        let text = std::fs::read(path).map_err(|source| CredentialError::SecretFile {
            path: path.display().to_string(),
            source,
        })?;
        let end = text
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        RelaySecret::new(&text[..end])
    }

    /// The secret's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self) -> HmacSha1 {
        // HMAC takes keys of any length; the error branch cannot happen.
        HmacSha1::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("HMAC takes any key"))
    }
}

/// A username and password for one node, valid until `expires`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// `"<expires>:<peer-id>"`.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))`.
    pub password: String,
    /// Unix seconds after which the relay refuses the username.
    pub expires: u64,
}

/// Why credentials were refused.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Not `"<unix-seconds>:<peer-id>"`.
    #[error("the username is not <expiry>:<peer id>")]
    Malformed,
    /// The expiry has passed.
    #[error("the username expired at {expires} (now {now})")]
    Expired {
        /// The username's expiry, Unix seconds.
        expires: u64,
        /// The time of the check, Unix seconds.
        now: u64,
    },
    /// The password is not the HMAC of the username.
    #[error("wrong password")]
    BadPassword,
    /// An empty secret.
    #[error("the relay secret is empty")]
    EmptySecret,
    /// The secret file could not be read.
    #[error("cannot read the relay secret file {path}: {source}")]
    SecretFile {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The password of `username`: `base64(HMAC-SHA1(secret, username))`.
pub fn password(secret: &RelaySecret, username: &str) -> String {
    let mut mac = secret.mac();
    mac.update(username.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

/// Credentials for `peer` that expire `ttl` after `now` (Unix seconds).
pub fn issue(secret: &RelaySecret, peer: &PeerId, now: u64, ttl: Duration) -> Credentials {
    let expires = now.saturating_add(ttl.as_secs());
    let username = format!("{expires}:{peer}");
    Credentials {
        password: password(secret, &username),
        username,
        expires,
    }
}

/// Splits a username into its expiry and peer id. Only the canonical form is accepted: decimal
/// digits, one colon, the peer id as [`PeerId`] prints it (so one node has one spelling, and its
/// quota cannot be dodged with upper case or blanks).
pub fn parse_username(username: &str) -> Result<(u64, PeerId), CredentialError> {
    let (expiry, peer) = username.split_once(':').ok_or(CredentialError::Malformed)?;
    if expiry.is_empty() || expiry.len() > 20 || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CredentialError::Malformed);
    }
    let expires = expiry.parse().map_err(|_| CredentialError::Malformed)?;
    let id = PeerId::from_str(peer).map_err(|_| CredentialError::Malformed)?;
    if id.to_string() != peer {
        return Err(CredentialError::Malformed);
    }
    Ok((expires, id))
}

/// Checks that `username` is well formed and not expired at `now`, and returns its peer id and
/// its password. The relay needs the password itself (not a yes/no) to derive the STUN long-term
/// key that checks MESSAGE-INTEGRITY.
pub fn password_for(
    secret: &RelaySecret,
    username: &str,
    now: u64,
) -> Result<(PeerId, String), CredentialError> {
    let (expires, peer) = parse_username(username)?;
    if expires < now {
        return Err(CredentialError::Expired { expires, now });
    }
    Ok((peer, password(secret, username)))
}

/// Checks a username and password pair at `now` and returns the node it belongs to. The password
/// is compared in constant time.
pub fn verify(
    secret: &RelaySecret,
    username: &str,
    password: &str,
    now: u64,
) -> Result<PeerId, CredentialError> {
    let (expires, peer) = parse_username(username)?;
    if expires < now {
        return Err(CredentialError::Expired { expires, now });
    }
    let given = BASE64
        .decode(password)
        .map_err(|_| CredentialError::BadPassword)?;
    let mut mac = secret.mac();
    mac.update(username.as_bytes());
    mac.verify_slice(&given)
        .map_err(|_| CredentialError::BadPassword)?;
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        fog_core::Identity::generate().peer_id()
    }

    fn secret() -> RelaySecret {
        RelaySecret::new("north-wind").unwrap()
    }

    #[test]
    fn the_password_is_the_rest_api_hmac() {
        // RFC 2202 test case 2: HMAC-SHA1("Jefe", "what do ya want for nothing?").
        let secret = RelaySecret::new("Jefe").unwrap();
        let expected = BASE64.encode([
            0xef, 0xfc, 0xdf, 0x6a, 0xe5, 0xeb, 0x2f, 0xa2, 0xd2, 0x74, 0x16, 0xd5, 0xf1, 0x84,
            0xdf, 0x9c, 0x25, 0x9a, 0x7c, 0x79,
        ]);
        assert_eq!(password(&secret, "what do ya want for nothing?"), expected);
    }

    #[test]
    fn issued_credentials_verify_until_they_expire() {
        let p = peer();
        let c = issue(&secret(), &p, 1_000, Duration::from_secs(600));
        assert_eq!(c.expires, 1_600);
        assert_eq!(c.username, format!("1600:{p}"));
        assert_eq!(
            verify(&secret(), &c.username, &c.password, 1_000).unwrap(),
            p
        );
        assert_eq!(
            verify(&secret(), &c.username, &c.password, 1_600).unwrap(),
            p
        );
        assert!(matches!(
            verify(&secret(), &c.username, &c.password, 1_601),
            Err(CredentialError::Expired {
                expires: 1_600,
                now: 1_601
            })
        ));
        let (got, pw) = password_for(&secret(), &c.username, 1_200).unwrap();
        assert_eq!((got, pw), (p, c.password.clone()));
        assert!(password_for(&secret(), &c.username, 2_000).is_err());
    }

    #[test]
    fn wrong_passwords_and_secrets_are_refused() {
        let p = peer();
        let c = issue(&secret(), &p, 0, Duration::from_secs(60));
        for bad in ["", "not base64!", "AAAA", &password(&secret(), "other")] {
            assert!(matches!(
                verify(&secret(), &c.username, bad, 0),
                Err(CredentialError::BadPassword)
            ));
        }
        let other = RelaySecret::new("south-wind").unwrap();
        assert!(matches!(
            verify(&other, &c.username, &c.password, 0),
            Err(CredentialError::BadPassword)
        ));
        // The username is bound to the password: another node's name does not reuse it.
        let stolen = format!("60:{}", peer());
        assert!(verify(&secret(), &stolen, &c.password, 0).is_err());
    }

    #[test]
    fn only_canonical_usernames_parse() {
        let p = peer();
        assert_eq!(parse_username(&format!("42:{p}")).unwrap(), (42, p));
        let upper = p.to_string().to_ascii_uppercase();
        for bad in [
            String::new(),
            "42".to_string(),
            format!(":{p}"),
            format!("-1:{p}"),
            format!("+1:{p}"),
            format!("1 :{p}"),
            format!("1: {p}"),
            format!("1:{p}:x"),
            format!("1:{upper}"),
            format!("99999999999999999999999:{p}"),
            "1:alice".to_string(),
            "1:".to_string(),
        ] {
            assert!(parse_username(&bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn secrets_are_never_empty_and_files_lose_their_line_break() {
        assert!(RelaySecret::new("").is_err());
        let dir = std::env::temp_dir().join(format!("fog-secret-{}", std::process::id()));
        std::fs::write(&dir, "s3cret \n").unwrap();
        assert_eq!(RelaySecret::from_file(&dir).unwrap().as_bytes(), b"s3cret");
        std::fs::write(&dir, "\n").unwrap();
        assert!(RelaySecret::from_file(&dir).is_err());
        let _ = std::fs::remove_file(&dir);
        assert!(RelaySecret::from_file(Path::new("/nonexistent/fog/secret")).is_err());
        let random = RelaySecret::random();
        assert_eq!(random.as_bytes().len(), 64);
        assert_ne!(random, RelaySecret::random());
        assert!(!format!("{random:?}").contains(std::str::from_utf8(random.as_bytes()).unwrap()));
    }
}
