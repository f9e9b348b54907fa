//! Checks a syscall trace (`strace -f -y -s 1024 -e trace=desc,file`) of a storage under test
//! against the durability rule: nothing an acknowledgement depends on is left unsynced.
//!
//! The rules, with the markers the program under trace writes to stdout or stderr:
//! - at each acknowledgement ([`Rule::ack_marker`], best written by the thread that sends the
//!   acknowledgement, at that moment: what another thread starts later is not what it
//!   depended on), every write to the Raft log's files ([`Rule::log_dirs`]) has been fsynced
//!   (fsync or fdatasync, completed), and so has every directory entry made there or in the
//!   data directory itself (fsync of the directory);
//! - a file renamed into place was fsynced before the rename (write, sync, rename);
//! - raft-engine's rewrite-queue files (copies of live records that its purge makes before an
//!   old file is recycled) are left to raft-engine, which syncs a purge's copies before it
//!   marks the old files purged: a trace cannot tell which copies belong to which file, and an
//!   unrelated later purge's copies may be in flight while a long-purged file is reused;
//! - when a log write names a snapshot file (`snap-….qks`, `incoming-….qks`: a base record
//!   the member restarts from), that file is fsynced, and its directory entry too;
//! - between `store sync started` and the next `log compacted`, every file of the state
//!   machine's store ([`Rule::store_dirs`]) written before the sync started, and every
//!   directory entry made there before it, is fsynced.
//!
//! `sync_file_range` does not count as a sync. Temporary files (`*.tmp`, `*.partial`) are
//! exempt until renamed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What a trace showed.
#[derive(Debug, Default)]
pub struct Report {
    /// Every breach of the rules, with the trace line where it was seen.
    pub violations: Vec<String>,
    pub acks: usize,
    pub store_syncs: usize,
    pub compactions: usize,
    /// Log writes that named a snapshot file.
    pub snapshot_references: usize,
    /// Writes and syncs seen under the root (a trace without them checked nothing).
    pub writes: usize,
    pub syncs: usize,
    /// Files written under the root, by path.
    pub files: Vec<PathBuf>,
}

#[derive(Default)]
struct FileState {
    /// Line of the oldest write not yet covered by a completed sync of the file.
    unsynced_since: Option<u64>,
    /// Line where the file's directory entry was made (created, renamed to), until a sync of
    /// its directory completes.
    entry_unsynced_since: Option<u64>,
}

/// Scope of the check: files under `root`; `log_dirs` are checked at every acknowledgement,
/// `store_dirs` before every compaction.
pub struct Rule<'a> {
    pub root: &'a Path,
    /// The text of the acknowledgement marker.
    pub ack_marker: &'a str,
    pub log_dirs: &'a [&'a str],
    pub store_dirs: &'a [&'a str],
}

struct Checker<'a> {
    rule: &'a Rule<'a>,
    lines: Vec<&'a str>,
    files: HashMap<PathBuf, FileState>,
    r: Report,
}

fn temporary(p: &Path) -> bool {
    let n = p.to_string_lossy();
    n.ends_with(".tmp") || n.ends_with(".partial")
}

impl Checker<'_> {
    fn under(&self, p: &Path) -> bool {
        p.starts_with(self.rule.root)
    }

    /// Whether `p` lies in one of `dirs` (top-level directories under the root).
    fn in_any(&self, p: &Path, dirs: &[&str]) -> bool {
        p.strip_prefix(self.rule.root)
            .ok()
            .and_then(|rel| rel.components().next())
            .is_some_and(|c| dirs.iter().any(|d| c.as_os_str() == *d))
    }

    fn line(&self, at: u64) -> &str {
        self.lines.get(at as usize).copied().unwrap_or("")
    }

    fn entry_made(&mut self, p: PathBuf, seq: u64) {
        self.files
            .entry(p)
            .or_default()
            .entry_unsynced_since
            .get_or_insert(seq);
    }

    fn synced(&mut self, p: &Path) {
        if !self.under(p) {
            return;
        }
        self.r.syncs += 1;
        if let Some(st) = self.files.get_mut(p) {
            st.unsynced_since = None;
        }
        // A directory: the entries of its files are durable.
        for (f, st) in self.files.iter_mut() {
            if f.parent() == Some(p) {
                st.entry_unsynced_since = None;
            }
        }
    }

    fn ack(&mut self, line: &str) {
        self.r.acks += 1;
        let mut found = Vec::new();
        for (p, st) in &self.files {
            if temporary(p) {
                continue;
            }
            let logged = self.in_any(p, self.rule.log_dirs);
            // raft-engine's rewrite queue holds copies (made when it purges old files) of
            // records that stay in their original files until the copies are synced
            // (`purging`).
            let copy = p.to_string_lossy().ends_with(".rewrite");
            if let Some(since) = st.unsynced_since.filter(|_| logged && !copy) {
                found.push(format!(
                    "acknowledged while {} had unsynced writes (the first: {}): {line}",
                    p.display(),
                    self.line(since)
                ));
            }
            // Entries of log files, and of the data directory's own subdirectories; those of
            // snapshot files matter once a log record names them (`references`).
            let top = p.parent() == Some(self.rule.root);
            // A log file's entry; not a snapshot file's, nor the rewrite queue's or the
            // recycling pool's (which hold nothing an acknowledgement needs).
            let name = p.to_string_lossy();
            let log_file = logged
                && !name.contains("/snapshots/")
                && !name.ends_with(".rewrite")
                && !name.ends_with(".reserved");
            if let Some(since) = st.entry_unsynced_since.filter(|_| top || log_file) {
                found.push(format!(
                    "acknowledged while the directory entry of {} was unsynced (made: {}): \
                     {line}",
                    p.display(),
                    self.line(since)
                ));
            }
        }
        self.r.violations.extend(found);
    }

    /// A log write whose bytes name snapshot files: each must be durable, entry included.
    fn references(&mut self, args: &str, line: &str) {
        for name in snapshot_names(args) {
            self.r.snapshot_references += 1;
            let found = self
                .files
                .iter()
                .find(|(p, _)| p.file_name().is_some_and(|n| n == name.as_str()));
            if let Some((p, st)) = found {
                if let Some(since) = st.unsynced_since.or(st.entry_unsynced_since) {
                    let v = format!(
                        "the log names {} before it (or its directory entry) is synced \
                         (since: {}): {line}",
                        p.display(),
                        self.line(since)
                    );
                    self.r.violations.push(v);
                }
            }
        }
    }

    fn compacted(&mut self, start: u64, line: &str) {
        let mut found = Vec::new();
        for (p, st) in &self.files {
            if !self.in_any(p, self.rule.store_dirs) || temporary(p) {
                continue;
            }
            for since in [st.unsynced_since, st.entry_unsynced_since]
                .into_iter()
                .flatten()
            {
                if since < start {
                    found.push(format!(
                        "log compacted while {} was unsynced since before the store sync \
                         ({}): {line}",
                        p.display(),
                        self.line(since)
                    ));
                }
            }
        }
        self.r.violations.extend(found);
    }
}

/// Snapshot file names (`snap-….qks`, `incoming-….qks`) in a write's printed bytes.
fn snapshot_names(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    for prefix in ["snap-", "incoming-"] {
        let mut at = 0;
        while let Some(i) = args[at..].find(prefix) {
            let start = at + i;
            let rest = &args[start..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
                .unwrap_or(rest.len());
            let name = &rest[..end];
            if let Some(stem) = name.find(".qks") {
                out.push(name[..stem + 4].to_string());
            }
            at = start + prefix.len();
        }
    }
    out
}

/// Checks `trace` (see the module docs).
pub fn check(trace: &str, rule: &Rule) -> Report {
    let lines: Vec<&str> = trace.lines().collect();
    let mut c = Checker {
        rule,
        lines: lines.clone(),
        files: HashMap::new(),
        r: Report::default(),
    };
    // Per pid: the sync left unfinished, and on which path.
    let mut unfinished: HashMap<&str, (&str, Option<PathBuf>)> = HashMap::new();
    let mut sync_started: Option<u64> = None;
    for (seq, line) in lines.into_iter().enumerate() {
        let seq = seq as u64;
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        // A resumed call: a sync counts once it completed.
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let name = resumed.split_whitespace().next().unwrap_or("");
            if let Some((n, Some(p))) = unfinished.remove(pid) {
                if n == name {
                    c.synced(&p);
                }
            }
            continue;
        }
        let Some((name, args)) = rest.split_once('(') else {
            continue;
        };
        if rest.contains(" = -1 ") {
            // A call that failed changed nothing.
            continue;
        }
        let first_fd = fd_path(args);
        let console = args.starts_with("1<") || args.starts_with("2<");
        if (name == "write" || name == "writev") && console {
            // A marker (checked at its start).
            if args.contains(rule.ack_marker) {
                c.ack(line);
            } else if args.contains("store sync started") {
                c.r.store_syncs += 1;
                sync_started = Some(seq);
            } else if args.contains("log compacted") {
                c.r.compactions += 1;
                if let Some(start) = sync_started.take() {
                    c.compacted(start, line);
                }
            }
            continue;
        }
        match name {
            "write" | "pwrite64" | "writev" | "pwritev" | "pwritev2" | "ftruncate"
            | "fallocate" => {
                if let Some(p) = first_fd.filter(|p| c.under(p)) {
                    c.r.writes += 1;
                    if !c.r.files.contains(&p) {
                        c.r.files.push(p.clone());
                    }
                    // A log record (not a snapshot file's own bytes) naming snapshot files;
                    // the bytes come after the descriptor's path.
                    let data = args.split_once('>').map_or("", |(_, d)| d);
                    if c.in_any(&p, rule.log_dirs) && !p.to_string_lossy().contains("/snapshots/") {
                        c.references(data, line);
                    }
                    c.files
                        .entry(p)
                        .or_default()
                        .unsynced_since
                        .get_or_insert(seq);
                }
            }
            "fsync" | "fdatasync" => {
                if rest.ends_with("<unfinished ...>") {
                    unfinished.insert(pid, (name, first_fd));
                } else if let Some(p) = first_fd {
                    c.synced(&p);
                }
            }
            "openat" | "open" | "creat" if args.contains("O_CREAT") => {
                // A temporary file's entry matters once it is renamed into place.
                if let Some(p) = returned_path(rest).filter(|p| c.under(p) && !temporary(p)) {
                    c.entry_made(p, seq);
                }
            }
            "mkdir" | "mkdirat" => {
                if let Some(p) = string_paths(args).into_iter().next().filter(|p| c.under(p)) {
                    c.entry_made(p, seq);
                }
            }
            "rename" | "renameat" | "renameat2" => {
                if let [from, to, ..] = string_paths(args).as_slice() {
                    if c.under(to) {
                        let st = c.files.remove(from).unwrap_or_default();
                        if let Some(s) = st.unsynced_since {
                            let v = format!(
                                "{} renamed into place with unsynced writes (the first: {}): \
                                 {line}",
                                from.display(),
                                c.line(s)
                            );
                            c.r.violations.push(v);
                        }
                        c.files.insert(
                            to.clone(),
                            FileState {
                                unsynced_since: None,
                                entry_unsynced_since: Some(seq),
                            },
                        );
                    }
                }
            }
            "unlink" | "unlinkat" => {
                if let Some(p) = string_paths(args).into_iter().next() {
                    c.files.remove(&p);
                }
            }
            _ => {}
        }
    }
    c.r
}

/// The path strace annotates the first file descriptor argument with (`5</a/b>`).
fn fd_path(args: &str) -> Option<PathBuf> {
    let start = args.find('<')?;
    if !args[..start].chars().all(|c| c.is_ascii_digit()) || start == 0 {
        return None;
    }
    let end = args[start..].find('>')? + start;
    Some(PathBuf::from(&args[start + 1..end]))
}

/// The path of the descriptor a call returned (`= 5</a/b>`).
fn returned_path(rest: &str) -> Option<PathBuf> {
    let at = rest.rfind(" = ")?;
    fd_path(&rest[at + 3..])
}

/// The quoted path arguments, made absolute with the directory descriptor before each one
/// (`AT_FDCWD</cwd>, "a"` or `3</dir>, "a"`).
fn string_paths(args: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut base: Option<PathBuf> = None;
    let b = args.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'<' => {
                if let Some(end) = args[i..].find('>') {
                    base = Some(PathBuf::from(&args[i + 1..i + end]));
                    i += end;
                }
            }
            b'"' => {
                let mut j = i + 1;
                let mut s = String::new();
                while j < b.len() && b[j] != b'"' {
                    if b[j] == b'\\' && j + 1 < b.len() {
                        j += 1;
                    }
                    s.push(b[j] as char);
                    j += 1;
                }
                let p = PathBuf::from(&s);
                out.push(match (&base, p.is_absolute()) {
                    (Some(d), false) => d.join(p),
                    _ => p,
                });
                base = None;
                i = j;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Runs the test `name` of the test binary `exe` again, under strace, with `env` set, and
/// returns the trace; `None` when strace is not installed.
pub fn run_test_under_strace(
    exe: &Path,
    name: &str,
    env: &[(&str, &str)],
    out: &Path,
) -> Option<String> {
    let status = std::process::Command::new("strace")
        .args(["-f", "-y", "-s", "1024", "-e", "trace=desc,file", "-o"])
        .arg(out)
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .envs(env.iter().copied())
        .status();
    match status {
        Ok(s) => {
            assert!(s.success(), "the traced test {name} failed: {s}");
            Some(std::fs::read_to_string(out).expect("the trace"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("strace: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(trace: &str, _: &()) -> Report {
        super::check(
            trace,
            &Rule {
                root: Path::new("/d"),
                ack_marker: "QKV-ACK",
                log_dirs: &["raft-log", "snapshots"],
                store_dirs: &["kv"],
            },
        )
    }

    const RULE: () = ();

    #[test]
    fn an_unsynced_log_write_before_an_ack_is_caught_and_a_synced_one_passes() {
        let bad = "\
1 pwrite64(5</d/raft-log/1.raftlog>, \"x\", 1, 0) = 1
1 write(2<pipe:[9]>, \"QKV-ACK 1\\n\", 10) = 10
";
        let r = check(bad, &RULE);
        assert_eq!((r.acks, r.violations.len()), (1, 1), "{:?}", r.violations);
        let good = "\
1 pwrite64(5</d/raft-log/1.raftlog>, \"x\", 1, 0) = 1
2 fdatasync(5</d/raft-log/1.raftlog> <unfinished ...>
1 sync_file_range(5</d/raft-log/1.raftlog>, 0, 1, 2) = 0
2 <... fdatasync resumed>) = 0
1 write(2<pipe:[9]>, \"QKV-ACK 1\\n\", 10) = 10
";
        assert!(check(good, &RULE).violations.is_empty());
        // An fsync still running at the ack does not count.
        let racing = "\
1 pwrite64(5</d/raft-log/1.raftlog>, \"x\", 1, 0) = 1
2 fdatasync(5</d/raft-log/1.raftlog> <unfinished ...>
1 write(2<pipe:[9]>, \"QKV-ACK 1\\n\", 10) = 10
2 <... fdatasync resumed>) = 0
";
        assert_eq!(check(racing, &RULE).violations.len(), 1);
    }

    #[test]
    fn renames_need_a_synced_file_and_a_named_snapshot_its_synced_directory_entry() {
        let write_rename = "\
1 openat(AT_FDCWD</x>, \"/d/snapshots/snap-1.qks.tmp\", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 7</d/snapshots/snap-1.qks.tmp>
1 write(7</d/snapshots/snap-1.qks.tmp>, \"x\", 1) = 1
";
        let rename = "1 rename(\"/d/snapshots/snap-1.qks.tmp\", \"/d/snapshots/snap-1.qks\") = 0\n";
        let unsynced = format!("{write_rename}{rename}");
        let r = check(&unsynced, &RULE);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        let synced = format!("{write_rename}1 fsync(7</d/snapshots/snap-1.qks.tmp>) = 0\n{rename}");
        assert!(check(&synced, &RULE).violations.is_empty());
        // The log names it before its directory entry is durable.
        let named = "2 pwrite64(5</d/raft-log/1.raftlog>, \"\\4base\\5snap-1.qks\", 16, 9) = 16\n";
        let r = check(&format!("{synced}{named}"), &RULE);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.violations[0].contains("directory entry"));
        let r = check(
            &format!("{synced}1 fsync(8</d/snapshots>) = 0\n{named}"),
            &RULE,
        );
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.snapshot_references, 1);
    }

    #[test]
    fn store_writes_from_before_a_sync_must_be_synced_before_the_log_is_compacted() {
        // A blob written after the sync started need not be synced before the compaction.
        let fine = "\
1 pwrite64(5</d/kv/db>, \"x\", 1, 0) = 1
1 write(2<pipe:[9]>, \"INFO store sync started index=9\\n\", 30) = 30
3 pwrite64(9</d/kv/blobs/7>, \"x\", 1, 0) = 1
2 fsync(5</d/kv/db>) = 0
1 write(2<pipe:[9]>, \"INFO log compacted base=9\\n\", 25) = 25
";
        assert!(check(fine, &RULE).violations.is_empty());
        let bad = "\
3 pwrite64(9</d/kv/blobs/7>, \"x\", 1, 0) = 1
1 pwrite64(5</d/kv/db>, \"x\", 1, 0) = 1
1 write(2<pipe:[9]>, \"INFO store sync started index=9\\n\", 30) = 30
2 fsync(5</d/kv/db>) = 0
1 write(2<pipe:[9]>, \"INFO log compacted base=9\\n\", 25) = 25
";
        let r = check(bad, &RULE);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.violations[0].contains("/d/kv/blobs/7"));
    }
}
