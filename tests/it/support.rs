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
