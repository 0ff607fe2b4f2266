//! Partition periods: calendar arithmetic, in UTC ([`Interval`]) or in a table's time zone
//! ([`Calendar`]), and nothing else.
//!
//! Every bound partwarden writes is computed here, from the clock and the configured interval,
//! and rendered as a UTC instant with an explicit `+00` offset so that no session or server
//! time zone can shift it. Months are calendar months, weeks start on Monday (ISO 8601), days
//! are days. In a table's `time_zone` a period starts at local midnight, so a daily period in
//! `Europe/London` is 23 or 25 hours long on the days the clocks change; a local midnight that
//! does not exist (a zone that springs forward at midnight) starts at the first instant after.

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

/// An interval in a time zone: the periods of one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Calendar {
    /// Span of one period.
    pub interval: Interval,
    /// Where periods start at local midnight.
    pub tz: chrono_tz::Tz,
}

impl Calendar {
    /// `interval` in UTC.
    pub fn utc(interval: Interval) -> Calendar {
        Calendar {
            interval,
            tz: chrono_tz::UTC,
        }
    }

    /// The first instant of local day `d`: its midnight, or, where midnight was skipped by a
    /// clock change, the first local time that exists after it.
    fn day_start(self, d: NaiveDate) -> DateTime<Utc> {
        use chrono::LocalResult;
        let midnight = d.and_hms_opt(0, 0, 0).expect("midnight");
        for minutes in (0..=24 * 60).step_by(15) {
            match self
                .tz
                .from_local_datetime(&(midnight + Duration::minutes(minutes)))
            {
                LocalResult::Single(t) => return t.with_timezone(&Utc),
                LocalResult::Ambiguous(a, _) => return a.with_timezone(&Utc),
                LocalResult::None => continue,
            }
        }
        unreachable!("no zone skips a whole day")
    }

    /// The local date at the start of the period starting at `start`.
    fn local_date(self, t: DateTime<Utc>) -> NaiveDate {
        t.with_timezone(&self.tz).date_naive()
    }

    /// The start of the period that contains `t`.
    pub fn floor(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let d = self.local_date(t);
        let first = match self.interval {
            Interval::Daily => d,
            Interval::Weekly => d - Duration::days(i64::from(d.weekday().num_days_from_monday())),
            Interval::Monthly => NaiveDate::from_ymd_opt(d.year(), d.month(), 1).expect("day 1"),
        };
        let start = self.day_start(first);
        // A day whose start was moved past `t` cannot hold it; never happens for real zones.
        if start > t { self.prev(start) } else { start }
    }

    /// The start of the period after the one starting at `start`.
    pub fn next(self, start: DateTime<Utc>) -> DateTime<Utc> {
        let d = self.local_date(start);
        self.day_start(match self.interval {
            Interval::Daily => d + Duration::days(1),
            Interval::Weekly => d + Duration::days(7),
            Interval::Monthly => d + Months::new(1),
        })
    }

    /// The start of the period before the one starting at `start`.
    pub fn prev(self, start: DateTime<Utc>) -> DateTime<Utc> {
        let d = self.local_date(start);
        self.day_start(match self.interval {
            Interval::Daily => d - Duration::days(1),
            Interval::Weekly => d - Duration::days(7),
            Interval::Monthly => d - Months::new(1),
        })
    }

    /// Whether `t` is the start of a period.
    pub fn is_aligned(self, t: DateTime<Utc>) -> bool {
        self.floor(t) == t
    }

    /// The period that contains `t`.
    pub fn containing(self, t: DateTime<Utc>) -> Period {
        let start = self.floor(t);
        Period {
            start,
            end: self.next(start),
        }
    }

    /// The suffix naming the period starting at `start`, from its local date.
    pub fn suffix(self, start: DateTime<Utc>) -> String {
        let local = start.with_timezone(&self.tz);
        match self.interval {
            Interval::Daily => local.format("_%Y_%m_%d").to_string(),
            Interval::Weekly => local.format("_%G_w%V").to_string(),
            Interval::Monthly => local.format("_%Y_%m").to_string(),
        }
    }

    /// The suffix naming a partition that covers only part of the period starting at
    /// `period_start`, from `from` on: the period's suffix, then `_from_` and the local day of
    /// the month and time of `from` (`_2026_03_from_31230000`).
    pub fn clipped_suffix(self, period_start: DateTime<Utc>, from: DateTime<Utc>) -> String {
        format!(
            "{}_from_{}",
            self.suffix(period_start),
            from.with_timezone(&self.tz).format("%d%H%M%S")
        )
    }

    /// The longest suffix a partition name gets: a clipped one with a fallback `_N`.
    pub fn max_suffix_len(interval: Interval) -> usize {
        interval.max_suffix_len() + "_from_31235959".len() + "_9".len()
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
