//! What a pass did, per table, and its one-line-per-table text (`--run-once`'s output and the
//! daemon's log).

use super::*;
use crate::premake::Runway;

/// What a pass did to one table.
#[derive(Debug, Default, Serialize)]
pub struct TableReport {
    /// `schema.table`.
    pub table: String,
    /// Partitions created (or, in a dry run, planned).
    pub created: Vec<String>,
    /// Partitions whose expiry completed (dropped or moved).
    pub expired: Vec<String>,
    /// Bytes of archives written.
    pub archived_bytes: u64,
    /// Index repairs done (or, in a dry run, planned).
    pub indexes_repaired: Vec<String>,
    /// Coverage after the pass (not in a dry run).
    pub runway: Option<Runway>,
    /// The table's DEFAULT partition after the pass, if it has one (not in a dry run): the
    /// daemon's gauge of rows in it asks that table without reading the catalog again.
    #[serde(skip)]
    pub default_partition: Option<RelName>,
    /// Steps that failed, one line each.
    pub errors: Vec<String>,
    /// Things seen and left alone.
    pub notes: Vec<String>,
}

/// What a pass did.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// One per configured table.
    pub tables: Vec<TableReport>,
}

impl Report {
    /// Whether every step succeeded.
    pub fn ok(&self) -> bool {
        self.tables.iter().all(|t| t.errors.is_empty())
    }

    /// One line per table, then its errors and notes.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for t in &self.tables {
            s.push_str(&t.summary_line(self.dry_run));
            s.push('\n');
            for e in &t.errors {
                s.push_str(&format!("  error: {e}\n"));
            }
            for n in &t.notes {
                s.push_str(&format!("  note: {n}\n"));
            }
        }
        s
    }
}

impl TableReport {
    /// An empty report for `table`.
    pub fn new(table: &TableConfig) -> TableReport {
        TableReport {
            table: table.name.to_string(),
            ..TableReport::default()
        }
    }

    /// `public.t: created 1, expired 1 (archived 1.2 MiB); runway ...`.
    pub fn summary_line(&self, dry_run: bool) -> String {
        let would = if dry_run { "would be " } else { "" };
        let list = |v: &Vec<String>| {
            if v.is_empty() {
                String::new()
            } else {
                format!(" ({})", v.join(", "))
            }
        };
        let mut s = format!(
            "{}: {}created {}{}, {}expired {}{}",
            self.table,
            would,
            self.created.len(),
            list(&self.created),
            would,
            self.expired.len(),
            list(&self.expired)
        );
        if self.archived_bytes > 0 {
            s.push_str(&format!(", archived {}", human_bytes(self.archived_bytes)));
        }
        if !self.indexes_repaired.is_empty() {
            s.push_str(&format!(
                ", {}index repairs {}",
                would,
                self.indexes_repaired.len()
            ));
        }
        if let Some(r) = &self.runway {
            s.push_str(&runway_text(r));
        }
        if !self.errors.is_empty() {
            s.push_str(&format!("; {} FAILED", self.errors.len()));
        }
        s
    }
}

/// `; runway N periods after the current one, writes fail from T`.
pub fn runway_text(r: &Runway) -> String {
    match r.writes_fail_from {
        None => "; runway unbounded (MAXVALUE or DEFAULT partition)".to_string(),
        Some(at) => format!(
            "; runway {} periods after the current one, writes fail from {}",
            r.periods_ahead,
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    }
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(27_900_000), "26.6 MiB");
    }
}
