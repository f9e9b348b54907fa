//! Certificates for test clusters on loopback: one of each role (see `quorumkv_common::auth`).

use quorumkv_common::certs::Ca;
use quorumkv_common::{Role, TlsMaterial};

/// A CA with a node certificate valid for `localhost` and `127.0.0.1` (what members and
/// servers use, also towards each other), an admin certificate (what a test uses to change
/// configurations and memberships, and to read and write keys) and a client certificate.
pub struct TestPki {
    pub ca: Ca,
    pub node: TlsMaterial,
    pub admin: TlsMaterial,
    pub client: TlsMaterial,
}

impl TestPki {
    pub fn new() -> Self {
        quorumkv_common::tls::install_crypto_provider();
        let ca = Ca::generate("quorumkv-test-ca").expect("generate CA");
        TestPki {
            node: Self::material(&ca, Role::Node),
            admin: Self::material(&ca, Role::Admin),
            client: Self::material(&ca, Role::Client),
            ca,
        }
    }

    /// Material of `role` signed by `ca` (common name: the role's name), trusting `ca` only.
    pub fn material(ca: &Ca, role: Role) -> TlsMaterial {
        let leaf = ca
            .issue(role.name(), role, &["localhost".into(), "127.0.0.1".into()])
            .expect("issue certificate");
        TlsMaterial::from_pem(&ca.pem().cert, &leaf.cert, &leaf.key)
    }

    /// A certificate as issued before roles existed (servers treat it as a node's).
    pub fn material_without_role(ca: &Ca) -> TlsMaterial {
        let leaf = ca
            .issue_without_role("legacy", &["localhost".into(), "127.0.0.1".into()])
            .expect("issue certificate");
        TlsMaterial::from_pem(&ca.pem().cert, &leaf.cert, &leaf.key)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
