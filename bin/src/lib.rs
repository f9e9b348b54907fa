//! Helpers shared by the QuorumKV binaries (and only by them): logging setup, the TLS flags
//! every server and client takes, and what every server does the same way (the optional
//! `--config` TOML file, socket flags, the shutdown signal, the admin HTTP endpoint).
//! Libraries never read argv or env and never install a tracing subscriber; the binaries do it
//! here, once. [`member`] is the `member` subcommand both CLIs share.

pub mod member;

/// Every binary of this package links this library, so this is their allocator: under load
/// glibc's malloc took ~16% of all CPU (perf, 256 concurrent clients); mimalloc is much
/// cheaper for the many small, short-lived buffers of gRPC and Raft.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process (Linux; elsewhere a no-op). mimalloc
/// advises the kernel to back its arenas with 2 MiB pages, and sled allocates a fresh
/// segment-sized IO buffer for every flush, so each Raft persist faulted in (and zeroed) a whole
/// 2 MiB page: 7% of the Raft threads' time under load. Measured with `shardkv-client bench`,
/// 256 clients, puts, five alternating runs each: median 10.3k/s with THP, 11.9k/s without.
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and touches no memory of
        // ours; it only sets a flag on this process's address space.
        // Best effort: without it the servers only run slower. It runs before logging is set
        // up, so a failure (an old kernel) is not reported.
        let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
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
        use std::io::IsTerminal;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // Colour codes only for a person at a terminal, never into log files or collectors.
            .with_ansi(std::io::stderr().is_terminal());
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

/// The flags both clients share: where the controller is, TLS, output format and deadline.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Shard controller members, `host:port,...` (any of them; the leader is found and
    /// followed, and the key/value client learns from it which group serves each key).
    #[arg(
        long,
        env = "QKV_CTRLERS",
        value_delimiter = ',',
        required = true,
        value_name = "HOST:PORT,..."
    )]
    pub ctrlers: Vec<String>,

    #[command(flatten)]
    pub tls: TlsArgs,

    /// Print JSON instead of text (for scripts).
    #[arg(long, env = "QKV_JSON", global = true)]
    pub json: bool,

    /// Give up on a request after this long, retries and the configuration lookup included:
    /// `10s`, `1m`, `500ms`, or bare seconds (`2.5`). A change that timed out may still be
    /// applied: read (or query) to find out. In `bench`, the deadline of every operation.
    #[arg(
        long,
        env = "QKV_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION",
        value_parser = parse_duration,
        global = true
    )]
    pub timeout: std::time::Duration,
}

impl ClientArgs {
    /// The client's certificates, or a one-line reason naming the file at fault.
    pub fn tls_material(&self) -> Result<TlsMaterial, String> {
        self.tls.load().map_err(|err| format!("TLS files: {err:#}"))
    }

    /// The deadline of a request, or why `--timeout` is wrong.
    pub fn deadline(&self) -> Result<std::time::Duration, String> {
        if self.timeout.is_zero() {
            Err("--timeout must be positive".into())
        } else {
            Ok(self.timeout)
        }
    }
}

/// Parses a duration flag, as Go and etcd tools write them: a number and a unit (`500ms`,
/// `5s`, `2m`, `1h`; fractions such as `1.5s` and sums such as `1m30s` too), or a bare number
/// of seconds (`10`, `0.5`) as the flags took before. Every flag that takes a time uses this.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    const MAX_SECS: f64 = 100.0 * 365.0 * 86_400.0;
    let bad =
        |why: &str| format!("invalid duration {s:?}: {why} (e.g. 500ms, 5s, 2m, 1h, or seconds)");
    let text = s.trim();
    if text.is_empty() {
        return Err(bad("empty"));
    }
    let number_end = |t: &str| {
        t.find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len())
    };
    let number = |t: &str| -> Result<f64, String> {
        t.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| bad("not a number"))
    };
    if number_end(text) == text.len() {
        let secs = number(text)?;
        return if secs <= MAX_SECS {
            Ok(Duration::from_secs_f64(secs))
        } else {
            Err(bad("too long"))
        };
    }
    let mut rest = text;
    let mut total = 0.0;
    while !rest.is_empty() {
        let n = number_end(rest);
        if n == 0 {
            return Err(bad("expected a number before each unit"));
        }
        let value = number(&rest[..n])?;
        rest = &rest[n..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(bad("a unit is missing")),
            other => return Err(bad(&format!("unknown unit {other:?}"))),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    if total > MAX_SECS {
        return Err(bad("too long"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Parses an `ip:port` flag value, naming the flag when it is not one.
pub fn parse_socket(s: &str, flag: &str) -> anyhow::Result<SocketAddr> {
    s.parse()
        .map_err(|_| anyhow::anyhow!("{flag} {s:?}: expected ip:port, e.g. 0.0.0.0:7100"))
}

/// Parses the process's arguments into `A`, taking defaults from the optional TOML file named by
/// `--config FILE` (or `QKV_CONFIG`): every key of the file is the default of the flag with the
/// same long name (`data-dir = "/var/lib/qkv"`; `_` works for `-`), so that clap's own precedence
/// (flag, then environment, then default) gives "flags and the environment override the file".
/// Bad flags exit with clap's usage error (status 2); a bad file is an error.
pub fn parse_args_with_config<A: clap::Parser>() -> anyhow::Result<A> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut cmd = A::command();
    if let Some(path) = config_path(&argv) {
        cmd = apply_config_file(cmd, &path)?;
    }
    let matches = cmd.get_matches_from(argv);
    Ok(A::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
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

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: call it first thing, so that a signal arriving while the member
/// is still starting (opening storage, restoring a snapshot) is kept and stops it as soon as it
/// serves. Without a handler the signal would be lost — as PID 1 of a container the process
/// ignores every signal it does not handle, and the pod would wait out its grace period.
/// Must be called within a tokio runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>, name: &'static str| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch {name}");
                    std::future::pending::<()>().await
                }
            }
        };
        tokio::select! {
            _ = wait(term, "SIGTERM") => {}
            _ = wait(int, "SIGINT") => {}
        }
        tracing::info!("shutdown requested");
    }
}

/// `SERVER probe [URL] [--timeout DURATION]`: checks a health URL and exits 0 when it answers 2xx,
/// 1 otherwise (one line on stderr) — for container healthchecks in images without curl.
#[derive(Debug, clap::Parser)]
#[command(about = "Check a health URL: exit 0 when it answers 2xx, 1 otherwise")]
struct ProbeArgs {
    /// The URL to check (plain HTTP), e.g. the admin port's `/health/ready` or `/health/alive`.
    #[arg(default_value = "http://127.0.0.1:8000/health/ready")]
    url: String,
    /// How long to wait for the answer: `2s`, `500ms`, or bare seconds.
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = parse_duration)]
    timeout: std::time::Duration,
}

/// Runs the `probe` subcommand when it is the first argument; `None` otherwise (then the
/// server's own flags are parsed).
pub fn run_probe_if_asked(program: &str) -> Option<std::process::ExitCode> {
    use clap::Parser;
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).map(|a| a == "probe") != Some(true) {
        return None;
    }
    let args = ProbeArgs::parse_from(
        std::iter::once(std::ffi::OsString::from(format!("{program} probe")))
            .chain(argv[2..].iter().cloned()),
    );
    let timeout = args.timeout.clamp(
        std::time::Duration::from_millis(1),
        std::time::Duration::from_secs(3600),
    );
    Some(match quorumkv_admin::probe(&args.url, timeout) {
        Ok(code) if (200..300).contains(&code) => std::process::ExitCode::SUCCESS,
        Ok(code) => {
            eprintln!("{program} probe: {} answered {code}", args.url);
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{program} probe: {}: {e}", args.url);
            std::process::ExitCode::FAILURE
        }
    })
}

/// The exit of a server's `main`: success, or the error as one line on stderr and status 1.
pub fn exit_status(program: &str, result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("{program}: error: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The flags every server takes to be one member of a Raft group, as given.
pub struct MemberFlags<'a> {
    pub id: u64,
    pub cluster: &'a str,
    pub listen: Option<&'a str>,
    pub admin_listen: Option<&'a str>,
    pub data_dir: &'a Path,
    pub join: bool,
    pub tls: &'a TlsArgs,
}

/// The validated Raft-member part of a server's configuration.
#[derive(Debug)]
pub struct RaftMember {
    pub id: u64,
    pub members: Vec<quorumkv_common::Member>,
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub bootstrap: quorumkv_raft_core::Bootstrap,
    pub tls: TlsMaterial,
}

impl RaftMember {
    /// Checks the member flags and names the one that is wrong: --cluster parses and lists
    /// --id, --listen defaults to 0.0.0.0 and this member's port, the admin port differs from
    /// the gRPC port, --data-dir is not empty, the TLS files load and the certificate is a
    /// node's.
    pub fn validate(f: MemberFlags<'_>) -> anyhow::Result<Self> {
        let members = quorumkv_common::parse_members(f.cluster).context("--cluster")?;
        let own = members.iter().find(|m| m.id == f.id).with_context(|| {
            let ids: Vec<String> = members.iter().map(|m| m.id.to_string()).collect();
            format!("--id {} is not in --cluster (ids {})", f.id, ids.join(", "))
        })?;
        let listen = match f.listen {
            Some(l) => parse_socket(l, "--listen")?,
            None => SocketAddr::from(([0, 0, 0, 0], own.addr.port())),
        };
        let admin_listen = f
            .admin_listen
            .map(|a| parse_socket(a, "--admin-listen"))
            .transpose()?;
        if admin_listen.is_some_and(|a| a.port() == listen.port()) {
            bail!("--admin-listen must use another port than --listen ({listen})");
        }
        if f.data_dir.as_os_str().is_empty() {
            bail!("--data-dir is empty");
        }
        let tls = f.tls.load().context("TLS files")?;
        match tls.role().context("--tls-cert")? {
            // No role: a certificate from before roles, which peers treat as a node's.
            Some(quorumkv_common::Role::Node) | None => {}
            Some(other) => bail!(
                "--tls-cert {} is a {other} certificate; a server needs a node certificate \
                 (quorumkv-certs issue NAME --role node --san HOST,...)",
                f.tls.cert.display()
            ),
        }
        Ok(RaftMember {
            id: f.id,
            members,
            listen,
            admin_listen,
            data_dir: f.data_dir.to_path_buf(),
            bootstrap: if f.join {
                quorumkv_raft_core::Bootstrap::Join
            } else {
                quorumkv_raft_core::Bootstrap::NewGroup
            },
            tls,
        })
    }

    /// The Raft configuration of this member of group `group_id` (production defaults).
    pub fn raft_config(&self, group_id: u64) -> quorumkv_raft_core::NodeConfig {
        let mut raft = quorumkv_raft_core::NodeConfig::new(self.id, group_id, &self.data_dir);
        raft.members = self
            .members
            .iter()
            .map(|m| (m.id, m.addr.to_string()))
            .collect();
        raft.bootstrap = self.bootstrap.clone();
        raft
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_human_durations_and_bare_seconds() {
        for (text, want) in [
            ("5s", Duration::from_secs(5)),
            ("2m", Duration::from_secs(120)),
            ("500ms", Duration::from_millis(500)),
            ("1h", Duration::from_secs(3600)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5s", Duration::from_millis(1500)),
            ("10", Duration::from_secs(10)),
            ("0.25", Duration::from_millis(250)),
            ("0", Duration::ZERO),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in [
            "", "s", "5x", "-1", "-5s", "5 s", "1e3", "ms5", "1..2s", "1e400",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("5x")
            .unwrap_err()
            .contains("unknown unit \"x\""));
    }
}
