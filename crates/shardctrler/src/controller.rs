//! The replicated state machine: configuration history plus the exactly-once table.

use std::collections::{BTreeMap, BTreeSet};

use crate::addr::canonical_addr;
use crate::config::{Config, UNASSIGNED};
use crate::rebalance::rebalance;
use crate::CtrlError;

/// The shard count used by [`Controller::new`].
pub const DEFAULT_SHARDS: usize = 64;

/// Identifies one client request for exactly-once execution.
///
/// A client numbers its requests 1, 2, 3, … and has at most one outstanding at a time, retrying
/// it under the same `seq` until it gets a reply. Raft may therefore commit the same request
/// several times; only the first commit takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId {
    /// A client id, unique among all clients of this controller.
    pub client: u64,
    /// The client's request number; increases with every new request.
    pub seq: u64,
}

/// A command that changes the configuration, as committed to the Raft log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Add replica groups, then rebalance.
    Join {
        /// The request this command belongs to.
        id: RequestId,
        /// gid → `host:port` server addresses. Every gid must be new and non-zero, every list
        /// non-empty, and no address may already serve another group.
        groups: BTreeMap<u64, Vec<String>>,
    },
    /// Remove replica groups, then rebalance their shards onto the remaining groups.
    Leave {
        /// The request this command belongs to.
        id: RequestId,
        /// The gids to remove: non-empty, distinct, each in the latest configuration.
        gids: Vec<u64>,
    },
    /// Record a new server list for one group (its Raft membership changed), keeping every
    /// shard where it is: the next configuration differs only in that list.
    SetServers {
        /// The request this command belongs to.
        id: RequestId,
        /// A group in the latest configuration.
        gid: u64,
        /// Its servers from now on: the same rules as a Join's list (non-empty, well-formed,
        /// distinct, used by no other group).
        servers: Vec<String>,
    },
    /// Give one shard to one group, without rebalancing. Holds until the next Join or Leave.
    Move {
        /// The request this command belongs to.
        id: RequestId,
        /// The shard to reassign, in `0..num_shards`.
        shard: u64,
        /// The new owner, a group in the latest configuration.
        gid: u64,
    },
}

impl Command {
    /// The request this command belongs to.
    pub fn id(&self) -> RequestId {
        match self {
            Command::Join { id, .. }
            | Command::Leave { id, .. }
            | Command::SetServers { id, .. }
            | Command::Move { id, .. } => *id,
        }
    }
}

/// The outcome of a command that took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The number of the configuration the command created.
    pub num: u64,
}

/// What the controller remembers about one client: the outcome of its newest request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The newest `seq` applied for this client.
    pub last_seq: u64,
    /// What that request returned, refusal included, handed back verbatim to retries.
    pub last_result: Result<Applied, CtrlError>,
    /// The proposer's timestamp of that request (drives expiry; 0 for a request from before
    /// commands carried one).
    pub last_ms: u64,
}

/// A session idle for this long (by the proposers' timestamps carried in the log) is
/// forgotten: a client retries a request for seconds, never for this long.
pub const SESSION_TTL_MS: u64 = 60 * 60 * 1000;
/// Idle sessions are swept when the log's clock has moved this far since the last sweep.
const SWEEP_INTERVAL_MS: u64 = 60 * 1000;

/// The controller's complete state as plain data, for the Raft layer to encode and ship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The fixed shard count.
    pub num_shards: usize,
    /// Every configuration, index = number.
    pub history: Vec<Config>,
    /// client id → newest request outcome.
    pub sessions: BTreeMap<u64, Session>,
    /// The highest proposer timestamp applied (the log's clock).
    pub clock_ms: u64,
    /// The clock at the last sweep of idle sessions.
    pub last_sweep_ms: u64,
}

/// The shard controller's deterministic state machine.
///
/// Replicas that apply the same commands in the same order hold equal `Controller`s (hence
/// `Eq`): nothing here reads a clock, randomness or a hash map's iteration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controller {
    /// Fixed at creation; every configuration has exactly this many shards.
    num_shards: usize,
    /// Append-only; `history[i].num == i` and `history[0]` is [`Config::initial`]. Nothing
    /// hands out `&mut` access, which is what makes a queried configuration immutable forever.
    history: Vec<Config>,
    /// One entry per client that sent a command in the last [`SESSION_TTL_MS`] of the log's
    /// clock; older ones are swept, deterministically, at points of the log every replica
    /// agrees on.
    sessions: BTreeMap<u64, Session>,
    /// The highest proposer timestamp applied.
    clock_ms: u64,
    /// The clock at the last sweep.
    last_sweep_ms: u64,
}

impl Default for Controller {
    fn default() -> Self {
        Self::new()
    }
}

impl Controller {
    /// A controller over [`DEFAULT_SHARDS`] shards, holding only configuration 0.
    pub fn new() -> Self {
        Self::with_shards(DEFAULT_SHARDS).expect("DEFAULT_SHARDS is positive")
    }

    /// A controller over `num_shards` shards, holding only configuration 0.
    pub fn with_shards(num_shards: usize) -> Result<Self, CtrlError> {
        if num_shards == 0 {
            return Err(CtrlError::InvalidArgument(
                "the shard count must be at least 1".into(),
            ));
        }
        Ok(Controller {
            num_shards,
            history: vec![Config::initial(num_shards)],
            sessions: BTreeMap::new(),
            clock_ms: 0,
            last_sweep_ms: 0,
        })
    }

    /// The fixed number of shards.
    pub fn num_shards(&self) -> usize {
        self.num_shards
    }

    /// The newest configuration.
    pub fn latest(&self) -> &Config {
        self.history.last().expect("history always holds config 0")
    }

    /// Configuration `num`, or the newest one for `None` or a number not yet reached.
    ///
    /// A number that exists always yields the same configuration, since history is append-only.
    /// Never fails today; the `Result` leaves room for a history that is one day truncated.
    pub fn query(&self, num: Option<u64>) -> Result<&Config, CtrlError> {
        let found = num
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|n| self.history.get(n));
        Ok(found.unwrap_or_else(|| self.latest()))
    }

    /// Every configuration so far; index = configuration number.
    pub fn history(&self) -> &[Config] {
        &self.history
    }

    /// What the controller remembers about `client`, if it ever sent a command.
    pub fn session(&self, client: u64) -> Option<&Session> {
        self.sessions.get(&client)
    }

    /// Applies one committed command, exactly once per [`RequestId`].
    ///
    /// - A new request (a `seq` above the client's last) is executed: on success exactly one
    ///   configuration is appended; on failure nothing changes. Either outcome is recorded, so
    ///   a refusal is as final as a success — a retry must not succeed merely because the
    ///   configuration changed in between, or the client would see two answers to one request.
    /// - A retry (`seq` equal to the last) returns the recorded outcome and changes nothing.
    /// - A stale request (`seq` below the last) changes nothing and returns
    ///   [`CtrlError::Superseded`]: its result was already delivered, and the recorded outcome
    ///   belongs to a different request.
    pub fn apply(&mut self, cmd: Command) -> Result<Applied, CtrlError> {
        self.apply_at(cmd, self.clock_ms)
    }

    /// [`Controller::apply`] of a command its proposer stamped with `now_ms` (the log's clock:
    /// sessions idle for [`SESSION_TTL_MS`] of it are forgotten).
    ///
    /// A Join whose groups are all already in the latest configuration with the same servers
    /// succeeds without a new configuration (`Applied` names the latest one), so scripts and
    /// jobs can repeat it.
    pub fn apply_at(&mut self, cmd: Command, now_ms: u64) -> Result<Applied, CtrlError> {
        self.clock_ms = self.clock_ms.max(now_ms);
        self.sweep_sessions();
        let id = cmd.id();
        if let Some(session) = self.sessions.get(&id.client) {
            if id.seq == session.last_seq {
                return session.last_result.clone();
            }
            if id.seq < session.last_seq {
                return Err(CtrlError::Superseded {
                    client: id.client,
                    seq: id.seq,
                    last_seq: session.last_seq,
                });
            }
        }
        let result = self.next_config(cmd).map(|config| match config {
            Some(config) => {
                debug_assert_eq!(config.check_invariants(self.num_shards), Ok(()));
                let num = config.num;
                self.history.push(config);
                Applied { num }
            }
            None => Applied {
                num: self.latest().num,
            },
        });
        self.sessions.insert(
            id.client,
            Session {
                last_seq: id.seq,
                last_result: result.clone(),
                last_ms: self.clock_ms,
            },
        );
        result
    }

    /// Forgets sessions idle for longer than the TTL, once per sweep interval of the log's
    /// clock (a sweep visits every session).
    fn sweep_sessions(&mut self) {
        if self.clock_ms < self.last_sweep_ms + SWEEP_INTERVAL_MS {
            return;
        }
        let horizon = self.clock_ms.saturating_sub(SESSION_TTL_MS);
        self.sessions.retain(|_, s| s.last_ms >= horizon);
        self.last_sweep_ms = self.clock_ms;
    }

    /// The number of clients the controller remembers.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// A copy of the whole state, for the Raft layer to serialize.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            num_shards: self.num_shards,
            history: self.history.clone(),
            sessions: self.sessions.clone(),
            clock_ms: self.clock_ms,
            last_sweep_ms: self.last_sweep_ms,
        }
    }

    /// Rebuilds a controller from a [`Snapshot`], refusing one that breaks an invariant.
    pub fn restore(snapshot: Snapshot) -> Result<Self, CtrlError> {
        let corrupt = CtrlError::CorruptSnapshot;
        let Snapshot {
            num_shards,
            history,
            sessions,
            clock_ms,
            last_sweep_ms,
        } = snapshot;
        if num_shards == 0 {
            return Err(corrupt("the shard count is 0".into()));
        }
        if history.first() != Some(&Config::initial(num_shards)) {
            return Err(corrupt(
                "history does not start with configuration 0".into(),
            ));
        }
        for (index, config) in history.iter().enumerate() {
            if usize::try_from(config.num) != Ok(index) {
                return Err(corrupt(format!(
                    "history[{index}] is numbered {}",
                    config.num
                )));
            }
            config.check_invariants(num_shards).map_err(corrupt)?;
        }
        for (client, session) in &sessions {
            if let Ok(Applied { num }) = session.last_result {
                if usize::try_from(num).map_or(true, |n| n >= history.len()) {
                    return Err(corrupt(format!(
                        "client {client} is recorded as creating config {num}, beyond history"
                    )));
                }
            }
        }
        Ok(Controller {
            num_shards,
            history,
            sessions,
            clock_ms,
            last_sweep_ms,
        })
    }

    /// The configuration `cmd` would create (`None`: it changes nothing and needs none), or
    /// why it is refused. Does not modify `self`.
    fn next_config(&self, cmd: Command) -> Result<Option<Config>, CtrlError> {
        let latest = self.latest();
        let mut next = Config {
            num: latest.num + 1,
            ..latest.clone()
        };
        match cmd {
            Command::Join { mut groups, .. } => {
                if groups.is_empty() {
                    return Err(invalid("join names no groups".into()));
                }
                // Groups already in with exactly these servers: joined before (a retry by a
                // script or job); nothing to do for them.
                groups.retain(|gid, servers| latest.groups.get(gid) != Some(servers));
                if groups.is_empty() {
                    return Ok(None);
                }
                self.check_join(&groups)?;
                next.groups.extend(groups);
                next.shards = rebalance(&latest.shards, &next.gids());
            }
            Command::Leave { gids, .. } => {
                self.check_leave(&gids)?;
                for gid in &gids {
                    next.groups.remove(gid);
                }
                next.shards = rebalance(&latest.shards, &next.gids());
            }
            Command::SetServers { gid, servers, .. } => {
                self.check_set_servers(gid, &servers)?;
                next.groups.insert(gid, servers);
            }
            Command::Move { shard, gid, .. } => {
                let index = self.check_move(shard, gid)?;
                next.shards[index] = gid;
            }
        }
        Ok(Some(next))
    }

    fn check_join(&self, groups: &BTreeMap<u64, Vec<String>>) -> Result<(), CtrlError> {
        let latest = self.latest();
        if groups.is_empty() {
            return Err(invalid("join names no groups".into()));
        }
        let mut owner_of = self.address_owners(None);
        for (gid, servers) in groups {
            if *gid == UNASSIGNED {
                return Err(invalid(
                    "join: gid 0 is reserved for unassigned shards".into(),
                ));
            }
            if latest.groups.contains_key(gid) {
                return Err(invalid(format!(
                    "join: group {gid} is already in configuration {}",
                    latest.num
                )));
            }
            check_servers("join", *gid, servers, &mut owner_of)?;
        }
        Ok(())
    }

    fn check_set_servers(&self, gid: u64, servers: &[String]) -> Result<(), CtrlError> {
        let latest = self.latest();
        if gid == UNASSIGNED {
            return Err(invalid(
                "set-servers: gid 0 is reserved for unassigned shards".into(),
            ));
        }
        if !latest.groups.contains_key(&gid) {
            return Err(invalid(format!(
                "set-servers: group {gid} is not in configuration {}",
                latest.num
            )));
        }
        // The group's own current addresses may stay; no other group's may be taken.
        check_servers(
            "set-servers",
            gid,
            servers,
            &mut self.address_owners(Some(gid)),
        )
    }

    /// Canonical address → the gid it serves in the latest configuration, leaving out the
    /// addresses of `except`.
    fn address_owners(&self, except: Option<u64>) -> BTreeMap<String, u64> {
        let mut owner_of = BTreeMap::new();
        for (gid, servers) in &self.latest().groups {
            if Some(*gid) == except {
                continue;
            }
            for server in servers {
                if let Ok(key) = canonical_addr(server) {
                    owner_of.insert(key, *gid);
                }
            }
        }
        owner_of
    }

    fn check_leave(&self, gids: &[u64]) -> Result<(), CtrlError> {
        let latest = self.latest();
        if gids.is_empty() {
            return Err(invalid("leave names no groups".into()));
        }
        let mut seen = BTreeSet::new();
        for gid in gids {
            if !seen.insert(*gid) {
                return Err(invalid(format!(
                    "leave: group {gid} is listed more than once"
                )));
            }
            if *gid == UNASSIGNED {
                return Err(invalid(
                    "leave: gid 0 is reserved for unassigned shards".into(),
                ));
            }
            if !latest.groups.contains_key(gid) {
                return Err(invalid(format!(
                    "leave: group {gid} is not in configuration {}",
                    latest.num
                )));
            }
        }
        if seen.len() == latest.groups.len() {
            // The shards would have no owner: nobody would pull them, and the groups leaving
            // could not hand them off.
            return Err(invalid(format!(
                "leave: removing every group ({}) would leave the shards and their data with \
                 no owner; join another group first, or keep one",
                gids.iter()
                    .map(|g| g.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(())
    }

    /// Checks a Move and returns the shard as an index.
    fn check_move(&self, shard: u64, gid: u64) -> Result<usize, CtrlError> {
        let latest = self.latest();
        let index = usize::try_from(shard)
            .ok()
            .filter(|s| *s < self.num_shards)
            .ok_or_else(|| {
                invalid(format!(
                    "move: shard {shard} is out of range 0..{}",
                    self.num_shards
                ))
            })?;
        if gid == UNASSIGNED {
            return Err(invalid(
                "move: gid 0 is reserved; a shard cannot be moved to no group".into(),
            ));
        }
        if !latest.groups.contains_key(&gid) {
            return Err(invalid(format!(
                "move: group {gid} is not in configuration {}",
                latest.num
            )));
        }
        Ok(index)
    }
}

/// The rules for one group's server list (`op` names the command in messages): non-empty,
/// every address well-formed, none listed twice, none serving another group. `owner_of` maps
/// canonical addresses already taken to their gid and receives this group's.
fn check_servers(
    op: &str,
    gid: u64,
    servers: &[String],
    owner_of: &mut BTreeMap<String, u64>,
) -> Result<(), CtrlError> {
    if servers.is_empty() {
        return Err(invalid(format!("{op}: group {gid} lists no servers")));
    }
    for server in servers {
        let key = canonical_addr(server).map_err(|why| {
            invalid(format!(
                "{op}: group {gid}: server address {server:?} {why}"
            ))
        })?;
        match owner_of.insert(key, gid) {
            None => {}
            Some(other) if other == gid => {
                return Err(invalid(format!(
                    "{op}: group {gid} lists server {server:?} more than once"
                )));
            }
            Some(other) => {
                return Err(invalid(format!(
                    "{op}: group {gid}: server {server:?} already belongs to group {other}"
                )));
            }
        }
    }
    Ok(())
}

fn invalid(msg: String) -> CtrlError {
    CtrlError::InvalidArgument(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(client: u64, seq: u64) -> RequestId {
        RequestId { client, seq }
    }

    fn addrs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// Groups 1 (a, b, c) and 2 (d, e, f) over 8 shards, with shard 0 pinned to group 2 so
    /// that the assignment is not merely what a rebalance would produce.
    fn two_groups() -> Controller {
        let mut c = Controller::with_shards(8).unwrap();
        c.apply(Command::Join {
            id: id(1, 1),
            groups: BTreeMap::from([
                (1, addrs(&["a:1", "b:1", "c:1"])),
                (2, addrs(&["d:1", "e:1", "f:1"])),
            ]),
        })
        .unwrap();
        c.apply(Command::Move {
            id: id(1, 2),
            shard: 0,
            gid: 2,
        })
        .unwrap();
        c
    }

    #[test]
    fn set_servers_changes_only_the_server_list() {
        let mut c = two_groups();
        let before = c.history().to_vec();
        let prev = c.latest().clone();
        let cmd = Command::SetServers {
            id: id(2, 1),
            gid: 1,
            // Drops a, keeps b and c (in another order), adds g.
            servers: addrs(&["c:1", "b:1", "g:1"]),
        };
        assert_eq!(c.apply(cmd.clone()), Ok(Applied { num: prev.num + 1 }));
        let next = c.latest().clone();
        assert_eq!(next.num, prev.num + 1);
        assert_eq!(next.shards, prev.shards, "no shard moves");
        assert_eq!(next.groups[&1], addrs(&["c:1", "b:1", "g:1"]));
        assert_eq!(next.groups[&2], prev.groups[&2]);
        assert_eq!(
            &c.history()[..before.len()],
            &before[..],
            "history immutable"
        );
        assert_eq!(c.query(Some(prev.num)).unwrap(), &prev);

        // Exactly once: the retry returns the same answer and creates nothing.
        assert_eq!(c.apply(cmd), Ok(Applied { num: prev.num + 1 }));
        assert_eq!(c.latest().num, prev.num + 1);
    }

    #[test]
    fn set_servers_refuses_what_join_refuses() {
        let mut c = two_groups();
        let refused = |c: &mut Controller, seq: u64, gid: u64, servers: &[&str]| {
            let before = c.clone();
            let r = c.apply(Command::SetServers {
                id: id(3, seq),
                gid,
                servers: addrs(servers),
            });
            let Err(CtrlError::InvalidArgument(why)) = r else {
                panic!("{gid} {servers:?} accepted: {r:?}");
            };
            assert_eq!(c.history(), before.history(), "a refusal changed history");
            why
        };
        assert!(refused(&mut c, 1, 0, &["x:1"]).contains("gid 0 is reserved"));
        assert!(refused(&mut c, 2, 9, &["x:1"]).contains("group 9 is not in configuration"));
        assert!(refused(&mut c, 3, 1, &[]).contains("lists no servers"));
        assert!(refused(&mut c, 4, 1, &["nohost"]).contains("server address \"nohost\""));
        assert!(refused(&mut c, 5, 1, &["x:1", "X:1"]).contains("more than once"));
        assert!(refused(&mut c, 6, 1, &["a:1", "e:1"]).contains("already belongs to group 2"));
        // The same list again is fine: it keeps the group's own addresses.
        assert!(c
            .apply(Command::SetServers {
                id: id(3, 7),
                gid: 1,
                servers: addrs(&["a:1", "b:1", "c:1"]),
            })
            .is_ok());
    }
}
