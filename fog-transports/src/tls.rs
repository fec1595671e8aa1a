//! TLS with key pinning: a self-signed certificate made from the node's Ed25519 key, and
//! verifiers that accept exactly one expected peer id (dialer) or learn it (responder).
//!
//! There is no certificate authority: a peer id *is* the key. The verifiers take the Ed25519 key
//! out of the certificate and check the TLS 1.3 handshake signature with that very key, so a peer
//! that passes holds the private key of the id it presents.

use std::sync::Arc;

use fog_core::{Identity, PeerId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

/// ALPN of fog's QUIC connections.
pub const ALPN: &[u8] = b"fog/1";

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (33 bytes) }; the 32-byte key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Failures building TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate could not be made.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("tls config: {0}")]
    Config(#[from] rustls::Error),
}

/// The peer id in a certificate: the Ed25519 key of its SubjectPublicKeyInfo.
///
/// The key found here is the one the handshake signature is checked against, so a certificate
/// that carries some other key elsewhere gains nothing.
pub fn peer_id_of_certificate(der: &[u8]) -> Option<PeerId> {
    let at = der
        .windows(ED25519_SPKI_PREFIX.len())
        .position(|w| w == ED25519_SPKI_PREFIX)?;
    let key = der.get(at + ED25519_SPKI_PREFIX.len()..at + ED25519_SPKI_PREFIX.len() + 32)?;
    let id = PeerId::from_bytes(key.try_into().ok()?);
    id.verifying_key().ok()?;
    Some(id)
}

/// A self-signed certificate and its private key, made from the node key.
pub fn certificate(
    identity: &Identity,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let pkcs8 = PrivatePkcs8KeyDer::from(identity.to_pkcs8_der());
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)?;
    let mut params = rcgen::CertificateParams::new(vec!["fog".to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, identity.peer_id().to_string());
    let cert = params.self_signed(&key_pair)?;
    Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(pkcs8)))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks a TLS 1.3 handshake signature against the key in `cert`.
fn verify_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(Error::PeerMisbehaved(
            rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
        ));
    }
    let peer = peer_id_of_certificate(cert.as_ref()).ok_or(Error::InvalidCertificate(
        rustls::CertificateError::BadEncoding,
    ))?;
    peer.verify(message, dss.signature())
        .map_err(|_| Error::InvalidCertificate(rustls::CertificateError::BadSignature))?;
    Ok(HandshakeSignatureValid::assertion())
}

/// Accepts only a server whose key is `expected`.
#[derive(Debug)]
struct PinnedServer {
    expected: PeerId,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match peer_id_of_certificate(end_entity.as_ref()) {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            Some(id) => Err(Error::General(format!(
                "peer presented key {id}, expected {}",
                self.expected
            ))),
            None => Err(Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Requires a client certificate with an Ed25519 key; which key is checked after the handshake
/// against the peer the signal server introduced.
#[derive(Debug)]
struct AnyPeerClient;

impl ClientCertVerifier for AnyPeerClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        peer_id_of_certificate(end_entity.as_ref())
            .map(|_| ClientCertVerified::assertion())
            .ok_or(Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            ))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Client TLS config that presents `identity` and accepts only `expected`.
pub fn client_config(
    identity: &Identity,
    expected: PeerId,
) -> Result<rustls::ClientConfig, TlsError> {
    let (cert, key) = certificate(identity)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServer { expected }))
        .with_client_auth_cert(vec![cert], key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Server TLS config that presents `identity` and requires a client key.
pub fn server_config(identity: &Identity) -> Result<rustls::ServerConfig, TlsError> {
    let (cert, key) = certificate(identity)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(AnyPeerClient))
        .with_single_cert(vec![cert], key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_carries_the_node_key() {
        let identity = Identity::generate();
        let (cert, _) = certificate(&identity).unwrap();
        assert_eq!(
            peer_id_of_certificate(cert.as_ref()),
            Some(identity.peer_id())
        );
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(peer_id_of_certificate(b""), None);
        assert_eq!(peer_id_of_certificate(&ED25519_SPKI_PREFIX), None);
    }

    #[test]
    fn configs_build() {
        let identity = Identity::generate();
        client_config(&identity, Identity::generate().peer_id()).unwrap();
        server_config(&identity).unwrap();
    }
}
