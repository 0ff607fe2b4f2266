//! The command line contract: exit codes, configuration errors, unreachable databases, secrets.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::{TestDb, catalog_dump, partwarden, path_str};

fn write(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("config.toml");
    std::fs::File::create(&p)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    p
}

#[tokio::test]
async fn configuration_errors_exit_78_with_one_line_and_touch_nothing() {
    let db = TestDb::new("config_errors").await;
    let c = db.client().await;
    let before = catalog_dump(&c).await;
    let url = format!("[database]\nurl = \"{}\"\n", db.url);
    let cases: &[(&str, &str)] = &[
        ("[database]\nurl = \"x\"\nbogus = 1\n", "bogus"),
        (
            "[maintenance]\nschedule = \"every ten minutes\"\n",
            "maintenance.schedule",
        ),
        (
            "[database]\nlock_timeout = \"soon\"\n",
            "database.lock_timeout",
        ),
        (
            "[database]\nlock_timeout = \"90s\"\n",
            "database.lock_timeout",
        ),
        (
            "[[tables]]\nname = \"public.odds; DROP TABLE x\"\n",
            "tables[0].name",
        ),
        ("[[tables]]\nname = \"Public.Odds\"\n", "tables[0].name"),
        (
            "[[tables]]\nname = \"public.market_odds_history\"\npremake = 0\n",
            "tables[0].premake",
        ),
        (
            "[[tables]]\nname = \"public.market_odds_history\"\npremake = 121\n",
            "tables[0].premake",
        ),
        (
            "[[tables]]\nname = \"public.market_odds_history\"\npremake = \"three\"\n",
            "premake",
        ),
        (
            "[[tables]]\nname = \"public.market_odds_history\"\ninterval = \"hourly\"\n",
            "tables[0].interval",
        ),
        (
            "[[tables]]\nname = \"public.market_odds_history\"\nretention = \"six months\"\n",
            "tables[0].retention",
        ),
        (
            "[[tables]]\nname = \"public.market_odds_history\"\non_expiry = \"delete\"\n",
            "tables[0].on_expiry",
        ),
        (
            "[[tables]]\nname = \"public.m\"\n[[tables]]\nname = \"public.m\"\n",
            "tables[1].name",
        ),
        (
            &format!("[[tables]]\nname = \"public.{}\"\n", "x".repeat(60)),
            "63",
        ),
        (
            "[maintenance]\narchive_dir = \"/var/lib/../../etc\"\n",
            "maintenance.archive_dir",
        ),
        (
            "[database]\npassword_file = \"/nonexistent/pw\"\n",
            "database.password_file",
        ),
        ("this is not toml", "config.toml"),
    ];
    for (text, key) in cases {
        let full = if text.starts_with("[database]") {
            text.to_string()
        } else {
            format!("{url}{text}")
        };
        let path = write(db.dir.path(), &full);
        let (code, stdout, stderr) = partwarden(&["--config", path_str(&path), "--bootstrap"], &[]);
        assert_eq!(code, 78, "{text:?}: {stdout} {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line for {text:?}: {stderr}");
        assert!(
            lines[0].contains(path_str(&path)),
            "names the file: {stderr}"
        );
        assert!(lines[0].contains(key), "names {key:?}: {stderr}");
    }
    assert_eq!(catalog_dump(&c).await, before, "nothing was touched");

    // A missing file is a configuration error too.
    let (code, _, stderr) = partwarden(
        &["--config", "/nonexistent/partwarden.toml", "--bootstrap"],
        &[],
    );
    assert_eq!(code, 78, "{stderr}");
}

#[tokio::test]
async fn environment_overrides_keys() {
    let db = TestDb::new("env_override").await;
    let path = write(
        db.dir.path(),
        "[database]\nurl = \"host=127.0.0.1 port=1 user=nobody\"\n",
    );
    let (code, stdout, stderr) = partwarden(
        &["--config", path_str(&path), "--bootstrap"],
        &[("PARTWARDEN__DATABASE__URL", &db.url)],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, _, stderr) = partwarden(
        &["--config", path_str(&path), "--bootstrap"],
        &[
            ("PARTWARDEN__DATABASE__URL", &db.url),
            ("PARTWARDEN__DATABASE__CONNECT_TIMEOUT", "never"),
        ],
    );
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("database.connect_timeout"), "{stderr}");
    // Issue "round two", also: the error names the variable, not the file, when the value
    // came from the environment (before: "<file>: key `database.connect_timeout` ...").
    assert!(
        stderr.contains("environment variable PARTWARDEN__DATABASE__CONNECT_TIMEOUT"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    // Another key from the environment: its variable is named too.
    let (code, _, stderr) = partwarden(
        &["--config", path_str(&path), "--bootstrap"],
        &[
            ("PARTWARDEN__DATABASE__URL", &db.url),
            ("PARTWARDEN__MAINTENANCE__SCHEDULE", "not cron"),
        ],
    );
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("PARTWARDEN__MAINTENANCE__SCHEDULE"),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, stderr) = partwarden(&["--bootstrap", "--now", "2026-12-01T00:00:00Z"], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--dry-run"), "{stderr}");
    assert_eq!(partwarden(&["--bootstrap", "--check"], &[]).0, 2);
    assert_eq!(partwarden(&["--frobnicate"], &[]).0, 2);
    // The version and the commit it was built from (issue "The operator's kit").
    let (code, stdout, _) = partwarden(&["--version"], &[]);
    assert_eq!(code, 0);
    let rest = stdout
        .trim()
        .strip_prefix(concat!(
            "partwarden ",
            env!("CARGO_PKG_VERSION"),
            " (commit "
        ))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        rest == "unknown"
            || rest
                .trim_end_matches("-dirty")
                .chars()
                .all(|c| c.is_ascii_hexdigit()),
        "{stdout}"
    );
    let (code, stdout, _) = partwarden(&["--help"], &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains("--bootstrap") && stdout.contains("Exit codes"));
}

#[test]
fn unreachable_database_is_a_clear_error_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1.
    let path = write(
        dir.path(),
        "[database]\nurl = \"postgresql://odds:hunter2secret@127.0.0.1:1/odds\"\nconnect_timeout = \"2s\"\n",
    );
    let (code, stdout, stderr) = partwarden(&["--config", path_str(&path), "--bootstrap"], &[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("cannot connect to PostgreSQL at 127.0.0.1:1/odds as odds"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2secret") && !stdout.contains("hunter2secret"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));

    // A server that accepts and never answers: bounded by connect_timeout.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let path = write(
        dir.path(),
        &format!(
            "[database]\nurl = \"postgresql://odds:hunter2secret@127.0.0.1:{port}/odds\"\nconnect_timeout = \"1s\"\n"
        ),
    );
    let started = Instant::now();
    let (code, _, stderr) = partwarden(&["--config", path_str(&path), "--bootstrap"], &[]);
    let elapsed = started.elapsed();
    drop(listener);
    assert_eq!(code, 1, "{stderr}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(
        stderr.contains("cannot connect") && !stderr.contains("hunter2secret"),
        "{stderr}"
    );
}

#[test]
fn the_annotated_config_toml_loads_and_matches_the_defaults() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let annotated =
        partwarden::config::Config::load(&root.join("config.toml")).expect("config.toml loads");
    let dir = tempfile::tempdir().unwrap();
    let empty =
        partwarden::config::Config::load(&write(dir.path(), "")).expect("an empty file loads");
    // Every default in the code is the one config.toml documents.
    let strip = |c: &partwarden::config::Config| {
        format!("{:?} {:?} {:?}", c.database, c.maintenance, c.tables)
    };
    assert_eq!(strip(&annotated), strip(&empty));
}
