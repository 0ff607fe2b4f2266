//! The benchmarks' throwaway PostgreSQL (the test harness crate, `partwarden-testkit`), with
//! partwarden's configuration and library calls on top.

#![allow(dead_code)]

pub use partwarden_testkit::*;

use partwarden::config::Config;

/// partwarden's configuration and bootstrap for a test database.
pub trait Partwarden {
    /// The default configuration (market_odds_history, monthly, premake 3) for this database.
    fn config(&self) -> Config;
    /// The configuration with extra `[database]` keys and further sections.
    fn config_with(&self, database_extra: &str, rest: &str) -> Config;
    /// Runs partwarden's bootstrap (the library call) with `config`.
    async fn bootstrap(&self, config: &Config);
}

impl Partwarden for TestDb {
    fn config(&self) -> Config {
        self.config_with("", "")
    }

    fn config_with(&self, database_extra: &str, rest: &str) -> Config {
        let path = self.write_config(database_extra, rest);
        Config::load(&path).expect("test config loads")
    }

    async fn bootstrap(&self, config: &Config) {
        let opts = partwarden::bootstrap::Options {
            dry_run: false,
            now: None,
        };
        let summary = partwarden::bootstrap::run(config, opts, &mut std::io::sink())
            .await
            .expect("bootstrap");
        assert!(summary.ok(), "{}", summary.to_text());
    }
}

/// Runs one maintenance pass now (not a dry run, never stopped, its text output discarded).
pub async fn run_pass(
    client: &mut tokio_postgres::Client,
    config: &Config,
) -> partwarden::pass::Report {
    let opts = partwarden::pass::Options {
        dry_run: false,
        now: None,
    };
    let never = std::sync::atomic::AtomicBool::new(false);
    partwarden::pass::run(client, config, opts, &never, &mut std::io::sink()).await
}

/// Installs Debian's `postgresql-15-partman` when the extension is missing (as root).
pub fn ensure_partman() {
    let control = "/usr/share/postgresql/15/extension/pg_partman.control";
    if std::path::Path::new(control).exists() {
        return;
    }
    eprintln!("installing postgresql-15-partman (apt-get)");
    let ok = std::process::Command::new("sh")
        .args([
            "-c",
            "apt-get install -y -q postgresql-15-partman >/dev/null || \
             (apt-get update -q >/dev/null && apt-get install -y -q postgresql-15-partman >/dev/null)",
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok && std::path::Path::new(control).exists(),
        "could not install postgresql-15-partman (run as root, or install it by hand)"
    );
}

/// The numbers after `flag` on the command line (`--sizes 1000000,10000000`), if given.
pub fn numbers_arg<T: std::str::FromStr>(flag: &str) -> Option<Vec<T>> {
    std::env::args().skip_while(|a| a != flag).nth(1).map(|s| {
        s.split(',')
            .map(|n| n.parse().unwrap_or_else(|_| panic!("{flag} takes numbers")))
            .collect()
    })
}
