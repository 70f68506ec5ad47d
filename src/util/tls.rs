//! TLS material shared by configuration checks and the upstream client.

use pingora_core::protocols::tls::CaType;
use pingora_core::utils::tls::{parse_x509, WrappedX509};
use std::sync::Arc;

/// The certificates of a PEM file, as Pingora's per-peer CA list.
pub fn load_ca_file(path: &str) -> Result<Arc<CaType>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}: not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no certificate in the file"));
    }
    Ok(certs
        .into_iter()
        .map(|der| WrappedX509::new(der.to_vec(), parse_x509))
        .collect::<Vec<_>>()
        .into())
}
