//! Certificates for test clusters on loopback.

use quorumkv_common::certs::Ca;
use quorumkv_common::TlsMaterial;

/// A CA with one node certificate valid for `localhost` and `127.0.0.1`.
pub struct TestPki {
    pub ca: Ca,
    pub node: TlsMaterial,
}

impl TestPki {
    pub fn new() -> Self {
        quorumkv_common::tls::install_crypto_provider();
        let ca = Ca::generate("quorumkv-test-ca").expect("generate CA");
        let node = Self::material(&ca, "node");
        TestPki { ca, node }
    }

    /// Material for another holder signed by `ca`.
    pub fn material(ca: &Ca, name: &str) -> TlsMaterial {
        let leaf = ca
            .issue(name, &["localhost".into(), "127.0.0.1".into()])
            .expect("issue certificate");
        TlsMaterial::from_pem(&ca.pem().cert, &leaf.cert, &leaf.key)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
