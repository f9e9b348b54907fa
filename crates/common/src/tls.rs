//! Mutual TLS for every gRPC connection, from PEM files.
//!
//! A node holds one certificate that serves both as its server identity and as its client
//! identity towards peers (the generator gives it both ServerAuth and ClientAuth). Servers
//! require a client certificate issued by the cluster CA; clients verify that the server's
//! certificate, issued by the same CA, names the host they dialled.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::CommonError;

/// Paths of the three PEM files a node or client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA certificate; peers must present certificates it issued.
    pub ca: PathBuf,
    /// This node's (or client's) certificate.
    pub cert: PathBuf,
    /// The private key of `cert`.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The conventional layout written by the certificate generator: `DIR/ca.pem`,
    /// `DIR/NAME.pem`, `DIR/NAME-key.pem`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        }
    }

    /// Reads the three files.
    pub fn load(&self) -> Result<TlsMaterial, CommonError> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| CommonError::io(p, e));
        let ca = read(&self.ca)?;
        let cert = read(&self.cert)?;
        let key = read(&self.key)?;
        for (what, pem, path) in [("CA", &ca, &self.ca), ("certificate", &cert, &self.cert)] {
            if !pem.starts_with(b"-----BEGIN CERTIFICATE-----") {
                return Err(CommonError::InvalidArgument(format!(
                    "{}: the {what} file is not a PEM certificate",
                    path.display()
                )));
            }
        }
        if !key.starts_with(b"-----BEGIN") || !key.windows(11).any(|w| w == b"PRIVATE KEY") {
            return Err(CommonError::InvalidArgument(format!(
                "{}: not a PEM private key",
                self.key.display()
            )));
        }
        Ok(TlsMaterial { ca, cert, key })
    }
}

/// Loaded PEM material; cheap to clone, turns into tonic configurations.
#[derive(Clone)]
pub struct TlsMaterial {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsMaterial { .. }")
    }
}

impl TlsMaterial {
    /// Material from PEM strings already in memory (tests, generated certificates).
    pub fn from_pem(ca: &str, cert: &str, key: &str) -> Self {
        TlsMaterial {
            ca: ca.as_bytes().to_vec(),
            cert: cert.as_bytes().to_vec(),
            key: key.as_bytes().to_vec(),
        }
    }

    /// Server side: present our certificate and require a client certificate from the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
    }

    /// Client side: trust only the cluster CA, present our certificate, and verify that the
    /// server's certificate names `server_name` (the host part of the address we dial).
    pub fn client_config(&self, server_name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .domain_name(server_name)
    }
}

/// Installs rustls's ring crypto provider as the process default, so that rustls never has to
/// guess between providers. Idempotent; binaries and test harnesses call it once at start.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
