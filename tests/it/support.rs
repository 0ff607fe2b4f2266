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
