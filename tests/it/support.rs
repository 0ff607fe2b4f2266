//! Test helpers: the throwaway PostgreSQL (`pg.rs`) and a runner for the real binary.

#![allow(dead_code)]

pub use crate::pg::*;

use std::path::Path;
use std::process::Command;

/// Runs the real binary with `args`, returning (exit code, stdout, stderr).
pub fn partwarden(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_partwarden"));
    cmd.args(args)
        .env_remove("PARTWARDEN_CONFIG")
        .env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run partwarden");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `--run-once --dry-run --now <at>`: the plan as if the clock said `at`.
pub fn dry_run_pass_at(config: &Path, at: chrono::DateTime<chrono::Utc>) -> (i32, String, String) {
    partwarden(
        &[
            "--config",
            path_str(config),
            "--run-once",
            "--dry-run",
            "--now",
            &at.to_rfc3339(),
        ],
        &[],
    )
}

/// Runs `--check --format json`: (exit code, the report).
pub fn check_json(config: &Path) -> (i32, serde_json::Value) {
    let (code, out, err) = partwarden(
        &["--config", path_str(config), "--check", "--format", "json"],
        &[],
    );
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}\n{err}"));
    (code, v)
}

/// Runs `partwarden --bootstrap` with `config`, asserting that it succeeds.
pub fn bootstrap_cli(config: &Path) {
    let (code, out, err) = partwarden(&["--config", path_str(config), "--bootstrap"], &[]);
    assert_eq!(code, 0, "{out}{err}");
}

/// A new database with the default test configuration, bootstrapped by the real binary.
pub async fn bootstrapped(test: &str) -> TestDb {
    let db = TestDb::new(test).await;
    bootstrap_cli(&db.write_config("", ""));
    db
}

/// A TCP proxy on 127.0.0.1 in front of `target_port` that can be frozen: while frozen it
/// accepts connections and keeps every one open but moves no byte either way, as a network
/// path that stops answering (a hung load balancer, a partition) does. Threads end with the
/// test process.
pub struct StallingProxy {
    pub port: u16,
    pub frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StallingProxy {
    pub fn start(target_port: u16) -> StallingProxy {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = frozen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        loop {
                            while flag.load(Ordering::SeqCst) {
                                std::thread::sleep(std::time::Duration::from_millis(20));
                            }
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    while flag.load(Ordering::SeqCst) {
                                        std::thread::sleep(std::time::Duration::from_millis(20));
                                    }
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        StallingProxy { port, frozen }
    }

    pub fn freeze(&self, on: bool) {
        self.frozen.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}
