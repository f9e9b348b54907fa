//! `shardkv-client`: a QuorumKV cluster from the command line (put, get, append, delete,
//! status, bench, check, backup, restore, and `member` for a replica group's membership), on
//! top of the `quorumkv-shardkv-client` library.
//!
//! Exit status: 0 on success; 2 for bad arguments (as clap); 1 when a request fails (or `get`
//! finds no such key, or `bench` had no successful operation). Errors are one line on stderr.
//! `check` exits 1 when the history is not linearizable and 2 when it could not run at all.

mod backup;
mod bench;
mod check;
mod etcd;
mod status;

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser, Subcommand};
use quorumkv_bin::member::{self, AdminCall, MemberCmd};
use quorumkv_bin::ClientArgs;
use quorumkv_shardkv_client::{GroupCaller, KvClient, MAX_VALUE_BYTES};

const EXAMPLES: &str = "\
Examples:
  shardkv-client put user:1 alice
  shardkv-client get user:1                 (prints alice)
  shardkv-client append log:1 ,more
  shardkv-client delete user:1
  shardkv-client --hex put 00ff 0a0b0c      (binary key and value, given as hex)
  shardkv-client put photo:1 --value-file photo.jpg   (the value from a file, up to 1 MiB)
  tar c dir | shardkv-client put backup:1 -          (the value from stdin)
  shardkv-client status                     (every group: members, leader, shards)
  shardkv-client --json status              (for scripts)
  shardkv-client bench --clients 64 --duration 10 --read-ratio 0.9
  shardkv-client check --duration 60 --clients 8 --keys 10   (prove it linearizable)
  shardkv-client member --gid 1 list        (group 1's members, roles, leader)
  shardkv-client member --gid 1 add 4=kv4:7000   (kv4 started empty with --join first)
  shardkv-client member --gid 1 remove 1    (then stop member 1's server)
  shardkv-client member --gid 1 replace 2 5=kv5:7000
  shardkv-client member --gid 1 transfer 3
  shardkv-client backup --out /backups/qkv-$(date +%F).qkvb   (admin certificate)
  shardkv-client restore /backups/qkv-2026-12-01.qkvb         (into a cluster with the same shard count)

Exit status: 0 on success, 2 for bad arguments, 1 when the request fails (the reason is printed
on one line), when `get` finds no such key (`not found` on stderr), or when `bench` completed no
operation successfully. `check`: 0 when the history is linearizable, 1 when it is not, 2 when it
could not run. `backup`/`restore`: 0 when complete, 1 otherwise (a damaged or mismatched file is
refused before anything is restored).";

/// Command-line client of a QuorumKV cluster.
#[derive(Debug, Parser)]
#[command(name = "shardkv-client", version, after_help = EXAMPLES)]
struct Cli {
    #[command(flatten)]
    common: ClientArgs,

    /// Keys and values on the command line are hex (`00ff`), and `get` prints values as hex:
    /// for binary data. Otherwise they are taken and printed as given (UTF-8).
    #[arg(long, global = true)]
    hex: bool,

    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Set KEY to VALUE (prints nothing). The value is the argument, `-` for stdin, or
    /// --value-file.
    Put {
        /// The key (1 byte to 4 KiB).
        key: String,
        #[command(flatten)]
        value: ValueArg,
    },
    /// Print KEY's value followed by a newline; a missing key exits 1 with `not found`.
    Get {
        /// The key.
        key: String,
    },
    /// Append VALUE to KEY's value; a missing key counts as empty (prints nothing). The value
    /// is the argument, `-` for stdin, or --value-file.
    Append {
        /// The key (1 byte to 4 KiB).
        key: String,
        #[command(flatten)]
        value: ValueArg,
    },
    /// Remove KEY; removing a missing key succeeds too (prints nothing).
    Delete {
        /// The key.
        key: String,
    },
    /// Show every replica group: members (id, address, role, reachable or not), leader, term,
    /// applied index, configuration, and each shard it holds with its state, keys and bytes.
    Status,
    /// Load the cluster with concurrent clients and report throughput, latency percentiles
    /// (from an HDR histogram, per operation) and errors by kind.
    Bench(bench::BenchArgs),
    /// Check that the cluster is linearizable: concurrent clients put, append, delete and get
    /// fresh keys (deleted at the end), the history is recorded and checked key by key, and
    /// every violation is shown by the smallest history that proves it. Exit 0 when
    /// linearizable, 1 when not.
    Check(check::CheckArgs),
    /// A replica group's members: list, add, remove, replace, transfer leadership. The group's
    /// servers are taken from the latest configuration and its leader is followed. After an
    /// add, remove or replace the controller records the group's new server list (the
    /// members' addresses in id order), so clients and other groups find the new members. A
    /// new member must already run, started empty with `shardkv-server --join`.
    Member {
        /// The replica group.
        #[arg(long)]
        gid: u64,
        #[command(subcommand)]
        cmd: MemberCmd,
    },
    /// Back up every shard to one file, while the cluster serves (needs an admin
    /// certificate). Each shard is copied by the leader of its owning group at one log index,
    /// after a ReadIndex: every write acknowledged before the backup began is in the file;
    /// writes made while it runs may or may not be (shards are copied one after the other,
    /// each at its own index). The file also records the controller's latest configuration
    /// and the shard count, carries a format version and a crc32 on every record, and appears
    /// under its name only once complete and fsynced. Progress goes to stderr; the summary to
    /// stdout (--json: file, shards, keys, bytes, config). --timeout is how long one shard's
    /// copy may go without progress (leader changes and migrations are waited out within it).
    #[command(
        after_help = "Example:\n  shardkv-client backup --out /backups/qkv-$(date +%F).qkvb"
    )]
    Backup(backup::BackupArgs),
    /// Restore a backup into a cluster with the same number of shards (a new one, or one
    /// after a disaster; its addresses may differ). The whole file is checked first: a
    /// damaged file (bad checksum, truncated, another format version) or one of another shard
    /// count is refused with exit status 1 and nothing is written. Then every key is put
    /// through the ordinary client path: the target's replica groups must be joined; a key of
    /// the same name is overwritten; keys not in the backup are left alone; the controller's
    /// configuration is not restored (shards go where the target's configuration puts them).
    /// Running it again is safe. Prints what it restored (shards, keys). --timeout bounds each
    /// put; an admin or a client certificate will do.
    #[command(after_help = "Example:\n  shardkv-client restore /backups/qkv-2026-12-01.qkvb")]
    Restore(backup::RestoreArgs),
}

/// Where a `put`/`append` value comes from: exactly one of the argument and --value-file.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct ValueArg {
    /// The value (at most 1 MiB; hex with --hex). `-` reads it from stdin instead, byte for
    /// byte (a trailing newline is kept). A command line holds at most ~128 KiB: use `-` or
    /// --value-file for larger values.
    value: Option<String>,
    /// Read the value from this file, byte for byte (never hex), at most 1 MiB.
    #[arg(long, value_name = "FILE")]
    value_file: Option<std::path::PathBuf>,
}

impl ValueArg {
    /// The value's bytes: from the argument (hex with `--hex`), stdin, or the file; refused
    /// past the value limit without reading more than one byte beyond it.
    fn read(&self, hex: bool) -> Result<Vec<u8>, String> {
        use std::io::Read;
        let limited = |what: String, r: &mut dyn Read| {
            let mut buf = Vec::new();
            r.take(MAX_VALUE_BYTES as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(|e| format!("cannot read the value from {what}: {e}"))?;
            Ok::<_, String>(buf)
        };
        let value = match (&self.value, &self.value_file) {
            (Some(v), _) if v == "-" => limited("stdin".into(), &mut std::io::stdin().lock())?,
            (Some(v), _) => arg_bytes(v, hex, "value")?,
            (None, Some(path)) => {
                let mut f = std::fs::File::open(path)
                    .map_err(|e| format!("--value-file {}: {e}", path.display()))?;
                limited(format!("--value-file {}", path.display()), &mut f)?
            }
            (None, None) => unreachable!("clap requires the value or --value-file"),
        };
        quorumkv_shardkv_client::check_value(&value).map_err(reason)?;
        Ok(value)
    }
}

/// Why the library refused an argument (without its kind: clap says it is an invalid value).
fn reason(e: quorumkv_shardkv_client::KvError) -> String {
    match e {
        quorumkv_shardkv_client::KvError::InvalidArgument(why) => why,
        other => other.to_string(),
    }
}

/// `key`/`value` as bytes: UTF-8 as given, or decoded from hex with `--hex`.
fn arg_bytes(s: &str, hex: bool, what: &str) -> Result<Vec<u8>, String> {
    if !hex {
        return Ok(s.as_bytes().to_vec());
    }
    if !s.len().is_multiple_of(2) {
        return Err(format!("{what} {s:?} is not hex: odd number of digits"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| format!("{what} {s:?} is not hex"))
        })
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `put`/`get`/... request with its arguments decoded and checked against the limits.
enum Request {
    Put(Vec<u8>, Vec<u8>),
    Get(Vec<u8>),
    Append(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

impl Request {
    fn parse(cmd: &Cmd, hex: bool) -> Result<Option<Request>, String> {
        let key = |k: &str| {
            let k = arg_bytes(k, hex, "key")?;
            quorumkv_shardkv_client::check_key(&k).map_err(reason)?;
            Ok::<_, String>(k)
        };
        Ok(Some(match cmd {
            Cmd::Put { key: k, value: v } => Request::Put(key(k)?, v.read(hex)?),
            Cmd::Get { key: k } => Request::Get(key(k)?),
            Cmd::Append { key: k, value: v } => Request::Append(key(k)?, v.read(hex)?),
            Cmd::Delete { key: k } => Request::Delete(key(k)?),
            Cmd::Status
            | Cmd::Bench(_)
            | Cmd::Check(_)
            | Cmd::Member { .. }
            | Cmd::Backup(_)
            | Cmd::Restore(_) => return Ok(None),
        }))
    }
}

/// Writes a command's output to stdout. A closed pipe (`| head`) is not an error.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// How a command failed: a request error (exit 1, one line), an absent key, a command that
/// could not run (exit 2, one line), or a report already printed that sets the exit status.
enum Failure {
    Error(String),
    NotFound,
    CannotRun(String),
    Status(u8),
}

impl From<quorumkv_shardkv_client::KvError> for Failure {
    fn from(e: quorumkv_shardkv_client::KvError) -> Self {
        Failure::Error(e.to_string())
    }
}

async fn run_request(
    req: Request,
    mut client: KvClient,
    json: bool,
    hex: bool,
) -> Result<(), Failure> {
    match req {
        Request::Put(k, v) => client.put(&k, &v).await?,
        Request::Append(k, v) => client.append(&k, &v).await?,
        Request::Delete(k) => client.delete(&k).await?,
        Request::Get(k) => {
            let value = client.get(&k).await?.ok_or(Failure::NotFound)?;
            let mut out = std::io::stdout().lock();
            let written = if json {
                let v = if hex {
                    to_hex(&value)
                } else {
                    String::from_utf8_lossy(&value).into_owned()
                };
                writeln!(out, "{}", serde_json::json!({ "value": v }))
            } else if hex {
                writeln!(out, "{}", to_hex(&value))
            } else {
                out.write_all(&value).and_then(|()| out.write_all(b"\n"))
            };
            written
                .and_then(|()| out.flush())
                .map_err(|e| Failure::Error(format!("cannot write the value: {e}")))?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let usage = |msg: String| -> ! {
        Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, msg)
            .exit()
    };
    let timeout = cli.common.deadline().unwrap_or_else(|msg| usage(msg));
    let request = Request::parse(&cli.cmd, cli.hex).unwrap_or_else(|msg| usage(msg));
    let bench = match &cli.cmd {
        Cmd::Bench(args) => Some(args.validate().unwrap_or_else(|msg| usage(msg))),
        _ => None,
    };
    let check = match &cli.cmd {
        Cmd::Check(args) => Some(args.validate().unwrap_or_else(|msg| usage(msg))),
        _ => None,
    };
    let fail = |msg: String| {
        eprintln!("shardkv-client: error: {}", msg.replace('\n', " "));
        ExitCode::FAILURE
    };
    let tls = match cli.common.tls_material() {
        Ok(t) => t,
        Err(msg) => return fail(msg),
    };
    let client = match KvClient::connect(cli.common.ctrlers.clone(), tls.clone()) {
        Ok(c) => c.with_timeout(timeout),
        Err(err) => usage(format!("--ctrlers: {err}")),
    };
    // The bench and the check drive many clients at once; the one-shot commands need a single
    // thread.
    let many = matches!(cli.cmd, Cmd::Backup(_) | Cmd::Restore(_));
    let runtime = if bench.is_some() || check.is_some() || many {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(err) => return fail(format!("cannot start the async runtime: {err}")),
    };
    let result = runtime.block_on(async {
        if let Some(req) = request {
            return run_request(req, client, cli.common.json, cli.hex).await;
        }
        if let Some(plan) = bench {
            let target = match &plan.etcd {
                Some(endpoints) => {
                    bench::Target::Etcd(etcd::Etcd::connect(endpoints).map_err(Failure::Error)?)
                }
                None => bench::Target::QuorumKv(client),
            };
            let report = bench::run(plan, target, timeout).await;
            emit(&report.render(cli.common.json));
            return if report.succeeded() == 0 {
                Err(Failure::Error(
                    "bench: no operation succeeded (the report lists the errors)".into(),
                ))
            } else {
                Ok(())
            };
        }
        if let Some(plan) = check {
            let report = check::run(plan, client, timeout)
                .await
                .map_err(|e| Failure::CannotRun(e.0))?;
            emit(&report.render(cli.common.json));
            return match report.exit_code() {
                0 => Ok(()),
                code => Err(Failure::Status(code)),
            };
        }
        if let Cmd::Backup(args) = &cli.cmd {
            let summary = backup::backup(&client, args, cli.common.json)
                .await
                .map_err(Failure::Error)?;
            emit(&summary);
            return Ok(());
        }
        if let Cmd::Restore(args) = &cli.cmd {
            let summary = backup::restore(&client, args, cli.common.json)
                .await
                .map_err(Failure::Error)?;
            emit(&summary);
            return Ok(());
        }
        if let Cmd::Member { gid, cmd } = cli.cmd {
            let output = run_member(
                &client,
                GroupCaller::new(tls),
                gid,
                cmd,
                cli.common.json,
                timeout,
            )
            .await
            .map_err(Failure::Error)?;
            emit(&output);
            return Ok(());
        }
        let groups = client.status().await?;
        let view = status::summarize(client.cached_config().num, groups);
        emit(&status::render(&view, cli.common.json));
        Ok(())
    });
    // Do not wait for connections or abandoned bench operations to wind down.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::NotFound) => {
            eprintln!("not found");
            ExitCode::FAILURE
        }
        Err(Failure::Error(msg)) => fail(msg),
        Err(Failure::CannotRun(msg)) => {
            eprintln!("shardkv-client: error: {}", msg.replace('\n', " "));
            ExitCode::from(2)
        }
        Err(Failure::Status(code)) => ExitCode::from(code),
    }
}

/// `member --gid G ...`: the group's servers from the latest configuration, the command on
/// its leader, then (when the members changed) the new server list to the controller.
async fn run_member(
    client: &KvClient,
    groups: GroupCaller,
    gid: u64,
    cmd: MemberCmd,
    json: bool,
    timeout: Duration,
) -> Result<String, String> {
    let config = client.refresh_config().await.map_err(|e| e.to_string())?;
    let Some(listed) = config.groups.get(&gid).cloned() else {
        return Err(format!(
            "group {gid} is not in configuration {} (join it first)",
            config.num
        ));
    };
    // The servers to try: the controller's list, plus every address the group itself reports
    // (they differ while a change is not yet recorded, or when recording it failed).
    let servers = std::sync::Mutex::new(listed.clone());
    let groups = &groups;
    let servers_ref = &servers;
    let call = |request: AdminCall| async move {
        let targets = servers_ref.lock().expect("servers poisoned").clone();
        let reply = groups
            .call_admin(gid, &targets, Instant::now() + timeout, |c| {
                request.clone().send(c)
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut s = servers_ref.lock().expect("servers poisoned");
        for addr in member::addresses_in_id_order(&reply) {
            if !s.contains(&addr) {
                s.push(addr);
            }
        }
        Ok(reply)
    };
    let probe = |addr: String| async move {
        groups
            .call_admin(
                gid,
                std::slice::from_ref(&addr),
                Instant::now() + timeout.min(PROBE_TIMEOUT),
                |mut c| async move {
                    c.members(quorumkv_proto::raft::MembersRequest { leader_only: false })
                        .await
                },
            )
            .await
            .map_err(|e| e.to_string())
    };
    let group = format!("group {gid}");
    let outcome = member::run(
        cmd,
        json,
        &group,
        gid,
        "shardkv-server --join --gid GID --id ID --cluster <current members and ID=HOST:PORT> ...",
        call,
        probe,
    )
    .await;
    // Whatever happened (a change made in part, or by an earlier run that stopped between its
    // steps), the controller's record of the group is brought in step with its members.
    let members = match &outcome {
        Ok(o) => Ok(o.after.clone()),
        Err(_) => call(AdminCall::Members).await,
    };
    let record = match members {
        Ok(after) => record_servers(client, gid, &after, &group, json).await,
        Err(e) => Err(format!(
            "{group}: cannot list the members to check the controller's record: {e}"
        )),
    };
    let mut output = outcome?.output;
    output.push_str(&record?);
    Ok(output)
}

/// Records `after`'s members as group `gid`'s servers in the controller when the latest
/// configuration lists other ones; what it did, as output text.
async fn record_servers(
    client: &KvClient,
    gid: u64,
    after: &quorumkv_proto::raft::MembersReply,
    group: &str,
    json: bool,
) -> Result<String, String> {
    let new_servers = member::addresses_in_id_order(after);
    let config = client.refresh_config().await.map_err(|e| e.to_string())?;
    if config.groups.get(&gid) == Some(&new_servers) {
        return Ok(String::new());
    }
    let num = client
        .ctrler()
        .set_servers(gid, new_servers.clone())
        .await
        .map_err(|e| {
            format!(
                "{group}'s members are {}, but the controller could not be told: {e}; record them \
                 with `shardctrler-client set-servers {gid}={}`",
                new_servers.join(","),
                new_servers.join(",")
            )
        })?;
    Ok(if json {
        format!(
            "{}\n",
            serde_json::json!({ "gid": gid, "servers": new_servers, "config": num })
        )
    } else {
        format!(
            "controller: {group} servers now {} (configuration {num})\n",
            new_servers.join(",")
        )
    })
}

/// How long `member add` waits for the new member to answer before the group is changed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_hex_arguments() {
        assert_eq!(arg_bytes("00ff0A", true, "key").unwrap(), vec![0, 255, 10]);
        assert_eq!(arg_bytes("", true, "key").unwrap(), Vec::<u8>::new());
        assert_eq!(arg_bytes("zz", false, "key").unwrap(), b"zz".to_vec());
        for bad in ["0", "0g", "é0"] {
            assert!(arg_bytes(bad, true, "key").is_err(), "{bad}");
        }
        assert_eq!(to_hex(&[0, 255, 10]), "00ff0a");
    }

    fn put(key: &str, value: Option<&str>, file: Option<&std::path::Path>) -> Cmd {
        Cmd::Put {
            key: key.into(),
            value: ValueArg {
                value: value.map(str::to_string),
                value_file: file.map(std::path::Path::to_path_buf),
            },
        }
    }

    #[test]
    fn refuses_empty_and_oversized_keys_before_sending() {
        let long = "k".repeat(quorumkv_shardkv_client::MAX_KEY_BYTES + 1);
        let err = Request::parse(&put(&long, Some("v"), None), false)
            .err()
            .unwrap();
        assert!(err.contains("exceeds the limit"), "{err}");
        let err = Request::parse(&put("", Some("v"), None), false)
            .err()
            .unwrap();
        assert!(err.contains("the key is empty"), "{err}");
    }

    #[test]
    fn reads_values_from_files_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        let max = vec![7u8; MAX_VALUE_BYTES];
        std::fs::write(&path, &max).unwrap();
        match Request::parse(&put("6b", None, Some(&path)), true).unwrap() {
            Some(Request::Put(_, v)) => assert_eq!(v, max, "read as bytes, never as hex"),
            _ => panic!("not a put"),
        }
        std::fs::write(&path, vec![7u8; MAX_VALUE_BYTES + 1]).unwrap();
        let err = Request::parse(&put("k", None, Some(&path)), false)
            .err()
            .unwrap();
        assert!(err.contains("exceeds the limit"), "{err}");
        let err = Request::parse(&put("k", None, Some(&dir.path().join("none"))), false)
            .err()
            .unwrap();
        assert!(err.contains("--value-file"), "{err}");
    }
}
