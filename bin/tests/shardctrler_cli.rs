//! End to end with the real binaries: three `shardctrler-server` processes on loopback (one
//! configured through a TOML file), driven by `shardctrler-client`. Every server is killed when
//! the test ends, even when it fails.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use quorumkv_common::certs::{write_pem, Ca};

const SERVER: &str = env!("CARGO_BIN_EXE_shardctrler-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_shardctrler-client");
const SHARDS: usize = 16;

/// Kills the servers when dropped.
struct Servers {
    children: Vec<Option<Child>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Env {
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    admin_port: u16,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let ca = Ca::generate("test-ca").unwrap();
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::write(certs.join("ca.pem"), &ca.pem().cert).unwrap();
        let node = ca
            .issue("node", &["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        write_pem(&certs, "node", &node).unwrap();
        Env {
            dir,
            ports: (0..3).map(|_| free_port()).collect(),
            admin_port: free_port(),
        }
    }

    fn cert(&self, name: &str) -> PathBuf {
        self.dir.path().join("certs").join(name)
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
        vec![
            "--tls-ca".into(),
            self.cert("ca.pem").display().to_string(),
            "--tls-cert".into(),
            self.cert("node.pem").display().to_string(),
            "--tls-key".into(),
            self.cert("node-key.pem").display().to_string(),
        ]
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
            .args(self.tls_args())
            .args(["--timeout", "20"])
            .args(args)
            .env_remove("QKV_JSON")
            .output()
            .expect("run shardctrler-client")
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// stderr of a failed run: exactly one line.
fn one_line_error(out: &Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert!(
        !err.is_empty() && !err.contains('\n'),
        "not one line: {err:?}"
    );
    err
}

/// Waits (bounded) for a child to exit.
fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
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

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    s
}

fn http_get(port: u16, path: &str) -> String {
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
