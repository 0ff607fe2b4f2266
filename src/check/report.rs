//! What `--check` reports: a status per check, the worst overall (the monitoring-plugin exit
//! code), and the text and JSON renderings.

use super::*;

/// A check's outcome, ordered by severity for the overall status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Needs attention soon.
    Warning,
    /// Could not be determined.
    Unknown,
    /// Needs attention now.
    Critical,
}

impl Status {
    /// The monitoring-plugin exit code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Warning => 1,
            Status::Critical => 2,
            Status::Unknown => 3,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warning => "WARN",
            Status::Critical => "CRIT",
            Status::Unknown => "UNKN",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warning => "WARNING",
            Status::Critical => "CRITICAL",
            Status::Unknown => "UNKNOWN",
        }
    }
}

/// One check.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Stable id: connection, schema, runway, coverage, routing, default_partition, indexes,
    /// expiry, maintenance, configuration.
    pub id: &'static str,
    /// The table it is about, if any.
    pub table: Option<String>,
    /// Its status.
    pub status: Status,
    /// What is wrong and what to do, in one line.
    pub message: String,
    /// Details for machines.
    pub details: serde_json::Value,
}

pub(super) fn check(
    id: &'static str,
    table: Option<&str>,
    status: Status,
    message: impl Into<String>,
    details: serde_json::Value,
) -> Check {
    Check {
        id,
        table: table.map(str::to_string),
        status,
        message: message.into(),
        details,
    }
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The worst status of any check.
    pub status: Status,
    /// When it was made.
    pub generated_at: String,
    /// partwarden's version.
    pub version: &'static str,
    /// Every check, in order.
    pub checks: Vec<Check>,
}

impl Report {
    pub(super) fn new(checks: Vec<Check>) -> Report {
        let status = checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Unknown);
        Report {
            status,
            generated_at: Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
            version: env!("CARGO_PKG_VERSION"),
            checks,
        }
    }

    /// A report that could not get far: one UNKNOWN check.
    pub fn unknown(id: &'static str, message: String) -> Report {
        Report::new(vec![check(id, None, Status::Unknown, message, json!({}))])
    }

    /// One aligned line per check and a summary line; colour only when `colour`.
    pub fn to_text(&self, colour: bool) -> String {
        let id_w = self.checks.iter().map(|c| c.id.len()).max().unwrap_or(0);
        let table_w = self
            .checks
            .iter()
            .map(|c| c.table.as_deref().map_or(1, str::len))
            .max()
            .unwrap_or(1);
        let paint = |s: Status, text: &str| {
            if !colour {
                return text.to_string();
            }
            let code = match s {
                Status::Ok => "32",
                Status::Warning => "33",
                Status::Critical => "31",
                Status::Unknown => "35",
            };
            format!("\x1b[{code}m{text}\x1b[0m")
        };
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!(
                "{} {:<id_w$}  {:<table_w$}  {}\n",
                paint(c.status, &format!("{:<4}", c.status.label())),
                c.id,
                c.table.as_deref().unwrap_or("-"),
                c.message
            ));
        }
        let count = |s: Status| self.checks.iter().filter(|c| c.status == s).count();
        out.push_str(&format!(
            "{}: {} critical, {} warning, {} unknown, {} ok (partwarden {}, {})\n",
            paint(self.status, self.status.word()),
            count(Status::Critical),
            count(Status::Warning),
            count(Status::Unknown),
            count(Status::Ok),
            self.version,
            self.generated_at
        ));
        out
    }
}

/// Whether text output should be coloured (stdout is a terminal).
pub fn colour() -> bool {
    std::io::stdout().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overall_status_is_the_worst() {
        let r = Report::new(vec![
            check("a", None, Status::Ok, "", json!({})),
            check("b", None, Status::Warning, "", json!({})),
        ]);
        assert_eq!(r.status, Status::Warning);
        assert_eq!(r.status.exit_code(), 1);
        let r = Report::new(vec![
            check("a", None, Status::Unknown, "", json!({})),
            check("b", None, Status::Critical, "", json!({})),
        ]);
        assert_eq!(r.status.exit_code(), 2);
        assert_eq!(
            Report::unknown("connection", "x".into()).status.exit_code(),
            3
        );
    }

    #[test]
    fn text_is_aligned_and_uncoloured_off_a_terminal() {
        let r = Report::new(vec![
            check("connection", None, Status::Ok, "up", json!({})),
            check(
                "runway",
                Some("public.t"),
                Status::Critical,
                "down",
                json!({}),
            ),
        ]);
        let text = r.to_text(false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "OK   connection  -         up");
        assert_eq!(lines[1], "CRIT runway      public.t  down");
        assert!(lines[2].starts_with("CRITICAL: 1 critical, 0 warning, 0 unknown, 1 ok"));
        assert!(!text.contains('\x1b'));
    }
}
