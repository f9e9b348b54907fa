//! `shardctrler-client`: the shard controller from the command line (join, leave, move,
//! set-servers, query, and `member` for the controller group's own membership), on top of the
//! `quorumkv-shardctrler-client` library.
//!
//! Exit status: 0 on success; 2 for bad arguments (as clap); 1 when the controller refuses the
//! request or cannot be reached. Errors are one line on stderr.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use quorumkv_bin::member::{self, AdminCall, MemberCmd};
use quorumkv_bin::ClientArgs;
use quorumkv_common::{HostPort, TlsMaterial};
use quorumkv_proto::raft as pb;
use quorumkv_shardctrler_client::{Config, CtrlerClient, UNASSIGNED};

const EXAMPLES: &str = "\
Examples:
  shardctrler-client join 1=a:7001,b:7001,c:7001 2=d:7001,e:7001,f:7001   (again: no change)
  shardctrler-client leave 1 2
  shardctrler-client move 17 2
  shardctrler-client query          (the latest configuration)
  shardctrler-client query 5        (configuration 5)
  shardctrler-client --json query   (for scripts)
  shardctrler-client set-servers 1=a:7001,b:7001,d:7001   (after group 1's members changed)
  shardctrler-client member list    (the controller group's own members)
  shardctrler-client member add 4=ctrl4:7000     (ctrl4 started empty with --join first)
  shardctrler-client member remove 1
  shardctrler-client member replace 2 5=ctrl5:7000
  shardctrler-client member transfer 3

Exit status: 0 on success, 2 for bad arguments, 1 when the controller refuses the request or
cannot be reached (the reason is printed on one line).";

/// Command-line client of the QuorumKV shard controller.
#[derive(Debug, Parser)]
#[command(name = "shardctrler-client", version, after_help = EXAMPLES)]
struct Cli {
    #[command(flatten)]
    common: ClientArgs,

    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Add replica groups, then rebalance the shards over all groups. Idempotent: a group
    /// already in the configuration with the same servers is left as it is (and a join of
    /// only such groups changes nothing and succeeds); one already in with other servers is
    /// refused.
    Join {
        /// One group per argument: `GID=HOST:PORT,HOST:PORT,...` (gid non-zero, at least one
        /// server).
        #[arg(required = true, value_name = "GID=HOST:PORT,...", value_parser = parse_group)]
        groups: Vec<GroupArg>,
    },
    /// Remove replica groups, handing their shards to the remaining groups.
    Leave {
        /// The gids of the groups to remove.
        #[arg(required = true, value_name = "GID")]
        gids: Vec<u64>,
    },
    /// Give one shard to one group (until the next join or leave rebalances).
    Move {
        /// The shard, from 0 to the shard count - 1.
        shard: u64,
        /// The group that gets it.
        gid: u64,
    },
    /// Show a configuration: the groups, the shards each owns, the unassigned shards.
    Query {
        /// The configuration number; the latest when omitted.
        num: Option<u64>,
    },
    /// Record a group's new server list, keeping every shard where it is (normally done by
    /// `shardkv-client member`, after the group's membership changed).
    SetServers {
        /// `GID=HOST:PORT,HOST:PORT,...`: the group and all of its servers from now on.
        #[arg(value_name = "GID=HOST:PORT,...", value_parser = parse_group)]
        group: GroupArg,
    },
    /// The controller group's own members (the --ctrlers): list, add, remove, replace,
    /// transfer leadership. A new member must already run, started empty with
    /// `shardctrler-server --join`.
    #[command(subcommand)]
    Member(MemberCmd),
}

/// One `GID=HOST:PORT,...` argument of `join`.
#[derive(Debug, Clone)]
struct GroupArg {
    gid: u64,
    servers: Vec<String>,
}

fn parse_group(s: &str) -> Result<GroupArg, String> {
    let (gid, servers) = s
        .split_once('=')
        .ok_or_else(|| "expected GID=HOST:PORT,HOST:PORT,...".to_string())?;
    let gid: u64 = gid
        .trim()
        .parse()
        .map_err(|_| format!("gid {gid:?} is not a number"))?;
    if gid == UNASSIGNED {
        return Err("gid 0 is reserved for unassigned shards".into());
    }
    let servers: Vec<String> = servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if servers.is_empty() {
        return Err(format!("group {gid} lists no servers"));
    }
    for server in &servers {
        HostPort::parse(server).map_err(|e| e.to_string())?;
    }
    Ok(GroupArg { gid, servers })
}

/// `[0, 1, 2, 5, 7, 8]` → `0-2,5,7-8`; `-` for none.
fn ranges(shards: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < shards.len() {
        let start = shards[i];
        let mut end = start;
        while i + 1 < shards.len() && shards[i + 1] == end + 1 {
            i += 1;
            end = shards[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    if out.is_empty() {
        "-".into()
    } else {
        out.join(",")
    }
}

/// Prints one line to stdout. A closed pipe (`... | head`) is not an error; `println!` would
/// panic on it.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

fn print_config(c: &Config, json: bool) {
    let unassigned = c.shards_of(UNASSIGNED);
    if json {
        let groups: Vec<serde_json::Value> = c
            .groups
            .iter()
            .map(|(gid, servers)| {
                serde_json::json!({ "gid": gid, "servers": servers, "shards": c.shards_of(*gid) })
            })
            .collect();
        let v = serde_json::json!({
            "num": c.num,
            "num_shards": c.shards.len(),
            "shards": c.shards,
            "groups": groups,
            "unassigned": unassigned,
        });
        out!("{v}");
        return;
    }
    out!(
        "configuration {}: {} shards, {} groups",
        c.num,
        c.shards.len(),
        c.groups.len()
    );
    if !c.groups.is_empty() {
        let rows: Vec<[String; 4]> = c
            .groups
            .iter()
            .map(|(gid, servers)| {
                let owned = c.shards_of(*gid);
                [
                    gid.to_string(),
                    owned.len().to_string(),
                    ranges(&owned),
                    servers.join(","),
                ]
            })
            .collect();
        let header = ["GID", "COUNT", "SHARDS", "SERVERS"].map(String::from);
        let widths: Vec<usize> = (0..3)
            .map(|i| {
                rows.iter()
                    .chain([&header])
                    .map(|r| r[i].len())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for r in [&header].into_iter().chain(&rows) {
            out!(
                "{:<w0$}  {:<w1$}  {:<w2$}  {}",
                r[0],
                r[1],
                r[2],
                r[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            );
        }
    }
    out!("unassigned: {}", ranges(&unassigned));
}

fn print_num(num: u64, json: bool) {
    if json {
        out!("{}", serde_json::json!({ "num": num }));
    } else {
        out!("configuration {num}");
    }
}

async fn run(cli: Cli, client: CtrlerClient, tls: TlsMaterial) -> Result<(), String> {
    let e = |e: quorumkv_shardctrler_client::ClientError| e.to_string();
    match cli.cmd {
        Cmd::Join { groups } => {
            let groups: BTreeMap<u64, Vec<String>> =
                groups.into_iter().map(|g| (g.gid, g.servers)).collect();
            let done = client.ensure_joined(groups).await.map_err(e)?;
            if cli.common.json {
                out!(
                    "{}",
                    serde_json::json!({
                        "num": done.num,
                        "joined": done.joined,
                        "already_joined": done.already,
                    })
                );
            } else {
                print_num(done.num, false);
                for gid in &done.already {
                    out!("group {gid} was already joined with these servers: unchanged");
                }
            }
        }
        Cmd::Leave { gids } => print_num(client.leave(gids).await.map_err(e)?, cli.common.json),
        Cmd::Move { shard, gid } => print_num(
            client.move_shard(shard, gid).await.map_err(e)?,
            cli.common.json,
        ),
        Cmd::Query { num } => print_config(&client.query(num).await.map_err(e)?, cli.common.json),
        Cmd::SetServers { group } => print_num(
            client
                .set_servers(group.gid, group.servers)
                .await
                .map_err(e)?,
            cli.common.json,
        ),
        Cmd::Member(cmd) => {
            let client = &client;
            let call = |request: AdminCall| async move {
                client
                    .raft_admin(|c, _| request.clone().send(c))
                    .await
                    .map_err(e)
            };
            let timeout = cli.common.deadline()?;
            let probe = |addr: String| {
                let tls = tls.clone();
                async move {
                    let one = CtrlerClient::connect(vec![addr], tls)
                        .map_err(e)?
                        .with_timeout(timeout.min(PROBE_TIMEOUT));
                    one.raft_admin(|mut c, _| async move {
                        c.members(pb::MembersRequest { leader_only: false }).await
                    })
                    .await
                    .map_err(e)
                }
            };
            let outcome = member::run(
                cmd,
                cli.common.json,
                "controller group",
                CONTROLLER_GROUP_ID,
                "shardctrler-server --join --id ID --cluster <current members and ID=HOST:PORT> ...",
                call,
                probe,
            )
            .await?;
            print!("{}", outcome.output);
        }
    }
    Ok(())
}

/// How long `member add` waits for the new member to answer before the group is changed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// The Raft group id of the controller (`quorumkv_shardctrler::CONTROLLER_GROUP_ID`).
const CONTROLLER_GROUP_ID: u64 = 0;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let usage = |msg: String| -> ! {
        Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, msg)
            .exit()
    };
    if let Cmd::Join { groups } = &cli.cmd {
        let mut seen = std::collections::BTreeSet::new();
        if let Some(g) = groups.iter().find(|g| !seen.insert(g.gid)) {
            usage(format!("join: group {} is given twice", g.gid));
        }
    }
    let timeout = cli.common.deadline().unwrap_or_else(|msg| usage(msg));
    let fail = |msg: String| {
        eprintln!("shardctrler-client: error: {}", msg.replace('\n', " "));
        ExitCode::FAILURE
    };
    let tls = match cli.common.tls_material() {
        Ok(t) => t,
        Err(msg) => return fail(msg),
    };
    let client = match CtrlerClient::connect(cli.common.ctrlers.clone(), tls.clone()) {
        Ok(c) => c.with_timeout(timeout),
        Err(err) => usage(format!("--ctrlers: {err}")),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(err) => return fail(format!("cannot start the async runtime: {err}")),
    };
    match runtime.block_on(run(cli, client, tls)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => fail(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacts_shard_ranges() {
        assert_eq!(ranges(&[]), "-");
        assert_eq!(ranges(&[3]), "3");
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }

    #[test]
    fn parses_group_arguments() {
        let g = parse_group("1=a:7001, b:7001").unwrap();
        assert_eq!((g.gid, g.servers.len()), (1, 2));
        for bad in ["1", "0=a:1", "x=a:1", "1=", "1=a", "1=a:0"] {
            assert!(parse_group(bad).is_err(), "{bad}");
        }
    }
}
