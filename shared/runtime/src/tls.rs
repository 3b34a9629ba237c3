//! The listeners' TLS certificate (`TPS_TLS_CERT` / `TPS_TLS_KEY`), loaded
//! and checked once at start-up. rustls with the ring provider, named
//! explicitly: the tree carries no other provider (no aws-lc-rs), and no
//! process-wide default has to be installed.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::ConfigError;

/// A listener's certificate chain and key, as one rustls server
/// configuration per protocol (the ALPN each listener offers differs).
#[derive(Clone)]
pub struct ServerTls {
    cert_path: String,
    /// ALPN `h2`: gRPC.
    grpc: Arc<ServerConfig>,
    /// ALPN `http/1.1`: the HTTP facade, the board, /metrics.
    http: Arc<ServerConfig>,
}

/// Shows where the certificate came from, never the key.
impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// Which protocol a listener speaks, for ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Http,
}

fn error(var: &str, value: &str, reason: impl fmt::Display) -> ConfigError {
    ConfigError::new(var, value, reason)
}

impl ServerTls {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key
    /// (PKCS#8, PKCS#1 or SEC1) and checks they belong together.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, ConfigError> {
        let cert_name = cert.display().to_string();
        let key_name = key.display().to_string();
        let cert_pem = std::fs::read(cert).map_err(|e| error("TPS_TLS_CERT", &cert_name, e))?;
        let key_pem = std::fs::read(key).map_err(|e| error("TPS_TLS_KEY", &key_name, e))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| error("TPS_TLS_CERT", &cert_name, e))?;
        if chain.is_empty() {
            return Err(error(
                "TPS_TLS_CERT",
                &cert_name,
                "no PEM certificate in it",
            ));
        }
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            error(
                "TPS_TLS_KEY",
                &key_name,
                format!("no usable PEM private key: {e}"),
            )
        })?;
        let config = |alpn: &[u8]| -> Result<Arc<ServerConfig>, ConfigError> {
            let mut config =
                ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| error("TPS_TLS_CERT", &cert_name, e))?
                    .with_no_client_auth()
                    .with_single_cert(chain.clone(), key_der.clone_key())
                    .map_err(|e| {
                        error(
                            "TPS_TLS_KEY",
                            &key_name,
                            format!("does not fit the certificate: {e}"),
                        )
                    })?;
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(config))
        };
        Ok(Self {
            grpc: config(b"h2")?,
            http: config(b"http/1.1")?,
            cert_path: cert_name,
        })
    }

    /// The acceptor for a listener speaking `protocol`.
    pub fn acceptor(&self, protocol: Protocol) -> TlsAcceptor {
        TlsAcceptor::from(match protocol {
            Protocol::Grpc => self.grpc.clone(),
            Protocol::Http => self.http.clone(),
        })
    }
}
