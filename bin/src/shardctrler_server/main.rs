//! `shardctrler-server`: one member of the shard controller's Raft group.
//!
//! Thin on purpose: parse the flags (and the optional TOML file), validate them into one
//! [`ServerConfig`], install logging, then hand everything to `quorumkv_shardctrler::serve`
//! until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{CommandFactory, FromArgMatches, Parser};
use quorumkv_bin::{LogArgs, TlsArgs};
use quorumkv_common::{parse_members, Member, TlsMaterial};
use quorumkv_raft_core::{Bootstrap, NodeConfig};
use quorumkv_shardctrler::{MemberOptions, CONTROLLER_GROUP_ID, DEFAULT_SHARDS};

/// The largest shard count accepted: every configuration lists every shard, and clients fetch
/// whole configurations.
const MAX_SHARDS: usize = 16_384;

const ABOUT: &str =
    "One member of the QuorumKV shard controller (a Raft group, normally 3 members).";

const LONG_ABOUT: &str = "\
One member of the QuorumKV shard controller: a Raft group, normally of 3 members, that keeps the
numbered history of configurations (which replica group owns each shard, and the servers of every
group). Clients and KV servers use it through the ShardCtrler gRPC API; `shardctrler-client` is the
command-line client.

Every member is started with the same --cluster list and its own --id. All traffic (between
members, and from clients) is gRPC over mutual TLS on one port; certificates come from
`quorumkv-certs`.

Every flag can also be set by its environment variable (shown below) or by a key of the --config
file named like the long flag (`data-dir = \"/var/lib/qkv\"`, `shards = 64`, `tls-ca = ...`).
Flags override the environment, which overrides the file.";

const EXAMPLES: &str = "\
Example (three members on one machine):
  shardctrler-server --id 1 --cluster 1=localhost:7101,2=localhost:7102,3=localhost:7103 \\
      --data-dir /tmp/ctl1 --tls-ca certs/ca.pem --tls-cert certs/node.pem --tls-key certs/node-key.pem";

/// Flags of `shardctrler-server`.
#[derive(Debug, Parser)]
#[command(name = "shardctrler-server", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXAMPLES)]
struct Args {
    /// TOML file with values for any of the flags below, keyed by long flag name. Flags and
    /// environment variables override it.
    #[arg(long, env = "QKV_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// This member's id in the controller group: non-zero, one of the ids in --cluster, never
    /// reused for another member.
    #[arg(long, env = "QKV_ID")]
    id: u64,

    /// All controller members as `id=host:port,...` (the same list on every member). Hosts are
    /// DNS names (or IPs) that every member and client can resolve, and that the members'
    /// certificates name.
    #[arg(long, env = "QKV_CLUSTER", value_name = "ID=HOST:PORT,...")]
    cluster: String,

    /// Address to listen on for gRPC (clients and the other members), `ip:port`. Default:
    /// 0.0.0.0 and the port of this member's entry in --cluster.
    #[arg(long, env = "QKV_LISTEN", value_name = "IP:PORT")]
    listen: Option<String>,

    /// Directory of this member's durable state (Raft log, snapshots, the stored shard count).
    /// Created if missing; never share it between members.
    #[arg(long, env = "QKV_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,

    /// Plain-HTTP admin address, `ip:port`, for health checks (`GET /health/alive` answers 200
    /// while the process runs). Off when not given.
    #[arg(long, env = "QKV_ADMIN_LISTEN", value_name = "IP:PORT")]
    admin_listen: Option<String>,

    /// Number of shards, fixed when the controller is created. A member whose data directory
    /// was created with another count refuses to start.
    #[arg(long, env = "QKV_SHARDS", default_value_t = DEFAULT_SHARDS)]
    shards: usize,

    /// Start as a new, empty member of an existing controller group (it waits until the
    /// group's leader adds it) instead of creating the group. Ignored once the data directory
    /// holds state.
    #[arg(long, env = "QKV_JOIN")]
    join: bool,

    #[command(flatten)]
    tls: TlsArgs,

    #[command(flatten)]
    log: LogArgs,
}

/// The validated configuration of one member.
#[derive(Debug)]
struct ServerConfig {
    id: u64,
    members: Vec<Member>,
    listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
    data_dir: PathBuf,
    num_shards: usize,
    bootstrap: Bootstrap,
    tls: TlsMaterial,
}

impl ServerConfig {
    /// Checks every flag and names the one that is wrong.
    fn validate(args: &Args) -> anyhow::Result<Self> {
        let members = parse_members(&args.cluster).context("--cluster")?;
        let own = members.iter().find(|m| m.id == args.id).with_context(|| {
            let ids: Vec<String> = members.iter().map(|m| m.id.to_string()).collect();
            format!(
                "--id {} is not in --cluster (ids {})",
                args.id,
                ids.join(", ")
            )
        })?;
        let listen = match &args.listen {
            Some(l) => parse_socket(l, "--listen")?,
            None => SocketAddr::from(([0, 0, 0, 0], own.addr.port())),
        };
        let admin_listen = args
            .admin_listen
            .as_deref()
            .map(|a| parse_socket(a, "--admin-listen"))
            .transpose()?;
        if admin_listen.is_some_and(|a| a.port() == listen.port()) {
            bail!("--admin-listen must use another port than --listen ({listen})");
        }
        if args.shards == 0 || args.shards > MAX_SHARDS {
            bail!(
                "--shards {} must be between 1 and {MAX_SHARDS}",
                args.shards
            );
        }
        if args.data_dir.as_os_str().is_empty() {
            bail!("--data-dir is empty");
        }
        let tls = args.tls.load().context("TLS files")?;
        Ok(ServerConfig {
            id: args.id,
            members,
            listen,
            admin_listen,
            data_dir: args.data_dir.clone(),
            num_shards: args.shards,
            bootstrap: if args.join {
                Bootstrap::Join
            } else {
                Bootstrap::NewGroup
            },
            tls,
        })
    }

    fn member_options(&self) -> MemberOptions {
        let mut raft = NodeConfig::new(self.id, CONTROLLER_GROUP_ID, &self.data_dir);
        raft.members = self
            .members
            .iter()
            .map(|m| (m.id, m.addr.to_string()))
            .collect();
        raft.bootstrap = self.bootstrap.clone();
        MemberOptions {
            raft,
            num_shards: self.num_shards,
            tls: self.tls.clone(),
        }
    }
}

fn parse_socket(s: &str, flag: &str) -> anyhow::Result<SocketAddr> {
    s.parse()
        .map_err(|_| anyhow::anyhow!("{flag} {s:?}: expected ip:port, e.g. 0.0.0.0:7100"))
}

/// Where the config file is: `--config FILE`, `--config=FILE` or `QKV_CONFIG`. Looked up
/// before clap runs, because the file supplies clap's defaults.
fn config_path(argv: &[std::ffi::OsString]) -> Option<PathBuf> {
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--" {
            break;
        }
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os("QKV_CONFIG").map(PathBuf::from)
}

/// Makes every key of the TOML file the default value of the flag of the same long name, so
/// that clap's own precedence (flag, then environment, then default) gives "flags and the
/// environment override the file".
fn apply_config_file(mut cmd: clap::Command, path: &Path) -> anyhow::Result<clap::Command> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--config {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("--config {}: {}", path.display(), e.message()))?;
    for (key, value) in table {
        let long = key.replace('_', "-");
        let id = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
            .map(|a| a.get_id().clone())
            .with_context(|| format!("--config {}: unknown key {key:?}", path.display()))?;
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => bail!(
                "--config {}: key {key:?} must be a string, an integer or a boolean, not {}",
                path.display(),
                other.type_str()
            ),
        };
        // clap keeps defaults as 'static strings; leaking a few bytes once at start-up is fine.
        let value: &'static str = Box::leak(value.into_boxed_str());
        cmd = cmd.mut_arg(id, |a| a.default_value(value).required(false));
    }
    Ok(cmd)
}

fn parse_args() -> anyhow::Result<Args> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut cmd = Args::command();
    if let Some(path) = config_path(&argv) {
        cmd = apply_config_file(cmd, &path)?;
    }
    let matches = cmd.get_matches_from(argv);
    Ok(Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
}

/// Serves the admin endpoints (today only liveness) until the process ends.
async fn serve_admin(listener: tokio::net::TcpListener) {
    let app = axum::Router::new().route("/health/alive", axum::routing::get(|| async { "ok\n" }));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "admin server failed");
    }
}

async fn run(cfg: ServerConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let admin = match cfg.admin_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on --admin-listen {addr}"))?;
            tracing::info!(%addr, "admin endpoint serving");
            Some(tokio::spawn(serve_admin(l)))
        }
        None => None,
    };
    let result =
        quorumkv_shardctrler::serve(cfg.member_options(), listener, shutdown_signal()).await;
    if let Some(a) = admin {
        a.abort();
    }
    Ok(result?)
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|args| {
        let cfg = ServerConfig::validate(&args)?;
        args.log.init()?;
        tracing::info!(id = cfg.id, listen = %cfg.listen, data_dir = %cfg.data_dir.display(), shards = cfg.num_shards, "starting shard controller member");
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(run(cfg))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("shardctrler-server: error: {line}");
            ExitCode::FAILURE
        }
    }
}
