//! What the end-to-end tests of the real binaries share: certificates in a temporary
//! directory, free loopback ports, a guard that kills every started process (even when the
//! test panics), and checks of exit codes and one-line errors.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use quorumkv_common::certs::{write_pem, Ca};

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

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes a fresh CA and a `node` certificate for localhost and 127.0.0.1 to `dir/certs`
/// (the node certificate serves as the clients' too).
pub fn write_certs(dir: &Path) {
    let certs = dir.join("certs");
    let ca = Ca::generate("test-ca").unwrap();
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.pem"), &ca.pem().cert).unwrap();
    let node = ca
        .issue("node", &["localhost".into(), "127.0.0.1".into()])
        .unwrap();
    write_pem(&certs, "node", &node).unwrap();
}

/// The file `name` written by [`write_certs`].
pub fn cert(dir: &Path, name: &str) -> PathBuf {
    dir.join("certs").join(name)
}

/// The TLS flags of every binary, pointing at the files of [`write_certs`].
pub fn tls_args(dir: &Path) -> Vec<String> {
    vec![
        "--tls-ca".into(),
        cert(dir, "ca.pem").display().to_string(),
        "--tls-cert".into(),
        cert(dir, "node.pem").display().to_string(),
        "--tls-key".into(),
        cert(dir, "node-key.pem").display().to_string(),
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
