//! Mutual TLS for every gRPC connection, from PEM files.
//!
//! A node holds one certificate that serves both as its server identity and as its client
//! identity towards peers (the generator gives it both ServerAuth and ClientAuth). Servers
//! require a client certificate issued by the cluster CA; clients verify that the server's
//! certificate, issued by the same CA, names the host they dialled. What the peer may then do
//! depends on the role its certificate carries ([`crate::auth`]).
//!
//! The CA file may hold several CA certificates (a bundle, concatenated PEM): a certificate
//! signed by any of them is trusted. That is how a cluster rolls to a new CA without downtime
//! (old and new CA in every `ca.pem`, re-issue, then drop the old one; see the README). Every
//! block of the file must be a readable certificate: a damaged bundle is refused at start
//! rather than silently trusting fewer CAs than it lists.

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
        certificates(&ca, &self.ca, "CA")?;
        certificates(&cert, &self.cert, "certificate")?;
        if !key.starts_with(b"-----BEGIN") || !key.windows(11).any(|w| w == b"PRIVATE KEY") {
            return Err(CommonError::InvalidArgument(format!(
                "{}: not a PEM private key",
                self.key.display()
            )));
        }
        Ok(TlsMaterial { ca, cert, key })
    }
}

/// The number of PEM certificates in `pem` (a file at `path`, holding `what`); an error when
/// there is none or one of them is unreadable.
fn certificates(pem: &[u8], path: &Path, what: &str) -> Result<usize, CommonError> {
    let invalid = |why: String| {
        CommonError::InvalidArgument(format!("{}: the {what} file {why}", path.display()))
    };
    let mut n = 0;
    for (i, block) in x509_parser::pem::Pem::iter_from_buffer(pem).enumerate() {
        let block = block.map_err(|e| invalid(format!("is not PEM (block {}): {e}", i + 1)))?;
        if block.label != "CERTIFICATE" {
            return Err(invalid(format!(
                "holds a {} where a CERTIFICATE belongs (block {})",
                block.label,
                i + 1
            )));
        }
        block.parse_x509().map_err(|e| {
            invalid(format!(
                "holds an unreadable certificate (block {}): {e}",
                i + 1
            ))
        })?;
        n += 1;
    }
    if n == 0 {
        return Err(invalid("is not a PEM certificate".into()));
    }
    Ok(n)
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

    /// The role our own certificate carries (`None`: issued before roles; see
    /// [`crate::auth`]).
    pub fn role(&self) -> Result<Option<crate::Role>, CommonError> {
        let block = x509_parser::pem::Pem::iter_from_buffer(&self.cert)
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| CommonError::Certificate("no PEM certificate".into()))?;
        crate::auth::role_of_certificate(&block.contents)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{write_pem, Ca};
    use crate::Role;

    /// A CA file may be a bundle (CA rotation): every certificate in it is loaded, comments
    /// between blocks are allowed, and a damaged block is refused instead of skipped.
    #[test]
    fn loads_ca_bundles_and_refuses_damaged_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (Ca::generate("old").unwrap(), Ca::generate("new").unwrap());
        let leaf = new
            .issue("node", Role::Node, &["localhost".into()])
            .unwrap();
        write_pem(dir.path(), "node", &leaf).unwrap();
        let bundle = format!(
            "# old CA, drop after the rotation\n{}# new CA\n{}",
            old.pem().cert,
            new.pem().cert
        );
        let files = TlsFiles::in_dir(dir.path(), "node");
        std::fs::write(&files.ca, &bundle).unwrap();
        let material = files.load().unwrap();
        assert_eq!(certificates(&material.ca, &files.ca, "CA").unwrap(), 2);
        assert_eq!(material.role().unwrap(), Some(Role::Node));

        let truncated = &bundle[..bundle.len() - 40];
        std::fs::write(&files.ca, truncated).unwrap();
        let err = files.load().unwrap_err().to_string();
        assert!(err.contains("block 2"), "{err}");
        std::fs::write(&files.ca, &leaf.key).unwrap();
        let err = files.load().unwrap_err().to_string();
        assert!(
            err.contains("PRIVATE KEY where a CERTIFICATE belongs"),
            "{err}"
        );
    }

    /// A missing file is named with the OS's reason, once, and the reason is not repeated as
    /// the error's source (which `{:#}` reporters would print again).
    #[test]
    fn a_missing_file_names_its_reason_once() {
        let dir = tempfile::tempdir().unwrap();
        let err = TlsFiles::in_dir(dir.path(), "node").load().unwrap_err();
        let text = err.to_string();
        assert!(
            text.ends_with("ca.pem: No such file or directory (os error 2)"),
            "{text}"
        );
        assert!(std::error::Error::source(&err).is_none());
    }
}
