//! What the end-to-end tests of the real binaries share: certificates in a temporary
//! directory, free loopback ports, a guard that kills every started process (even when the
//! test panics), and checks of exit codes and one-line errors.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use quorumkv_common::certs::{write_pem, Ca};
use quorumkv_common::Role;

/// Kills the processes when dropped (SIGKILL: the tests do not need a graceful exit).
#[derive(Default)]
pub struct Servers {
    pub children: Vec<Option<Child>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A loopback port for a server process, outside the ephemeral range (see
/// `quorumkv_testkit::ports`): a server killed and restarted by a test binds it again.
pub use quorumkv_testkit::ports::free_port;

/// Writes a fresh CA, a `node` certificate for localhost and 127.0.0.1 (the servers'), an
/// `admin` and a `client` certificate to `dir/certs`; returns the CA.
pub fn write_certs(dir: &Path) -> Ca {
    let certs = dir.join("certs");
    let ca = Ca::generate("test-ca").unwrap();
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.pem"), &ca.pem().cert).unwrap();
    for role in [Role::Node, Role::Admin, Role::Client] {
        let sans = ["localhost".to_string(), "127.0.0.1".to_string()];
        let pem = ca.issue(role.name(), role, &sans).unwrap();
        write_pem(&certs, role.name(), &pem).unwrap();
    }
    ca
}

/// The file `name` written by [`write_certs`].
pub fn cert(dir: &Path, name: &str) -> PathBuf {
    dir.join("certs").join(name)
}

/// The TLS flags of the servers: the node certificate of [`write_certs`].
pub fn tls_args(dir: &Path) -> Vec<String> {
    tls_args_as(dir, "node")
}

/// The TLS flags with certificate `name` (`node`, `admin`, `client`) of [`write_certs`].
pub fn tls_args_as(dir: &Path, name: &str) -> Vec<String> {
    vec![
        "--tls-ca".into(),
        cert(dir, "ca.pem").display().to_string(),
        "--tls-cert".into(),
        cert(dir, &format!("{name}.pem")).display().to_string(),
        "--tls-key".into(),
        cert(dir, &format!("{name}-key.pem")).display().to_string(),
    ]
}

/// stdout of a successful run.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// stderr of a failed run: exactly one line.
pub fn one_line_error(out: &Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert!(
        !err.is_empty() && !err.contains('\n'),
        "not one line: {err:?}"
    );
    err
}

/// Waits (bounded) for a child to exit.
pub fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) for a child with piped output to exit, reading its output meanwhile (so a
/// full pipe cannot block it); kills it and panics after `within`.
pub fn wait_output(child: Child, within: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(out) => out.expect("wait for the process"),
        Err(_) => {
            // SAFETY: kill(2) on our own child, which has not been reaped (its waiter is
            // still blocked).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("process {pid} did not exit in {within:?}");
        }
    }
}

pub fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    s
}

/// `GET path` on a loopback port (retried for up to 10 s until the port accepts); the raw
/// HTTP reply.
pub fn http_get(port: u16, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("admin endpoint: {e}"),
        }
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

/// Calls `f` every 50 ms until it returns `Some`, for at most `within`; panics naming `what`.
pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The JSON a client printed on stdout, whatever its exit status (a refusal or a failed check
/// prints JSON too); panics with both streams when it is not JSON.
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A node of a process cluster: (group id, member id); the controller is group 0.
pub type NodeId = (u64, u64);

/// Members 1 to 3 of the controller and of each of `gids`.
pub fn three_member_groups(gids: &[u64]) -> Vec<NodeId> {
    std::iter::once(0)
        .chain(gids.iter().copied())
        .flat_map(|gid| (1..=3).map(move |id| (gid, id)))
        .collect()
}

pub const CTRL_SERVER: &str = env!("CARGO_BIN_EXE_shardctrler-server");
pub const CTRL_CLIENT: &str = env!("CARGO_BIN_EXE_shardctrler-client");
pub const KV_SERVER: &str = env!("CARGO_BIN_EXE_shardkv-server");
pub const KV_CLIENT: &str = env!("CARGO_BIN_EXE_shardkv-client");

/// Real server processes on loopback over mutual TLS: a controller (group 0) and replica
/// groups, with their certificates, ports, data directories and logs in one temporary
/// directory. Dropping it kills every process; when a test fails, the tail of every node's log
/// is printed first.
pub struct ProcCluster {
    pub dir: tempfile::TempDir,
    ports: std::collections::BTreeMap<NodeId, u16>,
    /// The plain-HTTP admin port of each node (health, metrics, dashboard).
    admin_ports: std::collections::BTreeMap<NodeId, u16>,
    slots: std::collections::BTreeMap<NodeId, usize>,
    procs: Servers,
    shards: usize,
    log_level: &'static str,
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for n in self.ports.keys() {
            let log = std::fs::read_to_string(self.log(*n)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!("--- {n:?} (last lines of its log) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

impl ProcCluster {
    /// Reserves a port for each of `nodes`; the controller is created with `shards` shards.
    pub fn new(nodes: &[NodeId], shards: usize, log_level: &'static str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_certs(dir.path());
        ProcCluster {
            dir,
            ports: nodes.iter().map(|n| (*n, free_port())).collect(),
            admin_ports: nodes.iter().map(|n| (*n, free_port())).collect(),
            slots: Default::default(),
            procs: Servers::default(),
            shards,
            log_level,
        }
    }

    pub fn nodes(&self) -> Vec<NodeId> {
        self.ports.keys().copied().collect()
    }

    pub fn log(&self, (gid, id): NodeId) -> PathBuf {
        self.dir.path().join(format!("g{gid}-{id}.log"))
    }

    pub fn addr(&self, n: NodeId) -> String {
        format!("127.0.0.1:{}", self.ports[&n])
    }

    /// The admin port of node `n` (`/health/*`, `/metrics`, `/dashboard`).
    pub fn admin_port(&self, n: NodeId) -> u16 {
        self.admin_ports[&n]
    }

    /// `host:port` of members `ids` of `gid`.
    pub fn addrs(&self, gid: u64, ids: &[u64]) -> Vec<String> {
        ids.iter().map(|id| self.addr((gid, *id))).collect()
    }

    /// `id=host:port,...` of members `ids` of `gid`.
    pub fn cluster(&self, gid: u64, ids: &[u64]) -> String {
        ids.iter()
            .map(|id| format!("{id}={}", self.addr((gid, *id))))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts (or restarts, on the same port and data directory) node `n` in a group of
    /// `members`; with `join`, as a new member that waits to be added.
    pub fn start(&mut self, n: NodeId, members: &[u64], join: bool) {
        self.start_with(n, members, join, &[]);
    }

    /// [`ProcCluster::start`] with `extra` flags for the server.
    pub fn start_with(&mut self, n: NodeId, members: &[u64], join: bool, extra: &[&str]) {
        let (gid, id) = n;
        let mut cmd = std::process::Command::new(if gid == 0 { CTRL_SERVER } else { KV_SERVER });
        if gid == 0 {
            cmd.args(["--shards", &self.shards.to_string()]);
        } else {
            cmd.args(["--gid", &gid.to_string()]);
            cmd.args(["--ctrlers", &self.addrs(0, &[1, 2, 3]).join(",")]);
        }
        if join {
            cmd.arg("--join");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(n))
            .unwrap();
        let child = cmd
            .args([
                "--id",
                &id.to_string(),
                "--cluster",
                &self.cluster(gid, members),
            ])
            .args(["--listen", &self.addr(n), "--log-level", self.log_level])
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{}", self.admin_port(n)))
            .args(extra)
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("data-g{gid}-{id}")))
            .args(tls_args(self.dir.path()))
            .env_remove("QKV_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start server");
        match self.slots.get(&n) {
            Some(&slot) => self.procs.children[slot] = Some(child),
            None => {
                self.slots.insert(n, self.procs.children.len());
                self.procs.children.push(Some(child));
            }
        }
    }

    /// SIGKILL, no chance to flush or say goodbye.
    pub fn kill(&mut self, n: NodeId) {
        let mut child = self.procs.children[self.slots[&n]].take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM: the graceful stop (leadership handed over, requests drained); waits for the
    /// process to exit (it must, within its shutdown limit) and asserts it exited cleanly.
    pub fn stop(&mut self, n: NodeId) {
        self.signal(n, libc::SIGTERM);
        let mut child = self.procs.children[self.slots[&n]].take().unwrap();
        let status = wait_exit(&mut child, Duration::from_secs(20));
        assert!(status.success(), "{n:?} exited with {status} after SIGTERM");
    }

    /// Whether node `n` has a running process (started and not killed).
    pub fn is_running(&self, n: NodeId) -> bool {
        self.slots
            .get(&n)
            .is_some_and(|&slot| self.procs.children[slot].is_some())
    }

    /// Sends `signal` (`libc::SIGSTOP`, `libc::SIGCONT`...) to node `n`'s process.
    pub fn signal(&self, n: NodeId, signal: i32) {
        let pid = self.procs.children[self.slots[&n]]
            .as_ref()
            .expect("running node")
            .id();
        // SAFETY: kill(2) on a child this cluster started and has not reaped.
        let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits (up to `within`) until `shardkv-client status` shows `shards` shards serving,
    /// i.e. every shard of the cluster served and none migrating.
    pub fn wait_every_shard_serving(&self, shards: usize, within: Duration) {
        wait_for("every shard serving", within, || {
            let out = self.run(KV_CLIENT, &["--timeout", "5", "--json", "status"]);
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let serving = status["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["shards"].as_array().cloned().unwrap_or_default())
                .filter(|s| s["state"] == "serving")
                .count();
            (serving == shards).then_some(())
        });
    }

    /// Runs a client binary against the controller, with the cluster's admin certificate (as
    /// an operator's shell would).
    pub fn run(&self, bin: &str, args: &[&str]) -> Output {
        self.run_as("admin", bin, args)
    }

    /// [`ProcCluster::run`] with certificate `name` of [`write_certs`].
    pub fn run_as(&self, name: &str, bin: &str, args: &[&str]) -> Output {
        self.client_command(name, bin, args)
            .output()
            .expect("run client")
    }

    /// Starts a client binary in the background (admin certificate), its output piped; the
    /// caller waits for it (or kills it).
    pub fn spawn_client(&self, bin: &str, args: &[&str]) -> Child {
        self.client_command("admin", bin, args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start client")
    }

    fn client_command(&self, name: &str, bin: &str, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(bin);
        c.arg("--ctrlers")
            .arg(self.addrs(0, &[1, 2, 3]).join(","))
            .args(tls_args_as(self.dir.path(), name))
            .args(args)
            .env_remove("QKV_JSON")
            .env_remove("QKV_TIMEOUT");
        c
    }
}
