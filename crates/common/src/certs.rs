//! Certificate generation with `rcgen`: a cluster CA, and the node, client and admin
//! certificates it signs.
//!
//! Every leaf carries its [`Role`] as a URI subject alternative name (see [`crate::auth`]).
//! Node certificates get both ServerAuth and ClientAuth, because a node is a server to its
//! clients and a client to its peers, and need the DNS names (or IPs) others dial the node by:
//! `localhost` and `127.0.0.1` for local clusters, every pod's stable FQDN in Kubernetes.
//! Client and admin certificates get ClientAuth only, so that no client can pose as a server,
//! and need no DNS name.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::auth::Role;
use crate::CommonError;

fn cert_err(e: rcgen::Error) -> CommonError {
    CommonError::Certificate(e.to_string())
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A certificate authority able to sign leaves.
pub struct Ca {
    pem: Pem,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Generates a new self-signed CA.
    pub fn generate(common_name: &str) -> Result<Self, CommonError> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        let cert = params.self_signed(&key).map_err(cert_err)?;
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok(Ca {
            pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads an existing CA from its PEM certificate and key.
    pub fn from_pem(cert: &str, key: &str) -> Result<Self, CommonError> {
        let key_pair = KeyPair::from_pem(key).map_err(cert_err)?;
        let issuer = Issuer::from_ca_cert_pem(cert, key_pair).map_err(cert_err)?;
        Ok(Ca {
            pem: Pem {
                cert: cert.to_string(),
                key: key.to_string(),
            },
            issuer,
        })
    }

    pub fn pem(&self) -> &Pem {
        &self.pem
    }

    /// Issues a leaf certificate of `role` for `common_name`, valid for the given DNS names /
    /// IPs (at least one for a node; none needed for a client or admin).
    pub fn issue(
        &self,
        common_name: &str,
        role: Role,
        sans: &[String],
    ) -> Result<Pem, CommonError> {
        if role == Role::Node && sans.is_empty() {
            return Err(CommonError::InvalidArgument(format!(
                "node certificate {common_name:?} needs at least one DNS name or IP"
            )));
        }
        let uri = rcgen::string::Ia5String::try_from(role.uri()).map_err(cert_err)?;
        self.leaf(common_name, sans, Some(uri), role == Role::Node)
    }

    /// Issues a certificate as versions before roles did: no role, server and client use.
    /// Servers treat it as a node certificate ([`crate::auth`]); only for tests of that
    /// compatibility.
    pub fn issue_without_role(
        &self,
        common_name: &str,
        sans: &[String],
    ) -> Result<Pem, CommonError> {
        self.leaf(common_name, sans, None, true)
    }

    fn leaf(
        &self,
        common_name: &str,
        sans: &[String],
        role_uri: Option<rcgen::string::Ia5String>,
        server: bool,
    ) -> Result<Pem, CommonError> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut params = CertificateParams::new(sans.to_vec()).map_err(cert_err)?;
        params.subject_alt_names.extend(role_uri.map(SanType::URI));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = if server {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_err)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// What the PEM certificates in `pem` hold, as `key: value` lines (a blank line between two
/// certificates): subject, role (`none` for a certificate from before roles), DNS names and
/// IPs, issuer, validity. For `quorumkv-certs show`.
pub fn describe(pem: &[u8]) -> Result<Vec<String>, CommonError> {
    use x509_parser::extensions::GeneralName;
    let mut out = Vec::new();
    for (i, block) in x509_parser::pem::Pem::iter_from_buffer(pem).enumerate() {
        let block = block.map_err(|e| CommonError::Certificate(format!("not PEM: {e}")))?;
        let cert = block
            .parse_x509()
            .map_err(|e| CommonError::Certificate(format!("unreadable certificate: {e}")))?;
        if i > 0 {
            out.push(String::new());
        }
        let role = crate::auth::role_of_certificate(&block.contents)?;
        let names: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some(d.to_string()),
                        GeneralName::IPAddress(ip) => match ip.len() {
                            4 => <[u8; 4]>::try_from(*ip)
                                .ok()
                                .map(|b| std::net::Ipv4Addr::from(b).to_string()),
                            16 => <[u8; 16]>::try_from(*ip)
                                .ok()
                                .map(|b| std::net::Ipv6Addr::from(b).to_string()),
                            _ => None,
                        },
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(format!("subject: {}", cert.subject()));
        out.push(format!(
            "role: {}",
            role.map_or("none".to_string(), |r| r.to_string())
        ));
        out.push(format!("ca: {}", cert.is_ca()));
        out.push(format!("names: {}", names.join(",")));
        out.push(format!("issuer: {}", cert.issuer()));
        out.push(format!("not_after: {}", cert.validity().not_after));
    }
    if out.is_empty() {
        return Err(CommonError::Certificate("no PEM certificate".into()));
    }
    Ok(out)
}

/// Writes `DIR/NAME.pem` and `DIR/NAME-key.pem` (the key readable by the owner only).
pub fn write_pem(dir: &Path, name: &str, pem: &Pem) -> Result<(), CommonError> {
    std::fs::create_dir_all(dir).map_err(|e| CommonError::io(dir, e))?;
    let cert_path = dir.join(format!("{name}.pem"));
    std::fs::write(&cert_path, &pem.cert).map_err(|e| CommonError::io(&cert_path, e))?;
    let key_path = dir.join(format!("{name}-key.pem"));
    write_private(&key_path, pem.key.as_bytes())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CommonError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path).map_err(|e| CommonError::io(path, e))?;
    f.write_all(bytes).map_err(|e| CommonError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_leaves_from_new_and_reloaded_ca() {
        let ca = Ca::generate("test-ca").unwrap();
        let leaf = ca
            .issue(
                "node-1",
                Role::Node,
                &["localhost".into(), "127.0.0.1".into()],
            )
            .unwrap();
        assert!(leaf.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        let again = Ca::from_pem(&ca.pem().cert, &ca.pem().key).unwrap();
        again
            .issue("node-2", Role::Node, &["localhost".into()])
            .unwrap();
        assert!(ca.issue("x", Role::Node, &[]).is_err());
        // Clients and admins need no DNS name: the role is their subject alternative name.
        ca.issue("ops", Role::Admin, &[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_pem(dir.path(), "node-1", &leaf).unwrap();
        crate::TlsFiles {
            ca: dir.path().join("node-1.pem"),
            cert: dir.path().join("node-1.pem"),
            key: dir.path().join("node-1-key.pem"),
        }
        .load()
        .unwrap();
    }
}
