//! HTTPS for the harness's blocking client, so a node started with `--tls` is reached like any
//! other: the harness trusts the certificates it is told of (each `--tls` node's self-signed
//! one, as it starts) and checks the served certificate against them, like any TLS client.
//! Pinning by fingerprint is tested through the CLI, which is where it lives.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// A byte stream, in clear or TLS.
pub trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

static TRUSTED: Mutex<Vec<CertificateDer<'static>>> = Mutex::new(Vec::new());

/// Trusts the (self-signed) certificate in a PEM file for the rest of the test run.
pub fn trust(cert_pem: &Path) {
    let cert = CertificateDer::from_pem_file(cert_pem).expect("a PEM certificate");
    TRUSTED.lock().unwrap_or_else(|p| p.into_inner()).push(cert);
}

/// TLS over `tcp` to `host` (`ip:port`), accepting the certificates [`trust`] was given.
pub fn wrap(host: &str, tcp: TcpStream) -> Box<dyn Stream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in TRUSTED.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        roots.add(cert.clone()).expect("a usable certificate");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let ip = host.rsplit_once(':').map_or(host, |(ip, _)| ip).trim_matches(['[', ']']);
    let name = ServerName::try_from(ip.to_string()).expect("server name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("TLS client");
    Box::new(rustls::StreamOwned::new(conn, tcp))
}
