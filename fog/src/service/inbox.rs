//! The inbox: files peers send, verified by SHA-256, resumable, and never written outside the
//! inbox directory.
//!
//! A transfer writes to `.fog-partial/<sha256>-<size>` inside the inbox. When it breaks off,
//! the part stays, and the next transfer of the same content goes on from its end. A whole,
//! verified file is linked under its own name (or `name (1)`, … when that is taken: nothing is
//! overwritten) and its part removed.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fog_core::BiStream;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{close_with, write_message, Reply, ServiceError};

/// Where parts of unfinished transfers are kept, inside the inbox.
const PARTIAL_DIR: &str = ".fog-partial";

/// A directory that takes files from peers.
#[derive(Debug)]
pub struct Inbox {
    dir: PathBuf,
    /// Parts by content.
    parts: Mutex<HashMap<String, Arc<PartSlot>>>,
}

/// Why a file name is refused: a reason for the sender.
pub fn safe_file_name(name: &str) -> Result<&str, String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("{name:?} is not a file name"));
    }
    if name.len() > 255 {
        return Err("a file name of more than 255 bytes".into());
    }
    if name.contains(['/', '\\']) {
        return Err(format!("{name:?} has a directory in it"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{name:?} has a control character in it"));
    }
    if name.starts_with(".fog-") {
        return Err(format!("{name:?} is reserved"));
    }
    Ok(name)
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `name`, then `name (1)`, `name (2)`, … with the extension kept at the end.
fn candidate_names(name: &str) -> impl Iterator<Item = String> + '_ {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    std::iter::once(name.to_string()).chain((1..1000).map(move |n| format!("{stem} ({n}){ext}")))
}

/// One content's transfers: one writes its part at a time, and a newer transfer takes over
/// from an older one (whose sender is most likely gone, unnoticed until the connection times
/// out).
#[derive(Debug)]
struct PartSlot {
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Bumped by each new transfer, to make the current writer stop.
    generation: tokio::sync::watch::Sender<u64>,
}

/// How long a new transfer waits for the one it takes over from to stop.
const TAKEOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Inbox {
    /// Uses `dir` (created when missing) as the inbox.
    pub fn open(dir: impl AsRef<Path>) -> std::io::Result<Inbox> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        if !dir.is_dir() {
            return Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                format!("{} is not a directory", dir.display()),
            ));
        }
        Ok(Inbox {
            dir,
            parts: Mutex::default(),
        })
    }

    /// The inbox directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parts directory, created when missing; refused when it is a link.
    fn partial_dir(&self) -> std::io::Result<PathBuf> {
        let dir = self.dir.join(PARTIAL_DIR);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => Ok(dir),
            Ok(_) => Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                format!("{} is not a directory", dir.display()),
            )),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                std::fs::create_dir(&dir)?;
                Ok(dir)
            }
            Err(e) => Err(e),
        }
    }

    /// Takes a file from `stream`: answers with the offset to go on from, reads the rest,
    /// verifies the whole and saves it under its own name; the last reply says how it ended.
    pub async fn receive(
        &self,
        name: &str,
        size: u64,
        sha256: &str,
        mut stream: BiStream,
    ) -> Result<(), ServiceError> {
        let outcome = self.take(name, size, sha256, &mut stream).await;
        // Slots of contents nobody is receiving now go, so the table does not grow with every
        // file ever received.
        self.parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, slot| Arc::strong_count(slot) > 1);
        close_with(&mut stream, &outcome?).await
    }

    /// The transfer itself; the reply that ends it, or an error when the stream broke.
    async fn take(
        &self,
        name: &str,
        size: u64,
        sha256: &str,
        stream: &mut BiStream,
    ) -> Result<Reply, ServiceError> {
        if let Err(why) = safe_file_name(name) {
            return Ok(Reply::error("bad_name", why));
        }
        if !is_sha256_hex(sha256) {
            return Ok(Reply::error(
                "bad_request",
                "sha256 must be 64 lowercase hex digits",
            ));
        }
        if let Some(free) = free_space(&self.dir) {
            if size > free {
                return Ok(Reply::error(
                    "too_large",
                    format!("{size} bytes, and the inbox has {free} bytes free"),
                ));
            }
        }
        let key = format!("{sha256}-{size}");
        let slot = self
            .parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(PartSlot {
                    writer: Arc::default(),
                    generation: tokio::sync::watch::channel(0).0,
                })
            })
            .clone();
        let mut superseded = slot.generation.subscribe();
        slot.generation.send_modify(|g| *g += 1);
        superseded.borrow_and_update();
        let Ok(_writing) =
            tokio::time::timeout(TAKEOVER_WAIT, slot.writer.clone().lock_owned()).await
        else {
            return Ok(Reply::error("busy", "the same file is being received now"));
        };
        let part = match self.partial_dir() {
            Ok(dir) => dir.join(&key),
            Err(e) => return Ok(io_reply(e)),
        };
        let (mut file, mut digest, offset) = match open_part(&part, size).await {
            Ok(opened) => opened,
            Err(e) => return Ok(io_reply(e)),
        };
        write_message(
            stream,
            &Reply::Ok {
                offset: Some(offset),
            },
        )
        .await?;
        tracing::info!(name, size, offset, "receiving a file");

        let mut received = offset;
        let mut buf = vec![0u8; 256 * 1024];
        let outcome: Result<bool, ServiceError> = async {
            loop {
                let n = tokio::select! {
                    n = stream.read(&mut buf) => n?,
                    _ = superseded.changed() => {
                        return Err(ServiceError::Protocol("a newer transfer of the same file took over".into()));
                    }
                };
                if n == 0 {
                    return Ok(true);
                }
                if received + n as u64 > size {
                    return Ok(false);
                }
                file.write_all(&buf[..n]).await?;
                digest.update(&buf[..n]);
                received += n as u64;
            }
        }
        .await;
        // What arrived stays in the part, also when the sender broke off.
        file.flush().await?;
        file.sync_data().await?;
        drop(file);
        if !outcome? {
            let _ = std::fs::remove_file(&part);
            return Ok(Reply::error(
                "too_long",
                format!("more than the announced {size} bytes"),
            ));
        }
        if received < size {
            return Ok(Reply::error(
                "incomplete",
                format!("{received} of {size} bytes arrived; send again to go on"),
            ));
        }
        let got = data_encoding::HEXLOWER.encode(digest.finish().as_ref());
        if got != sha256 {
            let _ = std::fs::remove_file(&part);
            return Ok(Reply::error(
                "hash_mismatch",
                format!("the file's SHA-256 is {got}, not {sha256}"),
            ));
        }
        let saved = match self.publish(&part, name) {
            Ok(saved) => saved,
            Err(e) => return Ok(io_reply(e)),
        };
        tracing::info!(name, saved, size, "file received");
        Ok(Reply::Saved {
            path: saved,
            bytes: size,
            sha256: got,
        })
    }

    /// Links the verified part under the first free one of `name`, `name (1)`, …, and removes
    /// the part. A hard link never replaces what is there, and never follows a link at the
    /// target.
    fn publish(&self, part: &Path, name: &str) -> std::io::Result<String> {
        for candidate in candidate_names(name) {
            match std::fs::hard_link(part, self.dir.join(&candidate)) {
                Ok(()) => {
                    std::fs::remove_file(part)?;
                    return Ok(candidate);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::new(
            ErrorKind::AlreadyExists,
            format!("{name} and 999 variants of it are taken"),
        ))
    }
}

/// Opens (or creates) the part, without following a link; hashes what it already holds. A
/// part longer than the file is stale and starts over.
async fn open_part(
    part: &Path,
    size: u64,
) -> std::io::Result<(tokio::fs::File, ring::digest::Context, u64)> {
    let std_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(part)?;
    let mut file = tokio::fs::File::from_std(std_file);
    let mut len = file.metadata().await?.len();
    if len > size {
        file.set_len(0).await?;
        len = 0;
    }
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut hashed = 0u64;
    file.seek(std::io::SeekFrom::Start(0)).await?;
    while hashed < len {
        let want = buf.len().min((len - hashed) as usize);
        let n = file.read(&mut buf[..want]).await?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
        hashed += n as u64;
    }
    file.seek(std::io::SeekFrom::Start(hashed)).await?;
    Ok((file, digest, hashed))
}

/// Bytes free for an unprivileged user on the file system of `dir`, when it can be told.
fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs(3) reads a NUL-terminated path and fills the struct we own.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// The reply for a file-system failure, logged here since the sender sees only its text.
fn io_reply(e: std::io::Error) -> Reply {
    tracing::warn!(error = %e, "inbox");
    Reply::error("io", e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_leave_the_inbox_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/../../etc/passwd",
            "/etc/passwd",
            "dir/file",
            "..\\x",
            "a\0b",
            "line\nbreak",
            ".fog-partial",
            &"x".repeat(256),
        ] {
            assert!(safe_file_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "a.bin",
            ".hidden",
            "..dots",
            "résumé.pdf",
            "with space",
            "x..y",
        ] {
            assert_eq!(safe_file_name(good), Ok(good));
        }
    }

    #[test]
    fn taken_names_get_a_number_before_the_extension() {
        let names: Vec<String> = candidate_names("report.tar").take(3).collect();
        assert_eq!(names, ["report.tar", "report (1).tar", "report (2).tar"]);
        let names: Vec<String> = candidate_names(".profile").take(2).collect();
        assert_eq!(names, [".profile", ".profile (1)"]);
    }

    #[test]
    fn free_space_is_known_for_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_space(dir.path()).is_some_and(|free| free > 0));
        assert_eq!(free_space(&dir.path().join("missing")), None);
    }

    #[test]
    fn only_lowercase_sha256_hex_is_a_digest() {
        assert!(is_sha256_hex(&"a".repeat(64)));
        assert!(!is_sha256_hex(&"A".repeat(64)));
        assert!(!is_sha256_hex(&"a".repeat(63)));
        assert!(!is_sha256_hex(&"../".repeat(22)[..64]));
    }

    #[test]
    fn publishing_never_overwrites_and_never_follows_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::open(dir.path()).unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("victim");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, inbox.dir().join("f.txt")).unwrap();
        let part = inbox.partial_dir().unwrap().join("p");
        std::fs::write(&part, b"new").unwrap();
        assert_eq!(inbox.publish(&part, "f.txt").unwrap(), "f (1).txt");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert_eq!(
            std::fs::read(inbox.dir().join("f (1).txt")).unwrap(),
            b"new"
        );
        assert!(!part.exists());
    }

    #[tokio::test]
    async fn a_part_that_is_a_link_is_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::open(dir.path()).unwrap();
        let outside = tempfile::tempdir().unwrap();
        let part = inbox.partial_dir().unwrap().join("p");
        std::os::unix::fs::symlink(outside.path().join("x"), &part).unwrap();
        assert!(open_part(&part, 10).await.is_err());
        assert!(!outside.path().join("x").exists());
    }
}
