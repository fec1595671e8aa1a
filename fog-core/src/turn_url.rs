//! `turn:HOST:PORT?transport=udp|tcp` (RFC 7065), as relays are announced and configured.

use std::fmt;
use std::str::FromStr;

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
