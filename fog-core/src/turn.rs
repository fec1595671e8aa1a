//! TURN pieces both the relay and its clients need: `turn:HOST:PORT?transport=udp|tcp` URLs
//! (RFC 7065), as relays are announced and configured, and the framing of TURN over TCP
//! (RFC 8656 §12.5): STUN messages carry their length, ChannelData is padded to four bytes.

use std::fmt;
use std::str::FromStr;

use tokio::io::AsyncReadExt;

/// How a node reaches the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TurnTransport {
    /// TURN over UDP.
    Udp,
    /// TURN over TCP (for networks that block UDP).
    Tcp,
}

/// A parsed TURN URL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TurnUrl {
    /// Host name or IP.
    pub host: String,
    /// Port (3478 when the URL has none).
    pub port: u16,
    /// UDP unless the URL says `transport=tcp`.
    pub transport: TurnTransport,
}

impl FromStr for TurnUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("turn:")
            .ok_or_else(|| format!("{s:?} is not a turn: URL"))?;
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let transport = match query {
            None => TurnTransport::Udp,
            Some(q) => match q.strip_prefix("transport=") {
                Some(t) if t.eq_ignore_ascii_case("udp") => TurnTransport::Udp,
                Some(t) if t.eq_ignore_ascii_case("tcp") => TurnTransport::Tcp,
                _ => return Err(format!("{s:?}: the query may only be transport=udp|tcp")),
            },
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: unclosed IPv6 bracket"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{s:?}: bad port {p:?}"))?,
            None => 3478,
        };
        Ok(TurnUrl {
            host: host.to_string(),
            port,
            transport,
        })
    }
}

impl fmt::Display for TurnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let transport = match self.transport {
            TurnTransport::Udp => "udp",
            TurnTransport::Tcp => "tcp",
        };
        write!(f, "turn:{host}:{}?transport={transport}", self.port)
    }
}

/// The largest TURN message on a stream (a relay reads datagrams into 1500-byte buffers).
pub const MAX_MESSAGE: usize = 1500;

/// How long one message on the stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Bytes of the message itself (STUN message, or ChannelData header and data).
    pub message: usize,
    /// Bytes it takes on the stream (ChannelData padding included).
    pub total: usize,
}

/// Why a stream cannot be cut into messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first byte starts neither a STUN message nor ChannelData.
    #[error("neither STUN nor ChannelData (first byte {0:#04x})")]
    Unknown(u8),
    /// A STUN length that is not a multiple of 4.
    #[error("STUN length {0} is not a multiple of 4")]
    Misaligned(usize),
    /// Larger than [`MAX_MESSAGE`].
    #[error("a {0}-byte message is larger than {MAX_MESSAGE}")]
    TooLarge(usize),
}

/// The length of the message whose first four bytes are `header`.
pub fn frame_len(header: [u8; 4]) -> Result<Frame, FrameError> {
    let length = u16::from_be_bytes([header[2], header[3]]) as usize;
    let frame = match header[0] >> 6 {
        0b00 => {
            if length & 3 != 0 {
                return Err(FrameError::Misaligned(length));
            }
            Frame {
                message: 20 + length,
                total: 20 + length,
            }
        }
        0b01 => Frame {
            message: 4 + length,
            total: 4 + length.div_ceil(4) * 4,
        },
        _ => return Err(FrameError::Unknown(header[0])),
    };
    if frame.message > MAX_MESSAGE {
        return Err(FrameError::TooLarge(frame.message));
    }
    Ok(frame)
}

/// `message` as it goes on a stream: ChannelData padded to a multiple of four bytes.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = message.to_vec();
    if message.first().is_some_and(|b| b >> 6 == 0b01) {
        out.resize(message.len().div_ceil(4) * 4, 0);
    }
    out
}

/// Reads one message from `stream` (without the padding).
pub async fn read_frame<R: AsyncReadExt + Unpin>(stream: &mut R) -> std::io::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await?;
    let frame =
        frame_len(header).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut message = vec![0u8; frame.total];
    message[..4].copy_from_slice(&header);
    stream.read_exact(&mut message[4..]).await?;
    message.truncate(frame.message);
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_round_trip() {
        let u: TurnUrl = "turn:203.0.113.1:3479?transport=tcp".parse().unwrap();
        assert_eq!(u.host, "203.0.113.1");
        assert_eq!(u.port, 3479);
        assert_eq!(u.transport, TurnTransport::Tcp);
        assert_eq!(u.to_string(), "turn:203.0.113.1:3479?transport=tcp");
        let d: TurnUrl = "turn:relay.example".parse().unwrap();
        assert_eq!((d.port, d.transport), (3478, TurnTransport::Udp));
        let v6: TurnUrl = "turn:[2001:db8::1]:5000".parse().unwrap();
        assert_eq!(v6.host, "2001:db8::1");
        assert_eq!(v6.to_string(), "turn:[2001:db8::1]:5000?transport=udp");
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        for bad in [
            "stun:1.2.3.4",
            "turn:",
            "turn:1.2.3.4:0",
            "turn:1.2.3.4:x",
            "turn:1.2.3.4?transport=sctp",
            "turn:[::1",
        ] {
            assert!(bad.parse::<TurnUrl>().is_err(), "{bad}");
        }
    }
}
