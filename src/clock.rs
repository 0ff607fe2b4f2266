//! Whose clock decides: the database server's.
//!
//! Partition bounds are instants the server compares with the rows it receives, so "now" for
//! planning is the server's `statement_timestamp()`, read at the start of every pass, bootstrap
//! and check. The host's clock is only compared with it: a host clock far off (a bad NTP step,
//! a VM restored from a snapshot) means one of the two is wrong, and partwarden then refuses
//! DDL instead of guessing (`database.max_clock_skew`, 5 minutes by default; `--check` is
//! critical). Whatever clock a plan was made with (`--dry-run --now` may name any instant), the
//! expiry planner never touches the partition holding the server's now, or a later one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

/// The two clocks, read together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clocks {
    /// The server's `statement_timestamp()`.
    pub server: DateTime<Utc>,
    /// This host's clock at the middle of the round trip that read it.
    pub host: DateTime<Utc>,
}

impl Clocks {
    /// Reads the server's clock and this host's around it.
    pub async fn read(client: &impl GenericClient) -> Result<Clocks, tokio_postgres::Error> {
        let before = Utc::now();
        let server: DateTime<Utc> = client
            .query_one("SELECT statement_timestamp()", &[])
            .await?
            .get(0);
        let after = Utc::now();
        Ok(Clocks {
            server,
            host: before + (after - before) / 2,
        })
    }

    /// How far the host's clock is from the server's, either way.
    pub fn skew(&self) -> Duration {
        (self.host - self.server)
            .abs()
            .to_std()
            .unwrap_or(Duration::MAX)
    }

    /// `Err` with a one-line reason when the skew is over `max`.
    pub fn check(&self, max: Duration) -> Result<(), String> {
        let skew = self.skew();
        if skew <= max {
            return Ok(());
        }
        let way = if self.host > self.server {
            "ahead of"
        } else {
            "behind"
        };
        Err(format!(
            "this host's clock ({}) is {} {way} the database server's ({}), more than database.max_clock_skew ({}); refusing DDL until the clocks agree (check NTP on both)",
            self.host.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            approx(skew),
            self.server
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            humantime::format_duration(max),
        ))
    }
}

/// `240 days`, `7 hours`, `4 minutes`, `12 s`: the largest unit that gives at least two.
fn approx(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3_600 => format!("{} hours", s / 3_600),
        s if s >= 2 * 60 => format!("{} minutes", s / 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_either_way() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let c = Clocks {
            server: t("2026-11-30T00:00:00Z"),
            host: t("2027-07-28T00:00:00Z"),
        };
        let e = c.check(Duration::from_secs(300)).unwrap_err();
        assert!(e.contains("is 240 days ahead of"), "{e}");
        let c = Clocks {
            server: t("2026-11-30T00:10:00Z"),
            host: t("2026-11-30T00:06:00Z"),
        };
        assert!(c.check(Duration::from_secs(300)).is_ok());
        assert!(
            c.check(Duration::from_secs(60))
                .unwrap_err()
                .contains("is 4 minutes behind")
        );
    }
}
