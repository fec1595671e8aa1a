//! Port forwarding: a peer's stream carried to a local TCP service the node exposes, and
//! nothing else.

use std::net::SocketAddr;

use fog_core::{BiStream, Connection};

use super::{
    close_with, describe_target, open_service, write_message, Reply, Request, ServiceError,
};

/// The TCP services a node lets its peers reach, as given (`HOST:PORT`) and resolved once, when
/// the node starts. A request names one by the string it was exposed as or by one of its
/// addresses; the node never resolves a name a peer sends.
#[derive(Clone, Debug, Default)]
pub struct Exposed {
    services: Vec<(String, Vec<SocketAddr>)>,
}

impl Exposed {
    /// Nothing exposed.
    pub fn none() -> Self {
        Exposed::default()
    }

    /// Resolves each `HOST:PORT`.
    pub async fn resolve(specs: &[String]) -> Result<Exposed, std::io::Error> {
        let mut services = Vec::new();
        for spec in specs {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host(spec.as_str())
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("--expose {spec}: {e}")))?
                .collect();
            if addrs.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("--expose {spec}: no address"),
                ));
            }
            services.push((spec.clone(), addrs));
        }
        Ok(Exposed { services })
    }

    /// Whether nothing is exposed.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The exposed services, as given.
    pub fn specs(&self) -> impl Iterator<Item = &str> {
        self.services.iter().map(|(spec, _)| spec.as_str())
    }

    /// The addresses to connect to for a request for `to`, or why not.
    pub fn lookup(&self, to: Option<&str>) -> Result<&[SocketAddr], Reply> {
        let Some(to) = to else {
            return match &self.services[..] {
                [] => Err(Reply::error("not_exposed", "this node exposes no service")),
                [(_, addrs)] => Ok(addrs),
                _ => Err(Reply::error(
                    "ambiguous",
                    format!(
                        "this node exposes {} services: name one",
                        self.services.len()
                    ),
                )),
            };
        };
        let literal: Option<SocketAddr> = to.parse().ok();
        self.services
            .iter()
            .find(|(spec, addrs)| spec == to || literal.is_some_and(|a| addrs.contains(&a)))
            .map(|(spec, addrs)| match literal {
                // The one address asked for, when it was given as one.
                Some(a) if spec != to => {
                    std::slice::from_ref(addrs.iter().find(|x| **x == a).expect("found"))
                }
                _ => &addrs[..],
            })
            .ok_or_else(|| Reply::error("not_exposed", format!("{to} is not exposed")))
    }
}

/// Serves a forward request for `to` on `stream`: connects to the exposed service and copies
/// both ways until both sides are done.
pub async fn serve_forward(
    exposed: &Exposed,
    to: Option<&str>,
    mut stream: BiStream,
) -> Result<(), ServiceError> {
    let addrs = match exposed.lookup(to) {
        Ok(addrs) => addrs,
        Err(refusal) => {
            tracing::info!(target = %describe_target(to, None), "forward refused");
            return close_with(&mut stream, &refusal).await;
        }
    };
    let tcp = match tokio::net::TcpStream::connect(addrs).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let reply = Reply::error(
                "unreachable",
                format!("{}: {e}", describe_target(to, addrs.first().copied())),
            );
            return close_with(&mut stream, &reply).await;
        }
    };
    let _ = tcp.set_nodelay(true);
    write_message(&mut stream, &Reply::Ok { offset: None }).await?;
    let mut tcp = tcp;
    tokio::io::copy_bidirectional(&mut stream, &mut tcp).await?;
    Ok(())
}

/// Opens a stream to the peer's exposed service `to` (or its only one); the stream carries the
/// service's bytes once the peer accepted.
pub async fn forward_stream(conn: &Connection, to: Option<&str>) -> Result<BiStream, ServiceError> {
    let request = Request::Forward {
        to: to.map(str::to_string),
    };
    Ok(open_service(conn, &request).await?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposed(specs: &[(&str, &[&str])]) -> Exposed {
        Exposed {
            services: specs
                .iter()
                .map(|(spec, addrs)| {
                    (
                        spec.to_string(),
                        addrs.iter().map(|a| a.parse().unwrap()).collect(),
                    )
                })
                .collect(),
        }
    }

    fn refusal_kind(r: Result<&[SocketAddr], Reply>) -> String {
        match r {
            Err(Reply::Error { kind, .. }) => kind,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn only_what_was_exposed_is_reachable() {
        let e = exposed(&[
            ("localhost:8000", &["127.0.0.1:8000", "[::1]:8000"]),
            ("127.0.0.1:22", &["127.0.0.1:22"]),
        ]);
        assert_eq!(e.lookup(Some("localhost:8000")).unwrap().len(), 2);
        assert_eq!(
            e.lookup(Some("[::1]:8000")).unwrap(),
            &["[::1]:8000".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(e.lookup(Some("127.0.0.1:22")).unwrap().len(), 1);
        for not in [
            "127.0.0.1:8001",
            "localhost:22",
            "10.0.0.1:8000",
            "",
            "garbage",
        ] {
            assert_eq!(refusal_kind(e.lookup(Some(not))), "not_exposed", "{not}");
        }
        assert_eq!(refusal_kind(e.lookup(None)), "ambiguous");
    }

    #[test]
    fn the_only_service_is_the_default_and_none_means_none() {
        let one = exposed(&[("127.0.0.1:8000", &["127.0.0.1:8000"])]);
        assert_eq!(one.lookup(None).unwrap().len(), 1);
        assert_eq!(refusal_kind(Exposed::none().lookup(None)), "not_exposed");
        assert_eq!(
            refusal_kind(Exposed::none().lookup(Some("127.0.0.1:8000"))),
            "not_exposed"
        );
    }
}
