//! TLS as libpq's `sslmode` means it: `disable` (plain), `prefer` (the
//! default: TLS when the server offers it, else plain), `require` (TLS,
//! the certificate not checked), `verify-ca` and `verify-full` (TLS, the
//! certificate checked against the system's roots and the host name; rustls
//! has no CA-only check, so `verify-ca` checks the name too). Like libpq,
//! `prefer` and `require` accept a self-signed certificate (Debian's stock
//! `ssl-cert-snakeoil`): they protect against listeners on the wire, not
//! against an impostor; use `verify-full` for that. `SSL_CERT_FILE` /
//! `SSL_CERT_DIR` replace the system roots (a private CA).
//!
//! tokio-postgres knows only disable/prefer/require, so the verifying modes
//! are passed to it as `require` and the check is ours.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::StoreError;

/// Whether the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verify {
    Certificate,
    Nothing,
}

/// `url` with a verifying `sslmode` turned into `require` (which the driver
/// understands), and whether the certificate is to be checked.
pub(crate) fn ssl_mode(url: &str) -> (String, Verify) {
    for mode in ["verify-full", "verify-ca"] {
        let setting = format!("sslmode={mode}");
        if url.contains(&setting) {
            return (
                url.replace(&setting, "sslmode=require"),
                Verify::Certificate,
            );
        }
    }
    (url.to_owned(), Verify::Nothing)
}

pub(crate) fn connector(verify: Verify) -> Result<MakeRustlsConnect, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| StoreError::Internal(format!("postgres TLS: {error}")))?;
    let config = match verify {
        Verify::Certificate => {
            let mut roots = rustls::RootCertStore::empty();
            let loaded = rustls_native_certs::load_native_certs();
            for error in &loaded.errors {
                tracing::warn!(%error, "a system root certificate could not be loaded");
            }
            let (_added, _ignored) = roots.add_parsable_certificates(loaded.certs);
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptionOnly(provider)))
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

/// libpq's `require`: any certificate, but the handshake's signatures are
/// still checked (the session is encrypted with the key that certificate
/// holds).
#[derive(Debug)]
struct EncryptionOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptionOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifying_modes_become_require_with_a_check() {
        assert_eq!(
            ssl_mode("postgres://h/db?sslmode=verify-full"),
            (
                "postgres://h/db?sslmode=require".into(),
                Verify::Certificate
            )
        );
        assert_eq!(
            ssl_mode("host=h sslmode=verify-ca"),
            ("host=h sslmode=require".into(), Verify::Certificate)
        );
        assert_eq!(
            ssl_mode("postgres://h/db?sslmode=require"),
            ("postgres://h/db?sslmode=require".into(), Verify::Nothing)
        );
        assert_eq!(
            ssl_mode("postgres://h/db"),
            ("postgres://h/db".into(), Verify::Nothing)
        );
    }
}
