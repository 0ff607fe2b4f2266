//! Partition periods: calendar arithmetic in UTC, and nothing else.
//!
//! Every bound partwarden writes is computed here, from the clock and the configured interval,
//! and rendered with an explicit `+00` offset so that no session or server time zone can shift
//! it. Months are calendar months, weeks start on Monday (ISO 8601), days are UTC days.

use std::fmt;

use chrono::{DateTime, Datelike, Duration, Months, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// How long one partition of a table spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    /// One partition per UTC day, named `<table>_YYYY_MM_DD`.
    Daily,
    /// One partition per ISO week (Monday to Monday), named `<table>_YYYY_wWW`.
    Weekly,
    /// One partition per calendar month, named `<table>_YYYY_MM`.
    Monthly,
}

impl Interval {
    /// The start of the period that contains `t`.
    pub fn floor(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let d = t.date_naive();
        let start = match self {
            Interval::Daily => d,
            Interval::Weekly => d - Duration::days(i64::from(d.weekday().num_days_from_monday())),
            Interval::Monthly => NaiveDate::from_ymd_opt(d.year(), d.month(), 1).expect("day 1"),
        };
        midnight(start)
    }

    /// The start of the period after the one starting at `start`.
    pub fn next(self, start: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Interval::Daily => start + Duration::days(1),
            Interval::Weekly => start + Duration::days(7),
            Interval::Monthly => start + Months::new(1),
        }
    }

    /// The start of the period before the one starting at `start`.
    pub fn prev(self, start: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Interval::Daily => start - Duration::days(1),
            Interval::Weekly => start - Duration::days(7),
            Interval::Monthly => start - Months::new(1),
        }
    }

    /// Whether `t` is the start of a period (a bound this interval would write).
    pub fn is_aligned(self, t: DateTime<Utc>) -> bool {
        self.floor(t) == t
    }

    /// The suffix that names the partition starting at `start`: `_2026_12`, `_2026_w49`,
    /// `_2026_12_01`.
    pub fn suffix(self, start: DateTime<Utc>) -> String {
        match self {
            Interval::Daily => start.format("_%Y_%m_%d").to_string(),
            Interval::Weekly => start.format("_%G_w%V").to_string(),
            Interval::Monthly => start.format("_%Y_%m").to_string(),
        }
    }

    /// The longest suffix [`Interval::suffix`] produces, to check name lengths up front.
    pub fn max_suffix_len(self) -> usize {
        match self {
            Interval::Daily => "_2026_12_01".len(),
            Interval::Weekly => "_2026_w49".len(),
            Interval::Monthly => "_2026_12".len(),
        }
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Interval::Daily => "daily",
            Interval::Weekly => "weekly",
            Interval::Monthly => "monthly",
        })
    }
}

/// A half-open range `[start, end)` of one period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Period {
    /// Inclusive lower bound.
    pub start: DateTime<Utc>,
    /// Exclusive upper bound.
    pub end: DateTime<Utc>,
}

impl Period {
    /// The period of `interval` that contains `t`.
    pub fn containing(interval: Interval, t: DateTime<Utc>) -> Period {
        let start = interval.floor(t);
        Period {
            start,
            end: interval.next(start),
        }
    }
}

/// A retention: how long partitions are kept, in calendar units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// N UTC days.
    Days(u32),
    /// N weeks of 7 days.
    Weeks(u32),
    /// N calendar months.
    Months(u32),
    /// N calendar years.
    Years(u32),
}

impl Retention {
    /// Parses `"6 months"`, `"90 days"`, `"2 weeks"`, `"1 year"` (also without the space).
    pub fn parse(s: &str) -> Result<Retention, String> {
        let s = s.trim();
        let digits = s.chars().take_while(|c| c.is_ascii_digit()).count();
        let (num, unit) = s.split_at(digits);
        let n: u32 = num.parse().map_err(|_| {
            format!("{s:?} must be a number followed by days, weeks, months or years")
        })?;
        if n == 0 {
            return Err(format!("{s:?} must be at least 1"));
        }
        match unit.trim() {
            "day" | "days" | "d" => Ok(Retention::Days(n)),
            "week" | "weeks" | "w" => Ok(Retention::Weeks(n)),
            "month" | "months" => Ok(Retention::Months(n)),
            "year" | "years" | "y" => Ok(Retention::Years(n)),
            other => Err(format!(
                "{s:?} has unit {other:?}; expected days, weeks, months or years"
            )),
        }
    }

    /// `now` minus this retention: partitions whose upper bound is at or before it expire.
    pub fn cutoff(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Retention::Days(n) => now - Duration::days(i64::from(n)),
            Retention::Weeks(n) => now - Duration::days(7 * i64::from(n)),
            Retention::Months(n) => now - Months::new(n),
            Retention::Years(n) => now - Months::new(12 * n),
        }
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Retention::Days(n) => write!(f, "{n} days"),
            Retention::Weeks(n) => write!(f, "{n} weeks"),
            Retention::Months(n) => write!(f, "{n} months"),
            Retention::Years(n) => write!(f, "{n} years"),
        }
    }
}

/// A timestamp as a SQL literal with an explicit UTC offset: `'2026-12-01 00:00:00+00'`.
pub fn sql_timestamp(t: DateTime<Utc>) -> String {
    if t.timestamp_subsec_micros() == 0 {
        t.format("'%Y-%m-%d %H:%M:%S+00'").to_string()
    } else {
        t.format("'%Y-%m-%d %H:%M:%S%.6f+00'").to_string()
    }
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn monthly_periods() {
        let p = Period::containing(Interval::Monthly, t("2026-11-25T20:11:00Z"));
        assert_eq!(p.start, t("2026-11-01T00:00:00Z"));
        assert_eq!(p.end, t("2026-12-01T00:00:00Z"));
        assert_eq!(Interval::Monthly.next(p.end), t("2027-01-01T00:00:00Z"));
        assert_eq!(Interval::Monthly.suffix(p.start), "_2026_11");
        assert_eq!(
            Interval::Monthly.prev(t("2026-01-01T00:00:00Z")),
            t("2025-12-01T00:00:00Z")
        );
    }

    #[test]
    fn weekly_periods_start_on_monday_and_use_iso_weeks() {
        // 2027-01-01 is a Friday; its ISO week is 2026-W53, starting Monday 2026-12-28.
        let p = Period::containing(Interval::Weekly, t("2027-01-01T12:00:00Z"));
        assert_eq!(p.start, t("2026-12-28T00:00:00Z"));
        assert_eq!(p.end, t("2027-01-04T00:00:00Z"));
        assert_eq!(Interval::Weekly.suffix(p.start), "_2026_w53");
        assert_eq!(Interval::Weekly.suffix(p.end), "_2027_w01");
    }

    #[test]
    fn daily_periods() {
        let p = Period::containing(Interval::Daily, t("2028-02-28T23:59:59.999999Z"));
        assert_eq!(p.end, t("2028-02-29T00:00:00Z"));
        assert_eq!(Interval::Daily.suffix(p.end), "_2028_02_29");
        assert!(Interval::Daily.is_aligned(p.end));
        assert!(!Interval::Daily.is_aligned(t("2028-02-28T00:00:01Z")));
    }

    #[test]
    fn suffix_lengths_are_bounded() {
        for i in [Interval::Daily, Interval::Weekly, Interval::Monthly] {
            assert_eq!(
                i.suffix(t("2026-12-31T00:00:00Z")).len(),
                i.max_suffix_len()
            );
        }
    }

    #[test]
    fn retention() {
        assert_eq!(Retention::parse("6 months").unwrap(), Retention::Months(6));
        assert_eq!(Retention::parse("90days").unwrap(), Retention::Days(90));
        assert!(Retention::parse("six months").is_err());
        assert!(Retention::parse("6 fortnights").is_err());
        assert!(Retention::parse("0 days").is_err());
        assert_eq!(
            Retention::Months(6).cutoff(t("2026-08-31T00:00:00Z")),
            t("2026-02-28T00:00:00Z")
        );
    }

    #[test]
    fn literals_carry_utc_offset() {
        assert_eq!(
            sql_timestamp(t("2026-12-01T00:00:00Z")),
            "'2026-12-01 00:00:00+00'"
        );
        assert_eq!(
            sql_timestamp(t("2026-12-01T00:00:00.5Z")),
            "'2026-12-01 00:00:00.500000+00'"
        );
    }
}
