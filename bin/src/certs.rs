//! `quorumkv-certs`: generates the cluster CA and node/client certificates with rcgen, so that
//! no openssl is needed. Files: `DIR/ca.pem`, `DIR/ca-key.pem`, `DIR/NAME.pem`,
//! `DIR/NAME-key.pem` (keys are written with mode 0600).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use quorumkv_common::certs::{write_pem, Ca};

/// Generate TLS certificates for a QuorumKV cluster (mutual TLS between every node and client).
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Directory that holds (or will hold) the CA and certificates.
    #[arg(long, short, env = "QKV_CERTS_DIR", default_value = "certs")]
    out: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new cluster CA (ca.pem, ca-key.pem). Refuses to replace an existing one unless
    /// --force, because every certificate it signed would stop working.
    Ca {
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate signed by the CA in --out, valid for the given DNS names / IPs.
    /// Nodes need every name their peers and clients dial them by (e.g. each StatefulSet
    /// pod's FQDN); client certificates need at least one name.
    Issue {
        /// Base name of the files (NAME.pem, NAME-key.pem) and the certificate's common name.
        name: String,
        /// A DNS name or IP the certificate is valid for; repeat or separate with commas.
        #[arg(long = "san", value_delimiter = ',', required = true)]
        sans: Vec<String>,
    },
    /// Everything a local cluster needs, idempotently: the CA (kept if present), `node` and
    /// `client` certificates for localhost and 127.0.0.1 (plus any --san).
    Dev {
        /// Extra DNS names / IPs for the node certificate.
        #[arg(long = "san", value_delimiter = ',')]
        sans: Vec<String>,
    },
}

fn load_ca(dir: &Path) -> anyhow::Result<Ca> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca-key.pem");
    let cert = std::fs::read_to_string(&cert_path).with_context(|| {
        format!(
            "cannot read {} (create a CA first: quorumkv-certs --out {} ca)",
            cert_path.display(),
            dir.display()
        )
    })?;
    let key = std::fs::read_to_string(&key_path)
        .with_context(|| format!("cannot read {}", key_path.display()))?;
    Ok(Ca::from_pem(&cert, &key)?)
}

fn new_ca(dir: &Path) -> anyhow::Result<Ca> {
    let ca = Ca::generate("QuorumKV cluster CA")?;
    write_pem(dir, "ca", ca.pem())?;
    Ok(ca)
}

fn issue(ca: &Ca, dir: &Path, name: &str, sans: &[String]) -> anyhow::Result<()> {
    if name.is_empty() || name.contains(['/', '\\']) || name == "ca" {
        bail!("invalid certificate name {name:?}");
    }
    let pem = ca.issue(name, sans)?;
    write_pem(dir, name, &pem)?;
    println!("wrote {}", dir.join(format!("{name}.pem")).display());
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("quorumkv-certs: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = &cli.out;
    let has_ca = dir.join("ca.pem").exists();
    match cli.command {
        Command::Ca { force } => {
            if has_ca && !force {
                bail!(
                    "{} already exists; use --force to replace the CA (this invalidates every \
                     certificate it issued)",
                    dir.join("ca.pem").display()
                );
            }
            new_ca(dir)?;
            println!("wrote {}", dir.join("ca.pem").display());
        }
        Command::Issue { name, sans } => issue(&load_ca(dir)?, dir, &name, &sans)?,
        Command::Dev { sans } => {
            let ca = if has_ca { load_ca(dir)? } else { new_ca(dir)? };
            let mut node_sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            node_sans.extend(sans);
            for (name, sans) in [("node", node_sans.clone()), ("client", node_sans)] {
                if dir.join(format!("{name}.pem")).exists() {
                    println!("kept {}", dir.join(format!("{name}.pem")).display());
                } else {
                    issue(&ca, dir, name, &sans)?;
                }
            }
        }
    }
    Ok(())
}
