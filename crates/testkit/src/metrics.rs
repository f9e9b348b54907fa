//! The metric families a server really exposes, checked against the list the monitoring
//! manifests are validated with (`k8s/components/monitoring/metric-families.txt`): the alert
//! rules and the dashboard may only use names of that list (`scripts/k8s-validate.sh`), and
//! this check keeps the list equal to what `/metrics` serves, in both directions.

use std::collections::BTreeSet;

const FAMILIES: &str = include_str!("../../../k8s/components/monitoring/metric-families.txt");

/// Which server's `/metrics` is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Controller,
    ShardKv,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Controller => "controller",
            Server::ShardKv => "shardkv",
        }
    }
}

/// `NAME TYPE` of every family the list gives `server`.
pub fn documented(server: Server) -> BTreeSet<String> {
    FAMILIES
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && (f[2] == "both" || f[2] == server.name()))
                .then(|| format!("{} {}", f[0], f[1]))
        })
        .collect()
}

/// Panics unless the `# TYPE` lines of `exposition` (a `/metrics` body) are exactly the
/// families the list gives `server`, naming the differences.
pub fn assert_families_documented(exposition: &str, server: Server) {
    let exposed: BTreeSet<String> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(str::to_string)
        .collect();
    let documented = documented(server);
    let missing: Vec<&String> = exposed.difference(&documented).collect();
    let stale: Vec<&String> = documented.difference(&exposed).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "k8s/components/monitoring/metric-families.txt is out of date for the {}: add {missing:?}, \
         remove or fix {stale:?}",
        server.name()
    );
}
