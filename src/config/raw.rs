//! What `config.toml` literally says (unknown keys refused), and its validation into the
//! typed [`super::Config`], one line per error naming the key.

use super::*;
use crate::ident::MAX_IDENT_BYTES;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
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
    default_move_budget: i64,
    analyze_budget: String,
    parent_stats_max_age: String,
    planning_budget: String,
    watch_unmanaged: bool,
    ignore_tables: Vec<String>,
    archive_command: String,
    archive_command_timeout: String,
    archive_timeout: String,
    index_build_timeout: String,
    spool_dir: String,
    archive_format: String,
    s3_endpoint: String,
    s3_region: String,
}

impl Default for RawMaintenance {
    fn default() -> Self {
        RawMaintenance {
            schedule: "0 */10 * * * *".into(),
            archive_dir: "/var/lib/partwarden/archive".into(),
            max_expired_per_pass: 3,
            default_move_budget: 2_000_000,
            analyze_budget: "2m".into(),
            parent_stats_max_age: "7d".into(),
            planning_budget: "50ms".into(),
            watch_unmanaged: true,
            ignore_tables: Vec::new(),
            archive_command: String::new(),
            archive_command_timeout: "10m".into(),
            archive_timeout: "none".into(),
            index_build_timeout: "1h".into(),
            spool_dir: "/var/lib/partwarden/spool".into(),
            archive_format: "copy".into(),
            s3_endpoint: String::new(),
            s3_region: String::new(),
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

impl RawConfig {
    pub(super) fn validate(self, path: &Path) -> Result<Config, String> {
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
        let cron = croner::parser::CronParser::builder()
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
        let archive_store = if self.archive_dir.starts_with("s3://") {
            let endpoint = match self.s3_endpoint.trim() {
                "" => None,
                e if e.starts_with("http://") || e.starts_with("https://") => Some(e.to_string()),
                e => {
                    return Err(format!(
                        "key `maintenance.s3_endpoint`: expected an http:// or https:// URL, got {e:?}"
                    ));
                }
            };
            let region = match self.s3_region.trim() {
                "" => None,
                r => Some(r.to_string()),
            };
            Some(
                StoreConfig::parse(&self.archive_dir, endpoint, region)
                    .map_err(|e| format!("key `maintenance.archive_dir`: {e}"))?,
            )
        } else {
            None
        };
        // With an object store, files are written and checked in the spool directory first.
        let (local, key) = match archive_store {
            Some(_) => (&self.spool_dir, "maintenance.spool_dir"),
            None => (&self.archive_dir, "maintenance.archive_dir"),
        };
        let archive_dir = local_dir(key, local, base)?;
        if !(1..=1000).contains(&self.max_expired_per_pass) {
            return Err(format!(
                "key `maintenance.max_expired_per_pass`: expected a whole number from 1 to 1000, got {}",
                self.max_expired_per_pass
            ));
        }
        if !(1_000..=1_000_000_000).contains(&self.default_move_budget) {
            return Err(format!(
                "key `maintenance.default_move_budget`: expected a whole number of rows from 1000 to 1000000000, got {}",
                self.default_move_budget
            ));
        }
        let analyze_budget = match self.analyze_budget.trim() {
            "off" | "0" => Duration::ZERO,
            v => duration("maintenance.analyze_budget", v)?,
        };
        let parent_stats_max_age = duration(
            "maintenance.parent_stats_max_age",
            &self.parent_stats_max_age,
        )?;
        let planning_budget = duration("maintenance.planning_budget", &self.planning_budget)?;
        for t in &self.ignore_tables {
            if t.split('.').count() != 2 || t.split('.').any(str::is_empty) {
                return Err(format!(
                    "key `maintenance.ignore_tables`: expected schema-qualified names such as \"public.audit_log\", got {t:?}"
                ));
            }
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
        let archive_format = match self.archive_format.as_str() {
            "copy" => crate::archive::DataFormat::Copy,
            "parquet" => crate::archive::DataFormat::Parquet,
            other => {
                return Err(format!(
                    "key `maintenance.archive_format`: expected \"copy\" or \"parquet\", got {other:?}"
                ));
            }
        };
        // The longest gap between the next 50 ticks: what "a pass is overdue" is measured by.
        let mut schedule_period = Duration::ZERO;
        let mut t = chrono::Utc::now();
        let mut prev: Option<chrono::DateTime<chrono::Utc>> = None;
        for _ in 0..50 {
            let Ok(next) = cron.find_next_occurrence(&t, false) else {
                break;
            };
            if let Some(p) = prev {
                schedule_period = schedule_period.max((next - p).to_std().unwrap_or_default());
            }
            prev = Some(next);
            t = next;
        }
        Ok(MaintenanceConfig {
            schedule: self.schedule,
            schedule_period,
            archive_dir,
            archive_store,
            archive_format,
            max_expired_per_pass: self.max_expired_per_pass as usize,
            default_move_budget: self.default_move_budget as u64,
            analyze_budget,
            parent_stats_max_age,
            planning_budget,
            watch_unmanaged: self.watch_unmanaged,
            ignore_tables: self.ignore_tables,
            archive_command,
            archive_command_timeout,
            archive_timeout,
            index_build_timeout,
        })
    }
}

/// A local directory from the configuration: not empty, no `..`, relative to the configuration
/// file (never to whatever the working directory of a service happens to be).
fn local_dir(key: &str, value: &str, base: &Path) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err(format!(
            "key `{key}`: expected a directory path, got an empty string"
        ));
    }
    let dir = PathBuf::from(value);
    if dir
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!(
            "key `{key}`: {value:?} contains `..`; give a path without it"
        ));
    }
    Ok(if dir.is_absolute() {
        dir
    } else {
        base.join(dir)
    })
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

pub(super) fn duration(key: &str, s: &str) -> Result<Duration, String> {
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

pub(super) fn read_password_file(path: &Path) -> Result<String, String> {
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
