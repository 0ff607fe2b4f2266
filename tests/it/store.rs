//! Archives on S3-compatible object storage (issue "Archives that leave the host"): against a
//! real S3 API (moto's server, started by the testkit), never a mock of the client.

use std::path::{Path, PathBuf};

use partwarden_testkit::{S3Server, s3_server};

use crate::lifecycle::{ROWS, history, ledger, month_name, rows_hash};
use crate::support::{TestDb, partwarden, path_str};

/// Points the configuration at `s3://<bucket>/odds`, spooling in `spool/`, with `extra` more
/// `[maintenance]` keys.
fn to_store(config: &Path, bucket: &str, extra: &str) {
    let text = std::fs::read_to_string(config).unwrap().replace(
        "archive_dir = \"archive\"",
        &format!("archive_dir = \"s3://{bucket}/odds\"\nspool_dir = \"spool\"\n{extra}"),
    );
    std::fs::write(config, text).unwrap();
}

fn env(s3: &S3Server) -> Vec<(&'static str, String)> {
    s3.env()
}

fn run(config: &Path, s3: &S3Server, args: &[&str]) -> (i32, String, String) {
    let env = env(s3);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut all = vec!["--config", path_str(config)];
    all.extend_from_slice(args);
    partwarden(&all, &env)
}

fn keys_of(s3: &S3Server, bucket: &str) -> Vec<String> {
    s3.keys(bucket, "odds/")
}

fn spooled(db: &TestDb) -> Vec<PathBuf> {
    let dir = db
        .dir
        .path()
        .join("spool")
        .join("public.market_odds_history");
    std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

/// An expired partition goes to the store: uploaded, read back from the store and verified
/// there, then dropped; the spool is emptied; `--restore s3://...` brings back the same rows.
#[tokio::test]
async fn expiry_archives_to_the_store_verified_and_restores_from_it() {
    let s3 = s3_server();
    let bucket = "pw-roundtrip";
    s3.create_bucket(bucket);
    let db = TestDb::new("store_roundtrip").await;
    let config = history(&db, &[8, 2], "", "").await;
    to_store(&config, bucket, "");
    let before = rows_hash(&db, &month_name(8)).await;
    assert_eq!(before.0, ROWS);

    let (code, out, err) = run(&config, s3, &["--run-once"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!db.exists(&month_name(8)).await, "dropped");
    assert_eq!(
        ledger(&db, &month_name(8)).await,
        ["detach", "archive", "upload", "drop"]
    );
    let stem = format!("odds/public.market_odds_history/public.{}", month_name(8));
    assert_eq!(
        keys_of(s3, bucket),
        [
            format!("{stem}.manifest.json"),
            format!("{stem}.pgcopy.zst")
        ]
    );
    assert!(spooled(&db).is_empty(), "{:?}", spooled(&db));
    // No credential in anything partwarden printed.
    assert!(!format!("{out}{err}").contains("partwarden-test-secret"));

    // --check probes the store: reachable, writable, and the probe object is gone again.
    let (code, out, err) = run(&config, s3, &["--check", "--format", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"writable\": true"), "{out}");
    assert_eq!(keys_of(s3, bucket).len(), 2);

    let url = format!("s3://{bucket}/{stem}.manifest.json");
    let (code, out, err) = run(&config, s3, &["--restore", &url]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(rows_hash(&db, &month_name(8)).await, before);
}

/// The store unreachable, or its bucket missing: the pre-flight's probe object cannot be
/// written, so the partition is not even detached (the application keeps seeing its rows),
/// the pass says why, `--check` is critical, and a later pass with the store back finishes
/// the expiry.
#[tokio::test]
async fn a_store_that_fails_keeps_the_table_until_it_works() {
    let s3 = s3_server();
    let db = TestDb::new("store_fails").await;
    let config = history(&db, &[8, 2], "", "").await;
    let before = rows_hash(&db, &month_name(8)).await;

    // A bucket that does not exist.
    to_store(&config, "pw-no-such-bucket", "");
    let (code, out, err) = run(&config, s3, &["--run-once"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("not detached") && out.contains("cannot be written"),
        "{out}"
    );
    assert!(crate::faults::attached(&db.client().await, &month_name(8)).await);
    assert_eq!(rows_hash(&db, &month_name(8)).await, before);
    assert!(ledger(&db, &month_name(8)).await.is_empty());
    let (code, out, _) = run(&config, s3, &["--check"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot be written"), "{out}");

    // A store that does not answer (nothing listens on the port).
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "s3://pw-no-such-bucket/odds\"",
        &format!("s3://pw-back/odds\"\ns3_endpoint = \"http://127.0.0.1:{port}\""),
    );
    std::fs::write(&config, &text).unwrap();
    let (code, out, err) = run(&config, s3, &["--run-once"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(db.exists(&month_name(8)).await);
    assert_eq!(rows_hash(&db, &month_name(8)).await, before);

    // The store back, with its bucket: the next pass finishes the expiry.
    s3.create_bucket("pw-back");
    let text = text.replace(&format!("s3_endpoint = \"http://127.0.0.1:{port}\""), "");
    std::fs::write(&config, text).unwrap();
    let (code, out, err) = run(&config, s3, &["--run-once"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!db.exists(&month_name(8)).await);
    assert_eq!(keys_of(s3, "pw-back").len(), 2);
}

/// A pass that stopped right after uploading, then someone changed the object in the bucket:
/// the next pass reads it back, finds it is not the archive, never replaces it, and writes
/// the archive again as a new version before dropping anything.
#[tokio::test]
async fn an_object_changed_in_the_bucket_is_never_taken_for_the_archive() {
    let s3 = s3_server();
    let bucket = "pw-changed";
    s3.create_bucket(bucket);
    let db = TestDb::new("store_changed").await;
    let config = history(&db, &[8, 2], "", "").await;
    to_store(&config, bucket, "");
    let before = rows_hash(&db, &month_name(8)).await;

    let env = env(s3);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("PARTWARDEN_FAILPOINT", "after_upload"));
    let (code, _, _) = partwarden(&["--config", path_str(&config), "--run-once"], &env);
    assert_ne!(code, 0);
    assert!(db.exists(&month_name(8)).await);
    let stem = format!("odds/public.market_odds_history/public.{}", month_name(8));
    let (status, _) = s3.request(
        "PUT",
        &format!("/{bucket}/{stem}.pgcopy.zst"),
        b"not the archive any more",
    );
    assert_eq!(status, 200);

    let (code, out, err) = run(&config, s3, &["--run-once"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!db.exists(&month_name(8)).await);
    let keys = keys_of(s3, bucket);
    assert!(
        keys.contains(&format!("{stem}.v2.pgcopy.zst"))
            && keys.contains(&format!("{stem}.v2.manifest.json")),
        "{keys:?}"
    );
    // The changed object is still there, untouched: never replaced.
    assert_eq!(
        s3.size(bucket, &format!("{stem}.pgcopy.zst")),
        Some(b"not the archive any more".len() as u64)
    );
    let url = format!("s3://{bucket}/{stem}.v2.manifest.json");
    let (code, out, err) = run(&config, s3, &["--restore", &url]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(rows_hash(&db, &month_name(8)).await, before);
}

/// Credentials the store refuses: the table stays, `--check` is critical, and the secret
/// appears in nothing partwarden prints. With credentials it accepts, archive_command runs and
/// never sees the store's secrets in its environment, not even under another name.
#[tokio::test]
async fn wrong_credentials_keep_the_table_and_no_secret_leaves() {
    // moto with authentication on: only keys it issued are accepted.
    let strict = S3Server::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let db = TestDb::new("store_credentials").await;
    let config = history(&db, &[8, 2], "", "").await;
    to_store(&config, "pw-creds", "");
    let before = rows_hash(&db, &month_name(8)).await;
    let (code, out, err) = run(&config, &strict, &["--run-once"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(db.exists(&month_name(8)).await);
    assert_eq!(rows_hash(&db, &month_name(8)).await, before);
    let (code, check, _) = run(&config, &strict, &["--check", "--format", "json"]);
    assert_eq!(code, 2, "{check}");
    assert!(check.contains("\"writable\": false"), "{check}");
    for text in [&out, &err, &check] {
        assert!(!text.contains("partwarden-test-secret"), "{text}");
    }

    let s3 = s3_server();
    s3.create_bucket("pw-creds-ok");
    let db = TestDb::new("store_child_env").await;
    let seen = db.dir.path().join("env.txt");
    let config = history(
        &db,
        &[8, 2],
        "",
        &format!("archive_command = \"env > {} ; : %p\"\n", seen.display()),
    )
    .await;
    to_store(&config, "pw-creds-ok", "");
    let env = env(s3);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("SOME_TOOL_SECRET", "partwarden-test-secret-do-not-log"));
    let (code, out, err) = partwarden(&["--config", path_str(&config), "--run-once"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let env = std::fs::read_to_string(&seen).unwrap();
    assert!(env.contains("PATH="), "{env}");
    assert!(!env.contains("partwarden-test-secret"), "{env}");
    assert!(!env.contains("AWS_SECRET_ACCESS_KEY"), "{env}");
}

/// A pass killed between the two uploads (the data object in the store, its manifest not):
/// the next pass finds the data object identical, uploads the manifest, verifies both in the
/// store and drops.
#[tokio::test]
async fn a_pass_killed_between_the_two_uploads_is_finished_by_the_next() {
    let s3 = s3_server();
    let bucket = "pw-between";
    s3.create_bucket(bucket);
    let db = TestDb::new("store_between").await;
    let config = history(&db, &[8, 2], "", "").await;
    to_store(&config, bucket, "");
    let before = rows_hash(&db, &month_name(8)).await;
    let env = env(s3);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("PARTWARDEN_FAILPOINT", "between_uploads"));
    let (code, _, _) = partwarden(&["--config", path_str(&config), "--run-once"], &env);
    assert_ne!(code, 0);
    let stem = format!("odds/public.market_odds_history/public.{}", month_name(8));
    assert_eq!(keys_of(s3, bucket), [format!("{stem}.pgcopy.zst")]);
    assert_eq!(rows_hash(&db, &month_name(8)).await, before);

    let (code, out, err) = run(&config, s3, &["--run-once"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!db.exists(&month_name(8)).await);
    assert_eq!(
        keys_of(s3, bucket),
        [
            format!("{stem}.manifest.json"),
            format!("{stem}.pgcopy.zst")
        ]
    );
}
