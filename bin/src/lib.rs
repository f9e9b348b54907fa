//! Helpers shared by the QuorumKV binaries (and only by them): logging setup and the TLS
//! flags every server and client takes. Libraries never read argv or env and never install a
//! tracing subscriber; the binaries do it here, once.

use std::path::PathBuf;

use anyhow::Context;
use quorumkv_common::{TlsFiles, TlsMaterial};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging flags shared by the servers.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log filter, e.g. `info` or `info,raft=debug` (tracing's EnvFilter syntax).
    #[arg(long = "log-level", env = "QKV_LOG", default_value = "info")]
    pub level: String,
    /// Log format.
    #[arg(
        long = "log-format",
        env = "QKV_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub format: LogFormat,
}

impl LogArgs {
    /// Installs the global tracing subscriber (logs go to stderr).
    pub fn init(&self) -> anyhow::Result<()> {
        let filter = tracing_subscriber::EnvFilter::try_new(&self.level)
            .with_context(|| format!("invalid --log-level {:?}", self.level))?;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().try_init(),
        }
        .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
    }
}

/// The PEM files of a node or client (mutual TLS everywhere).
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// CA certificate that issued every node and client certificate of the cluster.
    #[arg(long = "tls-ca", env = "QKV_TLS_CA")]
    pub ca: PathBuf,
    /// This process's certificate (PEM).
    #[arg(long = "tls-cert", env = "QKV_TLS_CERT")]
    pub cert: PathBuf,
    /// The private key of --tls-cert (PEM).
    #[arg(long = "tls-key", env = "QKV_TLS_KEY")]
    pub key: PathBuf,
}

impl TlsArgs {
    /// Loads the files, naming the one that is missing or malformed.
    pub fn load(&self) -> anyhow::Result<TlsMaterial> {
        quorumkv_common::tls::install_crypto_provider();
        Ok(TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
        .load()?)
    }
}
