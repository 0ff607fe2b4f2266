//! Least privilege, secrets, hostile configuration.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use chrono::{Months, Utc};
use partwarden::period::Interval;

use crate::support::{TestDb, partwarden, path_str};

fn month(back: u32) -> String {
    format!(
        "market_odds_history{}",
        Interval::Monthly.suffix(Interval::Monthly.floor(Utc::now()) - Months::new(back))
    )
}

/// The statements of the README's "Least privilege" section, for roles `owner` and `reader`.
fn grants(owner: &str, reader: &str) -> String {
    format!(
        "CREATE ROLE {owner} LOGIN;
         CREATE SCHEMA partwarden AUTHORIZATION {owner};
         CREATE SCHEMA partwarden_archive AUTHORIZATION {owner};
         GRANT USAGE, CREATE ON SCHEMA public TO {owner};
         GRANT pg_read_all_stats TO {owner};
         CREATE ROLE {reader} LOGIN;
         GRANT USAGE ON SCHEMA partwarden TO {reader};
         ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA partwarden GRANT SELECT ON TABLES TO {reader};
         ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT SELECT ON TABLES TO {reader};"
    )
}

#[tokio::test]
async fn everything_works_as_a_non_superuser_owner_and_check_degrades_for_a_reader() {
    let db = TestDb::new("least_privilege").await;
    let suffix = format!("{}_{}", std::process::id(), db.name.len());
    let (owner, reader) = (format!("pw_owner_{suffix}"), format!("pw_reader_{suffix}"));
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {reader}; DROP ROLE IF EXISTS {owner};"
        ))
        .await
        .ok();
    admin.batch_execute(&grants(&owner, &reader)).await.unwrap();
    let superuser: bool = admin
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = $1",
            &[&owner],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!superuser);

    let as_owner = db.url.replace("user=postgres", &format!("user={owner}"));
    let config = db.dir.path().join("owner.toml");
    std::fs::write(
        &config,
        format!("[database]\nurl = \"{as_owner}\"\n[maintenance]\narchive_dir = \"archive\"\n"),
    )
    .unwrap();
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--bootstrap"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    // An old partition, made by the owner as the application would, then expired by a pass.
    let owner_client = crate::support::connect(&as_owner).await;
    let lo = Interval::Monthly.floor(Utc::now()) - Months::new(8);
    owner_client
        .batch_execute(&format!(
            "CREATE TABLE {} PARTITION OF market_odds_history FOR VALUES FROM ('{}') TO ('{}');
             INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, outcomes, captured_at)
             VALUES (1, 'betpawa', 'x', '[]', '{}')",
            month(8),
            lo.to_rfc3339(),
            (lo + Months::new(1)).to_rfc3339(),
            lo.to_rfc3339()
        ))
        .await
        .unwrap();
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("expired 1 (public.{})", month(8))),
        "{out}"
    );
    // on_expiry = detach moves into partwarden_archive, which the owner owns but did not create.
    owner_client
        .batch_execute(&format!(
            "CREATE TABLE {} PARTITION OF market_odds_history FOR VALUES FROM ('{}') TO ('{}')",
            month(9),
            (lo - Months::new(1)).to_rfc3339(),
            lo.to_rfc3339()
        ))
        .await
        .unwrap();
    let detach = db.dir.path().join("detach.toml");
    std::fs::write(
        &detach,
        format!(
            "[database]\nurl = \"{as_owner}\"\n[maintenance]\narchive_dir = \"archive\"\n\
             [[tables]]\nname = \"public.market_odds_history\"\nretention = \"6 months\"\non_expiry = \"detach\"\n"
        ),
    )
    .unwrap();
    let (code, out, err) = partwarden(&["--config", path_str(&detach), "--run-once"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--check"], &[]);
    assert_eq!(code, 0, "{out}{err}");

    // A reader without INSERT: routing is skipped with a warning, nothing crashes.
    let as_reader = db.url.replace("user=postgres", &format!("user={reader}"));
    let rconfig = db.dir.path().join("reader.toml");
    std::fs::write(
        &rconfig,
        format!("[database]\nurl = \"{as_reader}\"\n[maintenance]\narchive_dir = \"archive\"\n"),
    )
    .unwrap();
    let (code, out, err) = partwarden(&["--config", path_str(&rconfig), "--check"], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("WARN routing") && l.contains("no INSERT privilege")),
        "{out}"
    );
    assert!(!out.contains("UNKN") && !out.contains("CRIT"), "{out}");
}

#[tokio::test]
async fn the_password_appears_in_no_output() {
    let db = TestDb::new("secrets").await;
    let secret = "Sup3r-Secret-Pa55";
    let base = db.write_config("", "");
    let text = std::fs::read_to_string(&base).unwrap();
    let pw_file = db.dir.path().join("pw");
    std::fs::write(&pw_file, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&pw_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let in_url = text.replace("user=postgres", &format!("user=postgres password={secret}"));
    let in_file = text.replace(
        "lock_timeout = \"200ms\"",
        &format!(
            "lock_timeout = \"200ms\"\npassword_file = \"{}\"",
            pw_file.display()
        ),
    );
    let unreachable = format!(
        "[database]\nurl = \"postgresql://postgres:{secret}@127.0.0.1:1/odds\"\nconnect_timeout = \"1s\"\n"
    );
    let bad_port =
        format!("[database]\nurl = \"postgresql://postgres:{secret}@127.0.0.1:notaport/odds\"\n");
    let bad_key =
        format!("[database]\nurl = \"postgresql://postgres:{secret}@127.0.0.1/odds\"\nbogus = 1\n");
    let mut seen = String::new();
    for (name, config_text, env) in [
        ("url", in_url.as_str(), vec![]),
        ("file", in_file.as_str(), vec![]),
        ("env", text.as_str(), vec![("PGPASSWORD", secret)]),
        ("unreachable", unreachable.as_str(), vec![]),
        ("bad_port", bad_port.as_str(), vec![]),
        ("bad_key", bad_key.as_str(), vec![]),
    ] {
        let path = db.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, config_text).unwrap();
        for args in [
            vec!["--bootstrap"],
            vec!["--bootstrap", "--dry-run"],
            vec!["--run-once"],
            vec!["--run-once", "--dry-run"],
            vec!["--check"],
            vec!["--check", "--format", "json"],
        ] {
            let mut all = vec!["--config", path_str(&path)];
            all.extend(args.iter().copied());
            let (_, out, err) = partwarden(&all, &env);
            assert!(
                !out.contains(secret) && !err.contains(secret),
                "{name} {args:?} leaked it:\n{out}\n{err}"
            );
            seen.push_str(&out);
            seen.push_str(&err);
        }
    }
    // The runs did run: they reached the database and reported.
    assert!(seen.contains("runway"), "{seen}");
    assert!(seen.contains("cannot connect"), "{seen}");

    // The daemon's logs too.
    let path = db.dir.path().join("url.toml");
    let daemon_config = std::fs::read_to_string(&path).unwrap().replace(
        "archive_dir = \"archive\"\n",
        "archive_dir = \"archive\"\nschedule = \"* * * * * *\"\n",
    );
    std::fs::write(&path, daemon_config).unwrap();
    let log = db.dir.path().join("daemon.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_partwarden"))
        .args(["--config", path_str(&path)])
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let _ = child.kill();
    let _ = child.wait();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("maintenance pass finished"), "{logged}");
    assert!(!logged.contains(secret), "{logged}");
}

#[test]
fn a_password_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "x\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("[database]\npassword_file = \"{}\"\n", pw.display()),
    )
    .unwrap();
    let (code, _, err) = partwarden(&["--config", path_str(&config), "--bootstrap"], &[]);
    assert_eq!(code, 78);
    assert!(
        err.contains("readable by group or others") && err.contains("chmod 600"),
        "{err}"
    );
}

#[test]
fn hostile_names_are_refused_at_validation() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    for (name, why) in [
        ("public.od\\\"ds", "contains '\"'"),
        ("public.odds;drop table x", "contains ';'"),
        ("Public.Odds", "must start with a lower-case letter"),
        ("a.b.c", "not a table name of the form schema.table"),
        ("public.odds history", "contains ' '"),
        (
            &format!("public.{}", "x".repeat(64)),
            "PostgreSQL allows at most 63",
        ),
        (&format!("public.{}", "x".repeat(56)), "partition names of"),
    ] {
        std::fs::write(&config, format!("[[tables]]\nname = \"{name}\"\n")).unwrap();
        let (code, _, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
        assert_eq!(code, 78, "{name}: {err}");
        assert!(err.contains(why), "{name}: expected {why:?} in {err}");
    }
    std::fs::write(
        &config,
        "[[tables]]\nname = \"public.m\"\npartition_key = \"captured_at; --\"\n",
    )
    .unwrap();
    assert_eq!(
        partwarden(&["--config", path_str(&config), "--run-once"], &[]).0,
        78
    );
    std::fs::write(&config, "[maintenance]\narchive_dir = \"../archive\"\n").unwrap();
    let (code, _, err) = partwarden(&["--config", path_str(&config), "--run-once"], &[]);
    assert_eq!(code, 78);
    assert!(err.contains("contains `..`"), "{err}");
}
