//! Records the git commit the binary is built from, for `--version` and the
//! `partwarden_build_info` metric (`unknown` when not built from a git checkout).

fn main() {
    // A packager may set it (a build from a source tarball has no .git).
    if let Ok(c) = std::env::var("PARTWARDEN_COMMIT") {
        println!("cargo:rustc-env=PARTWARDEN_COMMIT={c}");
        println!("cargo:rerun-if-env-changed=PARTWARDEN_COMMIT");
        return;
    }
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| !o.stdout.is_empty());
    let commit = if dirty && commit != "unknown" {
        format!("{commit}-dirty")
    } else {
        commit
    };
    println!("cargo:rustc-env=PARTWARDEN_COMMIT={commit}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
    println!("cargo:rerun-if-env-changed=PARTWARDEN_COMMIT");
}
