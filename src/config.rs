//! Configuration: a serde mirror of `config.toml`, then validation into typed values.
//!
//! Two phases, as in ripgrep's argument handling: `RawConfig` is what the file (and the
//! `PARTWARDEN__*` environment overrides) literally say, with unknown keys refused; [`Config`]
//! is what the rest of the program uses: durations, quoted-safe identifiers, a parsed schedule.
//! Every error names the file, the key and what was expected, in one line, so that a bad deploy
//! fails at start-up with a message an operator can act on, before anything is touched.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ident::{Ident, MAX_IDENT_BYTES, QualifiedName};
use crate::period::{Interval, Retention};

/// Environment variables with this prefix (then `__`) override keys: `PARTWARDEN__DATABASE__URL`.
pub const ENV_PREFIX: &str = "PARTWARDEN";

/// A configuration that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The file that was read (or would have been).
    pub file: String,
    /// What is wrong, naming the key when there is one.
    pub message: String,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where it was read from, for messages.
    pub file: PathBuf,
    /// `[database]`.
    pub database: DatabaseConfig,
    /// `[maintenance]`.
    pub maintenance: MaintenanceConfig,
    /// `[[tables]]`, in file order.
    pub tables: Vec<TableConfig>,
    /// `[daemon]`.
    pub daemon: DaemonConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `[daemon]`: how the long-running service behaves.
#[derive(Clone, Debug, PartialEq)]
pub struct DaemonConfig {
    /// On SIGTERM/SIGINT, how long the step in progress may take to finish before exit.
    pub shutdown_timeout: Duration,
    /// Log line format.
    pub log_format: LogFormat,
}

/// `[metrics]`: the optional Prometheus endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsConfig {
    /// Address to serve `/metrics` on; `None` (the default) serves nothing.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[database]`: how to reach PostgreSQL and how patient to be with it. Compared as a whole
/// (password included) on reload: any change means a new session.
#[derive(Clone, PartialEq)]
pub struct DatabaseConfig {
    /// URL or libpq `key=value` string. May hold a password: never print it, use
    /// [`DatabaseConfig::redacted_url`].
    pub url: String,
    /// The content of `password_file`, read at start; overrides a password in `url`.
    pub password: Option<String>,
    /// Gives up connecting after this long, so an unreachable server is an error, not a hang.
    pub connect_timeout: Duration,
    /// `lock_timeout` of every DDL statement: the longest partwarden may make the application's
    /// queries wait behind a lock it is queued for.
    pub lock_timeout: Duration,
    /// `statement_timeout` of every statement partwarden sends.
    pub statement_timeout: Duration,
    /// How long one DDL step keeps retrying after lock timeouts before the step is given up
    /// (the rest of the pass still runs, and the next pass tries again).
    pub lock_retry_for: Duration,
    /// Largest difference between this host's clock and the server's that partwarden accepts
    /// before it refuses DDL: plans follow the server's clock, and a host clock that far off
    /// means something is wrong with one of them.
    pub max_clock_skew: Duration,
}

impl DatabaseConfig {
    /// The connection string with any password replaced by `***`, for messages.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.redacted_url())
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("connect_timeout", &self.connect_timeout)
            .field("lock_timeout", &self.lock_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("lock_retry_for", &self.lock_retry_for)
            .field("max_clock_skew", &self.max_clock_skew)
            .finish()
    }
}

/// `[maintenance]`: the daemon's schedule and where expired partitions go.
#[derive(Clone, Debug)]
pub struct MaintenanceConfig {
    /// Cron expression with a seconds field, already checked with the scheduler's own parser.
    pub schedule: String,
    /// Directory receiving archives of expired partitions.
    pub archive_dir: PathBuf,
    /// Partitions expired per pass at most, so one pass never spends hours archiving.
    pub max_expired_per_pass: usize,
    /// Shell command run for each verified archive file and its manifest (`%p` path, `%f` file
    /// name, `%%` a percent sign); a table is dropped only after it exits 0 for both.
    pub archive_command: Option<String>,
    /// How long archive_command may run before its process group is killed and the run
    /// counted as failed.
    pub archive_command_timeout: Duration,
    /// statement_timeout of the archive's COPY and of the drop's re-read of the table (`None`,
    /// the default: no limit), instead of `database.statement_timeout`, which would make a
    /// partition too large to stream within it impossible to archive.
    pub archive_timeout: Option<Duration>,
    /// statement_timeout of `CREATE INDEX CONCURRENTLY` when a pass repairs a partition's index
    /// (a build takes longer than ordinary statements, and does not block writers).
    pub index_build_timeout: Duration,
}

/// What happens to a partition past its retention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExpiry {
    /// Detach, archive to `archive_dir`, verify the archive, then drop.
    Archive,
    /// Detach and keep the table, moved to schema `partwarden_archive`.
    Detach,
    /// Detach and drop without an archive (explicit opt-in).
    Drop,
}

impl TableConfig {
    /// The table's periods: its interval in its time zone.
    pub fn calendar(&self) -> crate::period::Calendar {
        crate::period::Calendar {
            interval: self.interval,
            tz: self.time_zone,
        }
    }
}

/// One `[[tables]]` entry: a partitioned table partwarden manages.
#[derive(Clone, Debug)]
pub struct TableConfig {
    /// The partitioned (parent) table.
    pub name: QualifiedName,
    /// Its range partition key column.
    pub partition_key: Ident,
    /// Span of one partition.
    pub interval: Interval,
    /// Where periods start at local midnight (`UTC` by default).
    pub time_zone: chrono_tz::Tz,
    /// Partitions kept ready after the current one.
    pub premake: u32,
    /// Partitions wholly older than this expire; `None` keeps them forever.
    pub retention: Option<Retention>,
    /// What expiry does.
    pub on_expiry: OnExpiry,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    maintenance: RawMaintenance,
    #[serde(default = "default_tables")]
    tables: Vec<RawTable>,
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    metrics: RawMetrics,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDaemon {
    shutdown_timeout: String,
    log_format: String,
}

impl Default for RawDaemon {
    fn default() -> Self {
        RawDaemon {
            shutdown_timeout: "30s".into(),
            log_format: "text".into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDatabase {
    url: String,
    password_file: String,
    connect_timeout: String,
    lock_timeout: String,
    statement_timeout: String,
    lock_retry_for: String,
    max_clock_skew: String,
}

impl Default for RawDatabase {
    fn default() -> Self {
        RawDatabase {
            url: "postgresql://partwarden@localhost:5432/odds".into(),
            password_file: String::new(),
            connect_timeout: "5s".into(),
            lock_timeout: "200ms".into(),
            statement_timeout: "60s".into(),
            lock_retry_for: "60s".into(),
            max_clock_skew: "5m".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMaintenance {
    schedule: String,
    archive_dir: String,
    max_expired_per_pass: i64,
    archive_command: String,
    archive_command_timeout: String,
    archive_timeout: String,
    index_build_timeout: String,
}

impl Default for RawMaintenance {
    fn default() -> Self {
        RawMaintenance {
            schedule: "0 */10 * * * *".into(),
            archive_dir: "/var/lib/partwarden/archive".into(),
            max_expired_per_pass: 3,
            archive_command: String::new(),
            archive_command_timeout: "10m".into(),
            archive_timeout: "none".into(),
            index_build_timeout: "1h".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    name: String,
    #[serde(default = "default_partition_key")]
    partition_key: String,
    #[serde(default = "default_interval")]
    interval: String,
    #[serde(default = "default_time_zone")]
    time_zone: String,
    #[serde(default = "default_premake")]
    premake: i64,
    #[serde(default)]
    retention: Option<String>,
    #[serde(default = "default_on_expiry")]
    on_expiry: String,
}

fn default_tables() -> Vec<RawTable> {
    vec![RawTable {
        name: "public.market_odds_history".into(),
        partition_key: default_partition_key(),
        interval: default_interval(),
        time_zone: default_time_zone(),
        premake: default_premake(),
        retention: Some("6 months".into()),
        on_expiry: default_on_expiry(),
    }]
}
fn default_partition_key() -> String {
    "captured_at".into()
}
fn default_interval() -> String {
    "monthly".into()
}
fn default_time_zone() -> String {
    "UTC".into()
}
fn default_premake() -> i64 {
    3
}
fn default_on_expiry() -> String {
    "archive".into()
}

impl Config {
    /// Reads `path`, applies `PARTWARDEN__*` environment overrides, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let err = |message: String| ConfigError {
            file: file.clone(),
            message,
        };
        if !path.is_file() {
            return Err(err(
                "cannot read the configuration file: it does not exist or is not a file".into(),
            ));
        }
        let raw: RawConfig = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| {
                let text = one_line(&redact_url(&scrub_secret_values(&e.to_string(), path)));
                // The config crate appends the file name; ours is already at the front.
                let text = text
                    .strip_suffix(&format!(" in {file}"))
                    .unwrap_or(&text)
                    .to_string();
                err(text)
            })?;
        raw.validate(path).map_err(err)
    }
}

impl RawConfig {
    fn validate(self, path: &Path) -> Result<Config, String> {
        let base = path.parent().unwrap_or(Path::new("."));
        let database = self.database.validate()?;
        let maintenance = self.maintenance.validate(base)?;
        let mut tables: Vec<TableConfig> = Vec::new();
        for (i, t) in self.tables.into_iter().enumerate() {
            let t = t.validate(i)?;
            if tables.iter().any(|o| o.name == t.name) {
                return Err(format!(
                    "key `tables[{i}].name`: {} is listed twice",
                    t.name
                ));
            }
            tables.push(t);
        }
        let daemon = DaemonConfig {
            shutdown_timeout: duration("daemon.shutdown_timeout", &self.daemon.shutdown_timeout)?,
            log_format: match self.daemon.log_format.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(format!(
                        "key `daemon.log_format`: expected text or json, got {other:?}"
                    ));
                }
            },
        };
        let metrics = MetricsConfig {
            listen: match self.metrics.listen.trim() {
                "" => None,
                a => Some(a.parse().map_err(|_| {
                    format!("key `metrics.listen`: expected an address such as \"127.0.0.1:9187\", got {a:?}")
                })?),
            },
        };
        Ok(Config {
            file: path.to_path_buf(),
            database,
            maintenance,
            tables,
            daemon,
            metrics,
        })
    }
}

impl RawDatabase {
    fn validate(self) -> Result<DatabaseConfig, String> {
        if self.url.trim().is_empty() {
            return Err("key `database.url`: expected a PostgreSQL URL or key=value string, got an empty string".into());
        }
        let (rest, tls) =
            crate::tls::split(&self.url).map_err(|e| format!("key `database.url`: {e}"))?;
        tls.client_config()
            .map_err(|e| format!("key `database.url`: {e}"))?;
        if let Err(e) = rest.parse::<tokio_postgres::Config>() {
            // The string itself is never quoted: it may hold a password.
            return Err(format!(
                "key `database.url`: not a valid PostgreSQL connection string ({})",
                one_line(&redact_url(&e.to_string()))
            ));
        }
        let password = if self.password_file.is_empty() {
            None
        } else {
            Some(read_password_file(Path::new(&self.password_file))?)
        };
        let connect_timeout = duration("database.connect_timeout", &self.connect_timeout)?;
        let lock_timeout = duration("database.lock_timeout", &self.lock_timeout)?;
        let statement_timeout = duration("database.statement_timeout", &self.statement_timeout)?;
        let lock_retry_for = duration("database.lock_retry_for", &self.lock_retry_for)?;
        let max_clock_skew = duration("database.max_clock_skew", &self.max_clock_skew)?;
        if lock_timeout >= statement_timeout {
            return Err(format!(
                "key `database.lock_timeout`: expected less than statement_timeout ({}), got {}",
                self.statement_timeout, self.lock_timeout
            ));
        }
        Ok(DatabaseConfig {
            url: self.url,
            password,
            connect_timeout,
            lock_timeout,
            statement_timeout,
            lock_retry_for,
            max_clock_skew,
        })
    }
}

impl RawMaintenance {
    fn validate(self, base: &Path) -> Result<MaintenanceConfig, String> {
        croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .dom_and_dow(true)
            .build()
            .parse(&self.schedule)
            .map_err(|e| {
                format!(
                    "key `maintenance.schedule`: expected a cron expression with a seconds field such as \"0 */10 * * * *\", got {:?} ({e})",
                    self.schedule
                )
            })?;
        if self.archive_dir.is_empty() {
            return Err(
                "key `maintenance.archive_dir`: expected a directory path, got an empty string"
                    .into(),
            );
        }
        let dir = PathBuf::from(&self.archive_dir);
        if dir
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!(
                "key `maintenance.archive_dir`: {:?} contains `..`; give a path without it",
                self.archive_dir
            ));
        }
        // A relative directory means relative to the configuration file, never to whatever the
        // working directory of a service happens to be.
        let archive_dir = if dir.is_absolute() {
            dir
        } else {
            base.join(dir)
        };
        if !(1..=1000).contains(&self.max_expired_per_pass) {
            return Err(format!(
                "key `maintenance.max_expired_per_pass`: expected a whole number from 1 to 1000, got {}",
                self.max_expired_per_pass
            ));
        }
        let archive_command = match self.archive_command.trim() {
            "" => None,
            c if !c.contains("%p") && !c.contains("%f") => {
                return Err(format!(
                    "key `maintenance.archive_command`: expected a command using %p (the archive's path) or %f (its file name), got {c:?}"
                ));
            }
            c => Some(c.to_string()),
        };
        let archive_command_timeout = duration(
            "maintenance.archive_command_timeout",
            &self.archive_command_timeout,
        )?;
        let archive_timeout = match self.archive_timeout.trim() {
            "" | "none" => None,
            t => Some(duration("maintenance.archive_timeout", t)?),
        };
        let index_build_timeout =
            duration("maintenance.index_build_timeout", &self.index_build_timeout)?;
        Ok(MaintenanceConfig {
            schedule: self.schedule,
            archive_dir,
            max_expired_per_pass: self.max_expired_per_pass as usize,
            archive_command,
            archive_command_timeout,
            archive_timeout,
            index_build_timeout,
        })
    }
}

impl RawTable {
    fn validate(self, i: usize) -> Result<TableConfig, String> {
        let key = |k: &str| format!("key `tables[{i}].{k}`");
        let name = QualifiedName::parse(&self.name).map_err(|e| format!("{}: {e}", key("name")))?;
        let partition_key = Ident::new(&self.partition_key)
            .map_err(|e| format!("{}: {e}", key("partition_key")))?;
        let interval = match self.interval.as_str() {
            "monthly" => Interval::Monthly,
            "weekly" => Interval::Weekly,
            "daily" => Interval::Daily,
            other => {
                return Err(format!(
                    "{}: expected monthly, weekly or daily, got {other:?}",
                    key("interval")
                ));
            }
        };
        let time_zone: chrono_tz::Tz = self.time_zone.trim().parse().map_err(|_| {
            format!(
                "{}: expected an IANA time zone name such as \"UTC\" or \"Africa/Lagos\", got {:?}",
                key("time_zone"),
                self.time_zone
            )
        })?;
        let longest = name.name.as_str().len() + crate::period::Calendar::max_suffix_len(interval);
        if longest > MAX_IDENT_BYTES {
            return Err(format!(
                "{}: partition names of {} would be {longest} bytes long; PostgreSQL allows {MAX_IDENT_BYTES}",
                key("name"),
                name
            ));
        }
        if !(1..=120).contains(&self.premake) {
            return Err(format!(
                "{}: expected a whole number from 1 to 120, got {}",
                key("premake"),
                self.premake
            ));
        }
        let retention = match self.retention {
            None => None,
            Some(r) => {
                Some(Retention::parse(&r).map_err(|e| format!("{}: {e}", key("retention")))?)
            }
        };
        let on_expiry = match self.on_expiry.as_str() {
            "archive" => OnExpiry::Archive,
            "detach" => OnExpiry::Detach,
            "drop" => OnExpiry::Drop,
            other => {
                return Err(format!(
                    "{}: expected archive, detach or drop, got {other:?}",
                    key("on_expiry")
                ));
            }
        };
        Ok(TableConfig {
            name,
            partition_key,
            interval,
            time_zone,
            premake: self.premake as u32,
            retention,
            on_expiry,
        })
    }
}

fn duration(key: &str, s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        format!(
            "key `{key}`: expected a duration such as \"200ms\", \"5s\" or \"2m\", got {s:?} ({e})"
        )
    })?;
    if d.is_zero() {
        return Err(format!(
            "key `{key}`: expected a duration above zero, got {s:?}"
        ));
    }
    if d < Duration::from_millis(1) {
        return Err(format!("key `{key}`: expected at least 1ms, got {s:?}"));
    }
    Ok(d)
}

fn read_password_file(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        format!(
            "key `database.password_file`: cannot read {}: {e}",
            path.display()
        )
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "key `database.password_file`: {} is readable by group or others (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "key `database.password_file`: cannot read {}: {e}",
            path.display()
        )
    })?;
    let password = text.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        return Err(format!(
            "key `database.password_file`: {} is empty",
            path.display()
        ));
    }
    Ok(password)
}

/// Replaces passwords in anything that may quote a connection string with `***`: the
/// credentials of a URL (`postgresql://user:secret@host`) and the value of a `password`
/// parameter (key=value form, quoted or not, spaces around `=` allowed; URL query form).
///
/// It reads them the way tokio-postgres (and libpq) parse them, and where the two could
/// disagree it hides more, never less: URL credentials run from the first `:` to the last
/// `@` (an unescaped `@`, `/` or `?` in the password cannot end them early); an unquoted
/// key=value value runs to unescaped white space, a URL query value to the next `&`.
pub fn redact_url(s: &str) -> String {
    redact_password_params(&redact_url_credentials(s))
}

fn redact_url_credentials(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        // The credentials as tokio-postgres reads them (`connstr`): up to the first `@`.
        let Some(creds) =
            crate::connstr::url_credentials(&rest[i..]).map(|r| (r.start + i)..(r.end + i))
        else {
            out.push_str(&rest[..i + 3]);
            rest = &rest[i + 3..];
            continue;
        };
        let Some(colon) = rest[creds.clone()].find(':') else {
            out.push_str(&rest[..i + 3]);
            rest = &rest[i + 3..];
            continue;
        };
        // Hide more, never less: up to the last `@`, in case a raw `@` is in the password.
        let last_at = rest.rfind('@').expect("an @ was found");
        out.push_str(&rest[..creds.start + colon + 1]);
        out.push_str("***");
        rest = &rest[last_at..];
    }
    out.push_str(rest);
    out
}

fn redact_password_params(s: &str) -> String {
    const KEY: &str = "password";
    let mut out = String::with_capacity(s.len());
    let mut from = 0;
    let mut search = 0;
    while let Some(found) = s[search..].find(KEY) {
        let at = search + found;
        search = at + KEY.len();
        let before = s[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let in_url_query = matches!(before, Some('?' | '&')) && s[..at].contains("://");
        // Optional white space, `=`, optional white space.
        let mut rest = s[search..].char_indices().peekable();
        let mut eq = None;
        while let Some(&(i, c)) = rest.peek() {
            if c == '=' && eq.is_none() {
                eq = Some(i);
                rest.next();
            } else if c.is_whitespace() && !in_url_query {
                rest.next();
            } else {
                break;
            }
        }
        if eq.is_none() {
            continue;
        }
        let value_start = search + rest.peek().map_or(s.len() - search, |&(i, _)| i);
        let value = &s[value_start..];
        let len = if in_url_query {
            value.find('&').unwrap_or(value.len())
        } else {
            crate::connstr::value_len(value)
        };
        out.push_str(&s[from..value_start]);
        out.push_str("***");
        from = value_start + len;
        search = from.max(search);
    }
    out.push_str(&s[from..]);
    out
}

/// Error texts of the TOML parser quote the offending line of the file, escaped as it is
/// there, and the environment source may quote a value: replaces, in `message`, the value of
/// every `...url` or `...password...` key of the file and of `PARTWARDEN__*` variables with
/// `***`, whatever the redactor could make of it.
fn scrub_secret_values(message: &str, path: &Path) -> String {
    let secret_key = |k: &str| {
        let k = k.trim().to_ascii_lowercase();
        k.ends_with("url") || k.contains("password")
    };
    let mut values: Vec<String> = Vec::new();
    if let Ok(text) = std::fs::read_to_string(path) {
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=')
                && secret_key(k)
            {
                values.push(v.trim().to_string());
                values.push(v.trim().trim_matches(['"', '\'']).to_string());
            }
        }
    }
    for (k, v) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with(ENV_PREFIX) && secret_key(&k) {
            values.push(v.to_string_lossy().into_owned());
        }
    }
    values.retain(|v| v.len() >= 2);
    // Longest first, so that a value inside another is not left half replaced.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut out = message.to_string();
    for v in values {
        out = out.replace(&v, "***");
    }
    out
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgresql://app:s3cr%40t@db:5432/odds"),
            "postgresql://app:***@db:5432/odds"
        );
        assert_eq!(
            redact_url("postgresql://app@db/odds?password=hunter2&sslmode=require"),
            "postgresql://app@db/odds?password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("host=db password='a b\\'c' user=app"),
            "host=db password=*** user=app"
        );
        assert_eq!(redact_url("host=db password=x"), "host=db password=***");
        assert_eq!(
            redact_url("postgresql://app@db/odds"),
            "postgresql://app@db/odds"
        );
    }

    /// Escapes `s` for a TOML basic string.
    fn toml_escape(s: &str) -> String {
        s.replace('\\', "\\\\").replace('"', "\\\"")
    }

    /// Every way a password can sit in a connection string, for `pw`.
    fn connection_strings(pw: &str, ws_before: &str, ws_after: &str, port: &str) -> Vec<String> {
        let url_enc = pw.replace('%', "%25").replace('@', "%40");
        let query_enc = url_enc.replace('&', "%26");
        let quoted = pw.replace('\\', "\\\\").replace('\'', "\\'");
        let plain: String = pw
            .chars()
            .flat_map(|c| {
                let escape = c.is_whitespace() || c == '\\' || c == '\'';
                escape.then_some('\\').into_iter().chain(std::iter::once(c))
            })
            .collect();
        vec![
            format!("postgresql://app:{url_enc}@127.0.0.1:{port}/odds"),
            format!("postgresql://app:{pw}@127.0.0.1:{port}/odds"),
            format!("postgresql://app@127.0.0.1:{port}/odds?password={query_enc}&sslmode=disable"),
            format!(
                "host=127.0.0.1 port={port} password{ws_before}={ws_after}'{quoted}' dbname=odds"
            ),
            format!("host=127.0.0.1 port={port} password{ws_before}={ws_after}{plain} dbname=odds"),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Issue "Nothing lost, nobody in", item 7: random passwords of every printable ASCII
        /// character, in URL and key=value form, through every error path a configuration
        /// can reach before a connection is made, and the connection error itself.
        #[test]
        fn no_password_reaches_an_error(
            pw in "Zq[ -~]{6,24}",
            ws_before in " {0,2}",
            ws_after in " {0,2}",
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("config.toml");
            let url_enc = pw.replace('%', "%25").replace('@', "%40");
            let forms = [pw.clone(), url_enc.clone(), toml_escape(&pw), toml_escape(&url_enc)];
            let shows = |text: &str| forms.iter().find(|f| text.contains(f.as_str())).cloned();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            for (i, url) in connection_strings(&pw, &ws_before, &ws_after, "notaport").iter().enumerate() {
                proptest::prop_assert_eq!(shows(&redact_url(url)), None, "redact_url, form {}: {}", i, url);
                // Invalid port: the validation error.
                std::fs::write(&path, format!("[database]\nurl = \"{}\"\n", toml_escape(url))).unwrap();
                let e = match Config::load(&path) {
                    Err(e) => e.to_string(),
                    // A raw `@` in a URL password moves the rest into the host part.
                    Ok(c) => format!("{:?}", c.database),
                };
                proptest::prop_assert_eq!(shows(&e), None, "validation, form {}: {}", i, e);
                // A TOML syntax error on the url's own line (unterminated string) and on another.
                std::fs::write(&path, format!("[database]\nurl = \"{}\n", toml_escape(url))).unwrap();
                let e = Config::load(&path).unwrap_err().to_string();
                proptest::prop_assert_eq!(shows(&e), None, "TOML error, form {}: {}", i, e);
                std::fs::write(&path, format!("[database]\nurl = \"{}\"\nurl = 1\n", toml_escape(url))).unwrap();
                let e = Config::load(&path).unwrap_err().to_string();
                proptest::prop_assert_eq!(shows(&e), None, "duplicate key, form {}: {}", i, e);
            }
            for (i, url) in connection_strings(&pw, &ws_before, &ws_after, "1").iter().enumerate() {
                std::fs::write(&path, format!("[database]\nurl = \"{}\"\nconnect_timeout = \"1s\"\n", toml_escape(url))).unwrap();
                let Ok(config) = Config::load(&path) else {
                    // A raw `@` or `/` in a URL password can make it invalid: covered above.
                    continue;
                };
                let debug = format!("{:?}", config.database);
                proptest::prop_assert_eq!(shows(&debug), None, "Debug, form {}: {}", i, debug);
                let e = runtime
                    .block_on(crate::db::connect(&config.database))
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                proptest::prop_assert_eq!(shows(&e), None, "connect, form {}: {}", i, e);
            }
        }
    }

    #[test]
    fn redacts_the_forms_that_leaked() {
        assert_eq!(
            redact_url("postgresql://app:pa?ss/w@db:5432/odds"),
            "postgresql://app:***@db:5432/odds"
        );
        assert_eq!(
            redact_url("host=db password = hunter2 user=app"),
            "host=db password = *** user=app"
        );
        assert_eq!(
            redact_url("host=db password=a\\ b user=app"),
            "host=db password=*** user=app"
        );
        assert_eq!(
            redact_url("postgresql://db/odds?password=a b&x=1"),
            "postgresql://db/odds?password=***&x=1"
        );
        assert_eq!(
            redact_url("no secrets: passwords=1"),
            "no secrets: passwords=1"
        );
    }

    /// Issue "Nothing lost, nobody in", item 6: a rotated password_file was not noticed on
    /// reload, because the change was looked for in the redacted `Debug` text.
    #[test]
    fn a_rotated_password_is_a_change_of_settings() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        let cfg = dir.path().join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "[database]\nurl = \"host=db user=app\"\npassword_file = \"{}\"\n",
                pw.display()
            ),
        )
        .unwrap();
        let write_pw = |p: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&pw, p).unwrap();
            std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        write_pw("first");
        let before = Config::load(&cfg).unwrap().database;
        write_pw("second");
        let after = Config::load(&cfg).unwrap().database;
        assert_eq!(
            format!("{before:?}"),
            format!("{after:?}"),
            "Debug hides it"
        );
        assert_ne!(before, after);
    }

    #[test]
    fn durations() {
        assert_eq!(duration("k", "200ms").unwrap(), Duration::from_millis(200));
        assert!(duration("k", "0s").is_err());
        assert!(duration("k", "soon").unwrap_err().contains("key `k`"));
    }
}
