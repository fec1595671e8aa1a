//! Sending a file to a peer's inbox.

use std::path::Path;
use std::time::Instant;

use fog_core::Connection;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{open_service, read_message, Reply, Request, ServiceError};

/// A file that arrived.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SendReport {
    /// Its size.
    pub bytes: u64,
    /// Its SHA-256, lowercase hex, as the receiver verified it.
    pub sha256: String,
    /// From opening the stream to the receiver's confirmation.
    pub seconds: f64,
    /// Its name in the receiver's inbox.
    pub path: String,
    /// Bytes the receiver already had from an interrupted transfer.
    pub resumed_from: u64,
}

/// SHA-256 of the file at `path`, lowercase hex, and its size.
pub async fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
        size += n as u64;
    }
    Ok((
        data_encoding::HEXLOWER.encode(digest.finish().as_ref()),
        size,
    ))
}

/// Sends the file at `path` to the peer's inbox, going on from where an interrupted transfer
/// of the same content stopped. `progress` hears (bytes the peer has, total) as it goes.
pub async fn send_file(
    conn: &Connection,
    path: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<SendReport, ServiceError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            ServiceError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{}: no file name in UTF-8", path.display()),
            ))
        })?
        .to_string();
    let (sha256, size) = hash_file(path).await?;
    let started = Instant::now();
    let request = Request::Send {
        name,
        size,
        sha256: sha256.clone(),
    };
    let (mut stream, offset) = open_service(conn, &request).await?;
    let offset = offset.unwrap_or(0).min(size);
    progress(offset, size);
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut sent = offset;
    while sent < size {
        let want = buf.len().min((size - sent) as usize);
        let n = file.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(ServiceError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was sent", path.display()),
            )));
        }
        stream.write_all(&buf[..n]).await?;
        sent += n as u64;
        progress(sent, size);
    }
    stream.shutdown().await?;
    match read_message(&mut stream).await? {
        Reply::Saved {
            path,
            bytes,
            sha256: verified,
        } if bytes == size && verified == sha256 => Ok(SendReport {
            bytes,
            sha256,
            seconds: started.elapsed().as_secs_f64(),
            path,
            resumed_from: offset,
        }),
        Reply::Error { kind, message } => Err(ServiceError::Refused { kind, message }),
        other => Err(ServiceError::Protocol(format!(
            "unexpected reply {other:?}"
        ))),
    }
}
