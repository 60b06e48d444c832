//! TLS for `sslmode=prefer|require` (tokio-postgres reads the mode from the
//! URL; `prefer` is its default and falls back to plain text when the
//! server offers no TLS). rustls always verifies the server's certificate
//! against the system's roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` add more), so
//! `require` here is as strict as libpq's `verify-full`.

use std::sync::Arc;

use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::StoreError;

pub(crate) fn connector() -> Result<MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        tracing::warn!(%error, "a system root certificate could not be loaded");
    }
    let (_added, _ignored) = roots.add_parsable_certificates(loaded.certs);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|error| StoreError::Internal(format!("postgres TLS: {error}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}
