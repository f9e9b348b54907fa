//! `quorumkv-certs`: generates the cluster CA and node, client and admin certificates with
//! rcgen, so that no openssl is needed. Files: `DIR/ca.pem`, `DIR/ca-key.pem`, `DIR/NAME.pem`,
//! `DIR/NAME-key.pem` (keys are written with mode 0600). Every certificate carries its role
//! (`quorumkv_common::auth`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use quorumkv_common::certs::{write_pem, Ca};
use quorumkv_common::Role;

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
    /// Issue a certificate of one role signed by the CA in --out (replacing NAME.pem if it
    /// exists). A node certificate needs every DNS name / IP its peers and clients dial it by
    /// (e.g. each StatefulSet pod's FQDN); client and admin certificates need none.
    Issue {
        /// Base name of the files (NAME.pem, NAME-key.pem) and the certificate's common name.
        name: String,
        /// What the holder may do: `node` (servers: Raft and group-to-group traffic, reads),
        /// `client` (reads and writes of keys, controller queries) or `admin` (a client that
        /// may also join/leave/move groups and change memberships).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// A DNS name or IP the certificate is valid for; repeat or separate with commas
        /// (required for a node).
        #[arg(long = "san", value_delimiter = ',')]
        sans: Vec<String>,
    },
    /// Print what a certificate file holds: its subject, role, names, issuer and validity
    /// (one `key: value` per line; every certificate of a bundle). For scripts and for
    /// checking a CA rotation.
    Show {
        /// The PEM file (a certificate, or a bundle such as ca.pem).
        file: PathBuf,
    },
    /// Everything a local cluster needs, idempotently: the CA (kept if present), a `node`
    /// certificate for localhost and 127.0.0.1 (plus any --san), an `admin` and a `client`
    /// certificate. Existing files are kept unless they lack their role (certificates from
    /// before roles): those are issued again.
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

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
        .map_err(|e: quorumkv_common::CommonError| e.to_string())
}

fn issue(ca: &Ca, dir: &Path, name: &str, role: Role, sans: &[String]) -> anyhow::Result<()> {
    if name.is_empty() || name.contains(['/', '\\']) || name == "ca" {
        bail!("invalid certificate name {name:?}");
    }
    let pem = ca.issue(name, role, sans)?;
    write_pem(dir, name, &pem)?;
    println!("wrote {}", dir.join(format!("{name}.pem")).display());
    Ok(())
}

/// The role of the certificate at `path`: `None` when there is no such file, `Some(None)` for
/// a certificate without a role.
fn existing_role(path: &Path) -> anyhow::Result<Option<Option<Role>>> {
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let material = quorumkv_common::TlsMaterial::from_pem("", &String::from_utf8_lossy(&pem), "");
    Ok(Some(
        material
            .role()
            .with_context(|| path.display().to_string())?,
    ))
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
        Command::Issue { name, role, sans } => issue(&load_ca(dir)?, dir, &name, role, &sans)?,
        Command::Show { file } => {
            let pem =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            for line in quorumkv_common::certs::describe(&pem)
                .with_context(|| file.display().to_string())?
            {
                println!("{line}");
            }
        }
        Command::Dev { sans } => {
            let ca = if has_ca { load_ca(dir)? } else { new_ca(dir)? };
            let mut node_sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            node_sans.extend(sans);
            for role in [Role::Node, Role::Admin, Role::Client] {
                let name = role.name();
                let path = dir.join(format!("{name}.pem"));
                let sans = if role == Role::Node {
                    &node_sans[..]
                } else {
                    &[]
                };
                match existing_role(&path)? {
                    Some(found) if found == Some(role) => println!("kept {}", path.display()),
                    Some(_) => {
                        println!("{} has no {name} role: issuing it again", path.display());
                        issue(&ca, dir, name, role, sans)?;
                    }
                    None => issue(&ca, dir, name, role, sans)?,
                }
            }
        }
    }
    Ok(())
}
