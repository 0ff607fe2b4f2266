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

use crate::ident::{Ident, QualifiedName};
use crate::period::{Interval, Retention};

mod raw;
mod redact;
#[cfg(test)]
mod tests;

use raw::RawConfig;
pub use redact::redact_url;
use redact::{one_line, scrub_secret_values};

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
    /// The longest time between two ticks of `schedule`.
    pub schedule_period: Duration,
    /// Directory receiving archives of expired partitions; with an object store, the spool
    /// directory where they are written and checked before they are uploaded.
    pub archive_dir: PathBuf,
    /// The object store receiving archives, when `archive_dir` is an `s3://` URL.
    pub archive_store: Option<StoreConfig>,
    /// The format of archive files: zstd text COPY (default) or Parquet.
    pub archive_format: crate::archive::DataFormat,
    /// Partitions expired per pass at most, so one pass never spends hours archiving.
    pub max_expired_per_pass: usize,
    /// Rows of a DEFAULT partition copied into period partitions per pass at most (an
    /// estimate from the partition's rows per block), so that draining a large DEFAULT
    /// partition is spread over passes instead of making one pass last hours.
    pub default_move_budget: u64,
    /// statement_timeout of the `ANALYZE` a pass runs on a parent whose partitions changed
    /// (zero: no ANALYZE).
    pub analyze_budget: Duration,
    /// `--check` warns when a partitioned parent's statistics are older than this (or missing).
    pub parent_stats_max_age: Duration,
    /// `--check` warns when planning a query of the current period takes longer than this.
    pub planning_budget: Duration,
    /// `--check` and the metrics watch the partitioned tables no `[[tables]]` block manages.
    pub watch_unmanaged: bool,
    /// Partitioned tables (`schema.name`) left out of that watch.
    pub ignore_tables: Vec<String>,
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

/// An S3-compatible object store from `archive_dir = "s3://bucket/prefix"`. Credentials come
/// only from the standard AWS environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, instance credentials), never from this file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// The bucket.
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// `maintenance.s3_endpoint`, else `AWS_ENDPOINT_URL`, else AWS.
    pub endpoint: Option<String>,
    /// `maintenance.s3_region`, else `AWS_REGION` / `AWS_DEFAULT_REGION`.
    pub region: Option<String>,
}

impl StoreConfig {
    /// Parses `s3://bucket[/prefix]`: a bucket of 3 to 63 lower-case letters, digits, `.` and
    /// `-`; a prefix of key-safe characters without empty, `.` or `..` segments.
    pub fn parse(
        url: &str,
        endpoint: Option<String>,
        region: Option<String>,
    ) -> Result<StoreConfig, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("expected s3://bucket/prefix, got {url:?}"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_end_matches('/');
        if !(3..=63).contains(&bucket.len())
            || !bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        {
            return Err(format!(
                "{bucket:?} is not an S3 bucket name (3 to 63 lower-case letters, digits, `.` and `-`)"
            ));
        }
        if !prefix.is_empty()
            && (prefix
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
                || !prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.')))
        {
            return Err(format!(
                "prefix {prefix:?}: expected segments of letters, digits, `-`, `_` and `.`, separated by single `/`"
            ));
        }
        Ok(StoreConfig {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            endpoint,
            region,
        })
    }

    /// `s3://bucket/prefix`, for messages.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
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

impl Config {
    /// Reads `path`, applies `PARTWARDEN__*` environment overrides, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_file(path).map_err(blame_environment)
    }

    fn load_file(path: &Path) -> Result<Config, ConfigError> {
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

/// An error about a key whose value came from a `PARTWARDEN__*` environment variable names that
/// variable, not the file: the file may be right, and the operator must know where to look.
fn blame_environment(e: ConfigError) -> ConfigError {
    let key = e
        .message
        .split('`')
        .nth(1)
        .filter(|k| k.contains('.') && !k.contains(' '));
    let Some(key) = key else {
        return e;
    };
    let var = format!("{ENV_PREFIX}__{}", key.replace('.', "__").to_uppercase());
    if std::env::var_os(&var).is_none() {
        return e;
    }
    ConfigError {
        file: format!("environment variable {var} (overriding {})", e.file),
        message: e.message,
    }
}
