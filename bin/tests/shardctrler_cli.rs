//! End to end with the real binaries: three `shardctrler-server` processes on loopback (one
//! configured through a TOML file), driven by `shardctrler-client`. Every server is killed when
//! the test ends, even when it fails.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use support::{free_port, http_get, ok, one_line_error, stderr_of, wait_exit, Servers};

const SERVER: &str = env!("CARGO_BIN_EXE_shardctrler-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_shardctrler-client");
const SHARDS: usize = 16;

struct Env {
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    admin_port: u16,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        support::write_certs(dir.path());
        Env {
            dir,
            ports: (0..3).map(|_| free_port()).collect(),
            admin_port: free_port(),
        }
    }

    fn cert(&self, name: &str) -> PathBuf {
        support::cert(self.dir.path(), name)
    }

    fn cluster(&self) -> String {
        (1..)
            .zip(&self.ports)
            .map(|(id, p)| format!("{id}=127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn ctrlers(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn tls_args(&self) -> Vec<String> {
        support::tls_args(self.dir.path())
    }

    fn server_args(&self, id: usize, shards: usize) -> Vec<String> {
        let mut a = vec![
            "--id".into(),
            id.to_string(),
            "--cluster".into(),
            self.cluster(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.ports[id - 1]),
            "--data-dir".into(),
            self.dir.path().join(format!("n{id}")).display().to_string(),
            "--shards".into(),
            shards.to_string(),
            "--log-level".into(),
            "warn".into(),
        ];
        if id == 1 {
            a.extend([
                "--admin-listen".into(),
                format!("127.0.0.1:{}", self.admin_port),
            ]);
        }
        a.extend(self.tls_args());
        a
    }

    /// Member 3 takes everything from a TOML file (and its listen address from the environment).
    fn config_file(&self) -> PathBuf {
        let path = self.dir.path().join("n3.toml");
        let text = format!(
            "id = 3\ncluster = \"{}\"\ndata-dir = \"{}\"\nshards = {SHARDS}\nlog-level = \"warn\"\n\
             tls-ca = \"{}\"\ntls-cert = \"{}\"\ntls_key = \"{}\"\n",
            self.cluster(),
            self.dir.path().join("n3").display(),
            self.cert("ca.pem").display(),
            self.cert("node.pem").display(),
            self.cert("node-key.pem").display(),
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn spawn(&self, id: usize, shards: usize) -> Child {
        let mut cmd = Command::new(SERVER);
        if id == 3 {
            cmd.arg("--config").arg(self.config_file());
            cmd.env("QKV_LISTEN", format!("127.0.0.1:{}", self.ports[2]));
        } else {
            cmd.args(self.server_args(id, shards));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shardctrler-server")
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(CLIENT)
            .arg("--ctrlers")
            .arg(self.ctrlers())
            .args(support::tls_args_as(self.dir.path(), "admin"))
            .args(["--timeout", "20"])
            .args(args)
            .env_remove("QKV_JSON")
            .output()
            .expect("run shardctrler-client")
    }
}

fn data_dir(env: &Env, id: usize) -> PathBuf {
    env.dir.path().join(format!("n{id}"))
}

fn assert_exists(p: &Path) {
    assert!(p.exists(), "{} missing", p.display());
}

#[test]
fn cli_drives_a_three_member_controller() {
    quorumkv_common::tls::install_crypto_provider();
    let env = Env::new();
    let mut servers = Servers {
        children: (1..=3).map(|id| Some(env.spawn(id, SHARDS))).collect(),
    };

    // Join (retried by the client until a leader is elected), then the table shows the groups.
    let out = ok(&env.cli(&["join", "1=a:7001,b:7001,c:7001", "2=d:7001,e:7001"]));
    assert_eq!(out.trim(), "configuration 1");
    // Joining again with the same servers (in any order) changes nothing and succeeds; with
    // other servers it is refused.
    let again = ok(&env.cli(&["join", "1=c:7001,a:7001,B:7001"]));
    assert_eq!(
        again.trim(),
        "configuration 1\ngroup 1 was already joined with these servers: unchanged"
    );
    let err = one_line_error(&env.cli(&["join", "2=d:7001,x:7001"]), 1);
    assert!(
        err.contains("group 2 is already in configuration 1 with other servers"),
        "{err}"
    );
    let table = ok(&env.cli(&["query"]));
    assert!(
        table.contains("configuration 1: 16 shards, 2 groups"),
        "{table}"
    );
    assert!(table.contains("a:7001,b:7001,c:7001"), "{table}");
    assert!(table.contains("d:7001,e:7001"), "{table}");
    assert!(table.contains("unassigned: -"), "{table}");
    assert!(table.contains("0-7") || table.contains("8-15"), "{table}");

    let json: serde_json::Value =
        serde_json::from_str(&ok(&env.cli(&["--json", "query"]))).unwrap();
    assert_eq!(json["num"], 1);
    assert_eq!(json["shards"].as_array().unwrap().len(), SHARDS);
    assert_eq!(json["groups"].as_array().unwrap().len(), 2);
    assert_eq!(json["groups"][0]["gid"], 1);

    assert_eq!(ok(&env.cli(&["move", "0", "2"])).trim(), "configuration 2");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&env.cli(&["--json", "query", "2"]))).unwrap();
    assert_eq!(json["shards"][0], 2);
    let moved: serde_json::Value =
        serde_json::from_str(&ok(&env.cli(&["--json", "leave", "1"]))).unwrap();
    assert_eq!(moved["num"], 3);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&env.cli(&["--json", "query"]))).unwrap();
    assert!(
        json["shards"].as_array().unwrap().iter().all(|g| g == 2),
        "{json}"
    );
    // History is unchanged.
    let again: serde_json::Value =
        serde_json::from_str(&ok(&env.cli(&["--json", "query", "1"]))).unwrap();
    assert_eq!(again["groups"].as_array().unwrap().len(), 2);

    // Refused by the controller: exit 1, one line.
    let err = one_line_error(&env.cli(&["leave", "99"]), 1);
    assert!(
        err.contains("invalid argument") && err.contains("99"),
        "{err}"
    );
    assert!(!err.contains("invalid argument: invalid argument"), "{err}");

    // Roles: a client certificate reads configurations but may not change them; a
    // certificate from another CA is refused at the TLS handshake, and the CLI says so.
    let as_cert = |name: &str, args: &[&str]| {
        Command::new(CLIENT)
            .arg("--ctrlers")
            .arg(env.ctrlers())
            .args(support::tls_args_as(env.dir.path(), name))
            .args(["--timeout", "20s"])
            .args(args)
            .env_remove("QKV_JSON")
            .output()
            .unwrap()
    };
    ok(&as_cert("client", &["query"]));
    let err = one_line_error(&as_cert("client", &["move", "1", "2"]), 1);
    assert!(
        err.contains(
            "permission denied: quorumkv.shardctrler.ShardCtrler/Move needs an admin \
                      certificate; this connection presented a client certificate"
        ),
        "{err}"
    );
    let stranger = tempfile::tempdir().unwrap();
    support::write_certs(stranger.path());
    std::fs::copy(env.cert("ca.pem"), stranger.path().join("certs/ca.pem")).unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(CLIENT)
        .arg("--ctrlers")
        .arg(env.ctrlers())
        .args(support::tls_args_as(stranger.path(), "admin"))
        .args(["--timeout", "20", "query"])
        .output()
        .unwrap();
    let err = one_line_error(&out, 1);
    assert!(
        err.contains("TLS: the server refused this client's TLS certificate (alert "),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a refusal is not retried"
    );
    // Bad arguments: exit 2 (clap's convention).
    assert_eq!(env.cli(&["join", "0=a:1"]).status.code(), Some(2));
    assert_eq!(env.cli(&["move", "x", "1"]).status.code(), Some(2));

    // Health endpoint of member 1.
    let reply = http_get(env.admin_port, "/health/alive");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // SIGTERM stops member 1 cleanly; restarted with another shard count it refuses.
    let mut m1 = servers.children[0].take().unwrap();
    let killed = Command::new("kill")
        .args(["-TERM", &m1.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_exit(&mut m1, Duration::from_secs(15));
    assert!(status.success(), "exit {status:?}: {}", stderr_of(&mut m1));
    assert_exists(&data_dir(&env, 1).join("controller.meta"));
    let mut wrong = env.spawn(1, 32);
    let status = wait_exit(&mut wrong, Duration::from_secs(15));
    assert!(!status.success());
    let err = stderr_of(&mut wrong);
    let last = err
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(last.contains("16 shards, not 32"), "{err}");
    servers.children[0] = Some(env.spawn(1, SHARDS));
    assert_eq!(
        ok(&env.cli(&["join", "3=f:7001"])).trim(),
        "configuration 4"
    );
}

#[test]
fn server_refuses_bad_configuration_with_one_line() {
    let env = Env::new();
    let mut args = env.server_args(1, SHARDS);
    let id = args.iter().position(|a| a == "--id").unwrap();
    args[id + 1] = "9".into();
    let out = Command::new(SERVER).args(&args).output().unwrap();
    let err = one_line_error(&out, 1);
    assert!(err.contains("--id 9 is not in --cluster"), "{err}");

    let bad_file = env.dir.path().join("bad.toml");
    std::fs::write(&bad_file, "no-such-flag = 1\n").unwrap();
    let out = Command::new(SERVER)
        .args(["--config", bad_file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = one_line_error(&out, 1);
    assert!(err.contains("unknown key \"no-such-flag\""), "{err}");

    let out = Command::new(SERVER)
        .args(env.server_args(2, 0))
        .output()
        .unwrap();
    assert!(one_line_error(&out, 1).contains("--shards 0"));
}
