//! The throwaway PostgreSQL of partwarden's tests and benchmarks: one server per process
//! (test binary or benchmark), one database per test. Used by the unit tests in `src/` that
//! need a server, the integration tests in `tests/it` and the benchmarks in `examples/`; it
//! knows nothing of partwarden (so that partwarden's own unit tests can use it), only
//! PostgreSQL.
//!
//! The server is started from the machine's PostgreSQL binaries (`initdb`, `pg_ctl` on PATH),
//! as the `postgres` OS user when the tests run as root (PostgreSQL refuses root), on a free
//! port of 127.0.0.1, in a temporary directory. A small shell guardian owns it: it stops the
//! server and removes the directory as soon as this process's end of its stdin pipe closes,
//! which happens however the test process ends, even when it is killed. When
//! `PARTWARDEN_TEST_DATABASE_URL` is set, that server is used instead.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use tokio_postgres::{Client, NoTls};

/// A running server and how to reach it as a superuser.
pub struct Server {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    /// Where the server's files live (None for an external server).
    pub dir: Option<PathBuf>,
    /// Our end of the guardian's stdin: when it closes, the server stops.
    _guardian: Option<Mutex<ChildStdin>>,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The shared server, started on first use.
pub fn server() -> &'static Server {
    SERVER.get_or_init(start)
}

pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn start() -> Server {
    if let Ok(url) = std::env::var("PARTWARDEN_TEST_DATABASE_URL") {
        let cfg: tokio_postgres::Config = url.parse().expect("PARTWARDEN_TEST_DATABASE_URL parses");
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        return Server {
            host,
            port: cfg.get_ports().first().copied().unwrap_or(5432),
            user: cfg.get_user().unwrap_or("postgres").to_string(),
            password: cfg
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            dir: None,
            _guardian: None,
        };
    }
    start_local()
}

/// Server settings for tests: durability off (the data is thrown away), connections for
/// parallel tests.
const PG_OPTIONS: &str = "-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300";

/// A server of its own, for a test that stops and starts it (the shared one must stay up).
/// Panics when `PARTWARDEN_TEST_DATABASE_URL` is set: such a test needs a server it controls.
pub fn private_server() -> Server {
    assert!(
        std::env::var("PARTWARDEN_TEST_DATABASE_URL").is_err(),
        "this test stops and starts PostgreSQL, so it needs the harness's own server: unset PARTWARDEN_TEST_DATABASE_URL"
    );
    start_local()
}

/// A server with PostgreSQL's default durability (fsync, synchronous_commit, full page writes
/// on), for benchmarks whose figures must be those of a real deployment.
pub fn durable_server() -> Server {
    durable_server_with("")
}

/// [`durable_server`] with `extra` settings (`-c name=value ...`).
pub fn durable_server_with(extra: &str) -> Server {
    start_with(&format!(
        "-c listen_addresses=127.0.0.1 -c max_connections=300 {extra}"
    ))
}

/// A server of its own with the tests' settings and `extra` ones (`-c name=value ...`), for a
/// benchmark that needs a setting the shared server does not have.
pub fn server_with(extra: &str) -> Server {
    start_with(&format!("{PG_OPTIONS} {extra}"))
}

fn start_local() -> Server {
    start_with(PG_OPTIONS)
}

/// A streaming-replication standby of `primary` (a server of this harness): a base backup
/// with `-R`, started in recovery on a port of its own.
pub fn standby_of(primary: &Server) -> Server {
    start_from(PG_OPTIONS, Some(primary.port))
}

/// A server with TLS on, using the PEM certificate and key in `dir` (`server.crt`,
/// `server.key`), which are handed to the postgres OS user.
pub fn tls_server(dir: &std::path::Path) -> Server {
    if running_as_root() {
        let _ = Command::new("chown")
            .arg("-R")
            .arg("postgres:")
            .arg(dir)
            .status();
    }
    start_with(&format!(
        "{PG_OPTIONS} -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
        dir.join("server.crt").display(),
        dir.join("server.key").display()
    ))
}

fn start_with(options: &str) -> Server {
    start_from(options, None)
}

fn start_from(options: &str, standby_of: Option<u16>) -> Server {
    let dir = tempfile::Builder::new()
        .prefix("partwarden-test-pg-")
        .tempdir()
        .expect("temporary directory")
        .keep();
    let as_root = running_as_root();
    if as_root {
        let out = Command::new("id")
            .args(["-u", "postgres"])
            .output()
            .expect("id -u postgres");
        let uid: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a postgres OS user exists");
        let gid = Command::new("id")
            .args(["-g", "postgres"])
            .output()
            .expect("id -g postgres");
        let gid: u32 = String::from_utf8_lossy(&gid.stdout)
            .trim()
            .parse()
            .expect("gid");
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown test dir to postgres");
    }
    let data = dir.join("data");
    if let Some(primary_port) = standby_of {
        let status = as_postgres(as_root, "pg_basebackup")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port.to_string(),
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-D",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .status()
            .expect("pg_basebackup runs");
        assert!(status.success(), "pg_basebackup failed");
    }
    let status = if standby_of.is_some() {
        std::process::ExitStatus::default()
    } else {
        as_postgres(as_root, "initdb")
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .status()
            .expect("initdb runs (are the PostgreSQL server binaries on PATH?)")
    };
    assert!(status.success(), "initdb failed");
    let port = free_port();
    let script = r#"
set -u
run() { if [ "$AS_ROOT" = 1 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if run pg_ctl -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
     -o "-p $PORT -k $DIR $OPTS" \
     start >/dev/null 2>&1; then
  echo ready
else
  echo failed; cat "$DIR/server.log"; exit 1
fi
exec >/dev/null 2>&1
read _ignored || true
run pg_ctl -D "$DIR/data" -m fast -w -t 20 stop || run pg_ctl -D "$DIR/data" -m immediate stop
rm -rf "$DIR"
"#;
    let stdin = guardian(
        "sh",
        script,
        [
            ("AS_ROOT", if as_root { "1".into() } else { "0".into() }),
            ("DIR", dir.display().to_string()),
            ("PORT", port.to_string()),
            ("OPTS", options.to_string()),
        ],
        "PostgreSQL",
    );
    Server {
        host: "127.0.0.1".into(),
        port,
        user: "postgres".into(),
        password: None,
        dir: Some(dir),
        _guardian: Some(Mutex::new(stdin)),
    }
}

fn as_postgres(as_root: bool, program: &str) -> Command {
    if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Server {
    /// Stops this (private) server, fast mode: sessions are disconnected.
    pub fn stop(&self) {
        let dir = self.dir.as_ref().expect("a local server");
        let ok = as_postgres(running_as_root(), "pg_ctl")
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl runs")
            .success();
        assert!(ok, "pg_ctl stop failed");
    }

    /// Starts this (private) server again on the same port.
    pub fn start_again(&self) {
        let dir = self.dir.as_ref().expect("a local server");
        let ok = as_postgres(running_as_root(), "pg_ctl")
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-l")
            .arg(dir.join("server.log"))
            .args([
                "-w",
                "-o",
                &format!("-p {} -k {} {PG_OPTIONS}", self.port, dir.display()),
                "start",
            ])
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl runs")
            .success();
        assert!(ok, "pg_ctl start failed");
    }

    /// A key=value connection string for `dbname`.
    pub fn url(&self, dbname: &str) -> String {
        let mut s = format!(
            "host={} port={} user={} dbname={}",
            self.host, self.port, self.user, dbname
        );
        if let Some(p) = &self.password {
            s.push_str(&format!(
                " password='{}'",
                p.replace('\\', "\\\\").replace('\'', "\\'")
            ));
        }
        s
    }
}

/// Connects with a plain client (not partwarden's set-up), for test fixtures and assertions.
pub async fn connect(url: &str) -> Client {
    let (client, conn) = url
        .parse::<tokio_postgres::Config>()
        .unwrap()
        .connect(NoTls)
        .await
        .expect("connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
        .batch_execute("SET TimeZone = 'UTC'")
        .await
        .expect("set time zone");
    client
}

/// A database of its own for one test, plus a directory for its files.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl TestDb {
    /// Creates a fresh, empty database named after the test.
    pub async fn new(test: &str) -> TestDb {
        TestDb::on(server(), test).await
    }

    /// A fresh database on `server` (e.g. a private one).
    pub async fn on(server: &Server, test: &str) -> TestDb {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("pw_{}_{}_{}", test, std::process::id(), n);
        let admin = connect(&server.url("postgres")).await;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap();
        TestDb {
            url: server.url(&name),
            name,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// Whether the relation `rel` (a name as `to_regclass` takes it) exists.
    pub async fn exists(&self, rel: &str) -> bool {
        self.client()
            .await
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&rel])
            .await
            .unwrap()
            .get(0)
    }

    /// Writes `config.toml` for this database, with `extra` appended (more sections, or
    /// `[[tables]]` entries), and returns its path.
    pub fn write_config(&self, database_extra: &str, rest: &str) -> PathBuf {
        let path = self.dir.path().join("config.toml");
        let text = format!(
            "[database]\nurl = \"{}\"\nlock_timeout = \"200ms\"\nlock_retry_for = \"3s\"\n{database_extra}\n\
             [maintenance]\narchive_dir = \"archive\"\n\n{rest}",
            self.url.replace('\\', "\\\\").replace('"', "\\\"")
        );
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        path
    }
}

/// Everything about the user-visible schema of a database, as one comparable text: relations,
/// columns, constraints, indexes and partition bounds (all schemas but the system ones).
pub async fn catalog_dump(client: &Client) -> String {
    let rows = client
        .query(
            "SELECT format('%s.%s %s %s', n.nspname, c.relname, c.relkind, \
                   coalesce(pg_get_expr(c.relpartbound, c.oid), '')) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
             UNION ALL \
             SELECT format('col %s.%s %s %s %s', a.attrelid::regclass, a.attname, \
                   format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid)) \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
               AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p') \
             UNION ALL \
             SELECT format('con %s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid)) \
             FROM pg_constraint WHERE connamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace) \
             UNION ALL \
             SELECT format('idx %s', pg_get_indexdef(indexrelid)) FROM pg_index x \
             JOIN pg_class c ON c.oid = x.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Starts `script` under `shell` as a guardian: it starts a server, prints `ready` (or
/// `failed` and the server's log), then waits for its stdin to close and stops the server.
/// Returns our end of its stdin; the server lives as long as it (and no longer than this
/// process). Panics with `what` when the server did not start.
pub(crate) fn guardian<K, V>(
    shell: &str,
    script: &str,
    envs: impl IntoIterator<Item = (K, V)>,
    what: &str,
) -> ChildStdin
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    // Never waited for on purpose: the guardian outlives this process to stop the server.
    #[allow(clippy::zombie_processes)]
    let mut child = Command::new(shell)
        .arg("-c")
        .arg(script)
        .envs(envs)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start the guardian shell of {what}: {e}"));
    let mut first = String::new();
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    out.read_line(&mut first).expect("guardian answers");
    if first.trim() != "ready" {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut rest);
        panic!("{what} did not start: {first}{rest}");
    }
    child.stdin.take().expect("stdin")
}

/// One plain HTTP/1.1 request to 127.0.0.1:`port`: the status and the body (dechunked).
pub(crate) fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the server");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head_text = String::from_utf8_lossy(&resp[..end]).to_ascii_lowercase();
    let status: u16 = head_text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    let mut body = resp[end + 4..].to_vec();
    if head_text.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body)
}

/// Decodes an HTTP/1.1 chunked body.
pub(crate) fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + size]);
        b = &b[nl + 2 + size + 2..];
    }
}

mod prometheus;
mod s3;

pub use prometheus::{Prometheus, url_encode};
pub use s3::{S3Server, s3_server};
