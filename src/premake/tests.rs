//! The planner's unit and property tests.

use super::*;
use crate::catalog::{Column, Partition};
use crate::config::OnExpiry;
use crate::ident::{Ident, QualifiedName};
use crate::period::Interval;

pub(crate) fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

pub(crate) fn table(interval: Interval, premake: u32) -> TableConfig {
    TableConfig {
        name: QualifiedName::parse("public.moh").unwrap(),
        partition_key: Ident::new("captured_at").unwrap(),
        interval,
        time_zone: chrono_tz::UTC,
        premake,
        retention: None,
        on_expiry: OnExpiry::Archive,
    }
}

pub(crate) fn snap(parts: &[(&str, &str, &str)]) -> TableSnapshot {
    TableSnapshot {
        exists: true,
        relkind: Some('p'),
        partition_key: Some("RANGE (captured_at)".into()),
        columns: vec![
            Column {
                name: "id".into(),
                data_type: "bigint".into(),
                not_null: true,
                generated: false,
                statistics: None,
            },
            Column {
                name: "captured_at".into(),
                data_type: "timestamp with time zone".into(),
                not_null: true,
                generated: false,
                statistics: None,
            },
        ],
        partitions: parts
            .iter()
            .map(|(name, lo, hi)| Partition {
                name: RelName {
                    schema: "public".into(),
                    name: name.to_string(),
                },
                lower: Some(t(lo)),
                upper: Some(t(hi)),
                is_default: false,
                detach_pending: false,
                bound_text: format!("FOR VALUES FROM ('{lo}') TO ('{hi}')"),
            })
            .collect(),
        names_taken: parts.iter().map(|p| p.0.to_string()).collect(),
        ..TableSnapshot::default()
    }
}

/// The DEFAULT partition `moh_default`.
pub(crate) fn default_partition() -> Partition {
    Partition {
        name: RelName {
            schema: "public".into(),
            name: "moh_default".into(),
        },
        lower: None,
        upper: None,
        is_default: true,
        detach_pending: false,
        bound_text: "DEFAULT".into(),
    }
}

fn labels(creates: &[Create]) -> Vec<String> {
    creates.iter().map(|c| c.action.label.clone()).collect()
}

#[test]
fn empty_table_gets_current_and_premake() {
    let a = plan(
        &table(Interval::Monthly, 3),
        &snap(&[]),
        t("2026-11-25T20:00:00Z"),
    )
    .unwrap();
    assert_eq!(
        labels(&a),
        [
            "create partition public.moh_2026_11",
            "create partition public.moh_2026_12",
            "create partition public.moh_2027_01",
            "create partition public.moh_2027_02"
        ]
    );
    assert_eq!(
        a[1].action.statements()[2],
        "ALTER TABLE \"public\".\"moh\" ATTACH PARTITION \"public\".\"moh_2026_12\" FOR VALUES FROM ('2026-12-01 00:00:00+00') TO ('2027-01-01 00:00:00+00')"
    );
    assert_eq!(a[1].action.statements().len(), 4);
}

/// Issue "Partitions planned from the catalog's truth": a period overlapped by a partition
/// with odd bounds used to be skipped whole, leaving holes beside it. Now the uncovered
/// parts get clipped partitions.
#[test]
fn fills_gaps_and_clips_beside_existing_partitions() {
    let s = snap(&[
        (
            "moh_2026_08",
            "2026-08-01T00:00:00Z",
            "2026-09-01T00:00:00Z",
        ),
        // A hand-made partition with odd bounds covering part of October and November.
        ("moh_odd", "2026-10-15T00:00:00Z", "2026-11-15T00:00:00Z"),
    ]);
    let a = plan(&table(Interval::Monthly, 1), &s, t("2026-11-25T20:00:00Z")).unwrap();
    assert_eq!(
        labels(&a),
        [
            "create partition public.moh_2026_09",
            "create partition public.moh_2026_10_from_01000000",
            "create partition public.moh_2026_11_from_15000000",
            "create partition public.moh_2026_12"
        ]
    );
    assert!(a[0].action.reason.contains("gap"));
    assert_eq!(a[1].period.end, t("2026-10-15T00:00:00Z"));
    assert_eq!(a[2].period.start, t("2026-11-15T00:00:00Z"));
    assert_eq!(a[2].period.end, t("2026-12-01T00:00:00Z"));
    assert!(a[1].action.reason.contains("clipped"));
}

#[test]
fn does_not_fill_holes_older_than_the_retention() {
    let s = snap(&[(
        "moh_2026_01",
        "2026-01-01T00:00:00Z",
        "2026-02-01T00:00:00Z",
    )]);
    let mut t6 = table(Interval::Monthly, 1);
    t6.retention = Some(crate::period::Retention::Months(6));
    let a = plan(&t6, &s, t("2026-11-25T20:00:00Z")).unwrap();
    // Cut-off 2026-05-25: May (ends June 1) is the first period still within retention.
    assert_eq!(a[0].action.label, "create partition public.moh_2026_05");
    assert_eq!(a.len(), 8);
}

#[test]
fn idempotent_once_created() {
    let s = snap(&[
        (
            "moh_2026_11_25",
            "2026-11-25T00:00:00Z",
            "2026-11-26T00:00:00Z",
        ),
        (
            "moh_2026_11_26",
            "2026-11-26T00:00:00Z",
            "2026-11-27T00:00:00Z",
        ),
    ]);
    let a = plan(&table(Interval::Daily, 1), &s, t("2026-11-25T20:00:00Z")).unwrap();
    assert!(a.is_empty(), "{a:?}");
    let r = runway(&table(Interval::Daily, 1), &s, t("2026-11-25T20:00:00Z"));
    assert_eq!(r.writes_fail_from, Some(t("2026-11-27T00:00:00Z")));
    assert_eq!(r.periods_ahead, 1);
}

#[test]
fn weekly_names_use_iso_weeks() {
    let a = plan(
        &table(Interval::Weekly, 1),
        &snap(&[]),
        t("2027-01-01T00:00:00Z"),
    )
    .unwrap();
    assert_eq!(
        labels(&a),
        [
            "create partition public.moh_2026_w53",
            "create partition public.moh_2027_w01"
        ]
    );
}

#[test]
fn a_taken_name_gets_the_fallback() {
    let mut s = snap(&[]);
    s.names_taken.insert("moh_2026_12".into());
    s.names_taken.insert("moh_2026_12_2".into());
    let a = plan(&table(Interval::Monthly, 1), &s, t("2026-11-25T20:00:00Z")).unwrap();
    assert_eq!(
        labels(&a),
        [
            "create partition public.moh_2026_11",
            "create partition public.moh_2026_12_3"
        ]
    );
    assert!(a[1].action.reason.contains("moh_2026_12 is taken"));
    let tb = table(Interval::Monthly, 1);
    assert!(name_fits(
        &tb,
        t("2026-12-01T00:00:00Z"),
        t("2027-01-01T00:00:00Z"),
        "moh_2026_12_3"
    ));
    assert!(!name_fits(
        &tb,
        t("2026-12-01T00:00:00Z"),
        t("2027-01-01T00:00:00Z"),
        "moh_2026_12_x"
    ));
}

#[test]
fn a_default_partition_gets_plain_partitions_and_plan_from_reaches_its_rows() {
    let mut s = snap(&[(
        "moh_2026_11",
        "2026-11-01T00:00:00Z",
        "2026-12-01T00:00:00Z",
    )]);
    s.partitions.push(default_partition());
    let now = t("2026-11-25T20:00:00Z");
    let a = plan(&table(Interval::Monthly, 1), &s, now).unwrap();
    assert_eq!(a.len(), 1);
    // No row is moved and nothing is added to the DEFAULT partition (src/drain.rs drains it).
    for st in a[0].action.statements() {
        assert!(!st.contains("DELETE") && !st.contains("NOT VALID"), "{st}");
    }
    assert_eq!(
        runway(&table(Interval::Monthly, 1), &s, now).writes_fail_from,
        None
    );
    // Rows from 2025: the window starts at their period, past the retention (6 months) too.
    let from = plan_from(
        &table(Interval::Monthly, 1),
        &s,
        now,
        Some(t("2025-03-10T00:00:00Z")),
    )
    .unwrap();
    assert_eq!(
        from.first().unwrap().period.start,
        t("2025-03-01T00:00:00Z")
    );
    assert_eq!(from.len(), 8 + 12 + 1, "2025-03 .. 2026-10 and 2026-12");
}

#[test]
fn refuses_a_table_partitioned_otherwise() {
    let mut s = snap(&[]);
    s.partition_key = Some("LIST (bookmaker_slug)".into());
    assert!(
        plan(&table(Interval::Monthly, 1), &s, t("2026-11-25T20:00:00Z"))
            .unwrap_err()
            .contains("LIST")
    );
    s.exists = false;
    assert!(
        plan(&table(Interval::Monthly, 1), &s, t("2026-11-25T20:00:00Z"))
            .unwrap_err()
            .contains("does not exist")
    );
}

/// Applies `plan` to `snap`: the partitions it creates, as the catalog would show them.
pub(crate) fn apply(snap: &TableSnapshot, creates: &[Create]) -> TableSnapshot {
    let mut after = snap.clone();
    for c in creates {
        after.partitions.push(Partition {
            name: c.partition.clone(),
            lower: Some(c.period.start),
            upper: Some(c.period.end),
            is_default: false,
            detach_pending: false,
            bound_text: String::new(),
        });
        after.names_taken.insert(c.partition.name.clone());
    }
    after
}

/// Generated states for the property tests: a table, existing partitions and a clock.
pub(crate) mod arb {
    use super::*;
    use crate::period::{Calendar, Retention};
    use proptest::prelude::*;

    pub const ZONES: [&str; 7] = [
        "UTC",
        "Africa/Lagos",
        "Europe/London",
        "America/Sao_Paulo",
        "Asia/Kolkata",
        "America/New_York",
        "Australia/Lord_Howe",
    ];

    fn interval() -> impl Strategy<Value = Interval> {
        prop_oneof![
            Just(Interval::Daily),
            Just(Interval::Weekly),
            Just(Interval::Monthly)
        ]
    }

    /// (table, snapshot, now).
    pub fn state() -> impl Strategy<Value = (TableConfig, TableSnapshot, DateTime<Utc>)> {
        (
            interval(),
            0..ZONES.len(),
            1u32..6,
            prop_oneof![
                Just(None),
                (1u32..8).prop_map(|n| Some(Retention::Months(n))),
                (3u32..60).prop_map(|n| Some(Retention::Days(n)))
            ],
            // now: 2024-01-01 .. 2028-01-01, to the second
            1_704_067_200i64..1_830_297_600,
            // boundary points: (zone of its calendar, periods from now, extra hours, microseconds)
            proptest::collection::vec(
                (
                    0..ZONES.len(),
                    -14i32..10,
                    prop_oneof![Just(0i64), -30i64..30],
                    prop_oneof![Just(0i64), 0i64..1_000_000],
                ),
                0..10,
            ),
            // for each consecutive pair of points: a partition (true) or a hole
            proptest::collection::vec(proptest::bool::weighted(0.75), 10),
            any::<bool>(),
        )
            .prop_map(
                |(interval, zone, premake, retention, now, points, filled, default)| {
                    let tz: chrono_tz::Tz = ZONES[zone].parse().unwrap();
                    let now = DateTime::from_timestamp(now, 0).unwrap();
                    let mut tb = table(interval, premake);
                    tb.time_zone = tz;
                    tb.retention = retention;
                    let mut bounds: Vec<DateTime<Utc>> = points
                        .into_iter()
                        .map(|(z, periods, hours, micros)| {
                            let cal = Calendar {
                                interval,
                                tz: ZONES[z].parse().unwrap(),
                            };
                            let mut t = cal.floor(now);
                            for _ in 0..periods.unsigned_abs() {
                                t = if periods < 0 {
                                    cal.prev(t)
                                } else {
                                    cal.next(t)
                                };
                            }
                            t + chrono::Duration::hours(hours)
                                + chrono::Duration::microseconds(micros)
                        })
                        .collect();
                    bounds.sort();
                    bounds.dedup();
                    let mut s = snap(&[]);
                    for (i, w) in bounds.windows(2).enumerate() {
                        if filled[i % filled.len()] {
                            let name = format!("other_{i}");
                            s.partitions.push(Partition {
                                name: RelName {
                                    schema: "public".into(),
                                    name: name.clone(),
                                },
                                lower: Some(w[0]),
                                upper: Some(w[1]),
                                is_default: false,
                                detach_pending: false,
                                bound_text: String::new(),
                            });
                            s.names_taken.insert(name);
                        }
                    }
                    if default {
                        s.partitions.push(default_partition());
                        s.names_taken.insert("moh_default".into());
                    }
                    (tb, s, now)
                },
            )
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    /// Issue "Partitions planned from the catalog's truth", item 4: whatever the existing
    /// bounds (aligned or not, in UTC or another zone, with holes, with a DEFAULT partition
    /// or none), the plan never overlaps a partition, its bounds strictly increase, after
    /// applying it every instant of the window routes to exactly one partition (but holes
    /// older than the retention, left on purpose), and planning again plans nothing.
    #[test]
    fn plans_cover_the_window_exactly_and_once((tb, s, now) in arb::state()) {
        let creates = plan(&tb, &s, now).unwrap();
        let cal = tb.calendar();
        let current = cal.containing(now);
        let horizon = horizon(&tb, now);
        let mut last: Option<DateTime<Utc>> = None;
        let mut names = std::collections::BTreeSet::new();
        for c in &creates {
            proptest::prop_assert!(c.period.start < c.period.end, "{:?}", c.period);
            if let Some(l) = last {
                proptest::prop_assert!(l <= c.period.start, "increasing: {:?}", creates.iter().map(|c| c.period).collect::<Vec<_>>());
            }
            last = Some(c.period.end);
            for p in s.partitions.iter().filter(|p| !p.is_default) {
                proptest::prop_assert!(!p.overlaps(c.period.start, c.period.end), "{:?} overlaps {:?}", c.period, p);
            }
            proptest::prop_assert!(c.partition.name.len() <= 63);
            proptest::prop_assert!(!s.names_taken.contains(&c.partition.name));
            proptest::prop_assert!(names.insert(c.partition.name.clone()), "duplicate name {}", c.partition.name);
            proptest::prop_assert!(name_fits(&tb, c.period.start, c.period.end, &c.partition.name), "{} for {:?}", c.partition.name, c.period);
            // Each piece lies within one period of the table's calendar.
            proptest::prop_assert!(cal.containing(c.period.start).end >= c.period.end);
        }
        let after = apply(&s, &creates);
        // Left uncovered only: holes older than the retention.
        let left_on_purpose = |g: &Period| crate::expiry::is_expired(&tb, Some(g.end), now);
        for g in gaps(&after, current.start, horizon) {
            proptest::prop_assert!(
                left_on_purpose(&g),
                "uncovered {:?} (now {}, horizon {})", g, now, horizon
            );
        }
        // Every instant from now to the horizon routes to exactly one partition.
        let mut t = now;
        while t < horizon {
            let n = after.partitions.iter().filter(|p| !p.is_default && p.contains(t)).count();
            proptest::prop_assert_eq!(n, 1, "{} routes to {} partitions", t, n);
            t += chrono::Duration::hours(7);
        }
        let again = plan(&tb, &after, now).unwrap();
        proptest::prop_assert!(again.is_empty(), "second plan: {:?}", again.iter().map(|c| &c.action.label).collect::<Vec<_>>());
    }
}

/// Issue "Partitions planned from the catalog's truth": the application's Alembic migration
/// ran in `Africa/Lagos` (+01): its partitions run from 23:00 UTC on the last day of a month.
/// In a UTC table, the hour between them and a UTC-made partition gets a partition, and the
/// month before the first of them is filled up to its bound; with `time_zone = Africa/Lagos`
/// the same partitions are simply aligned.
#[test]
fn lagos_made_partitions_get_no_hole_beside_them() {
    let s = snap(&[
        (
            "moh_2026_11",
            "2026-10-31T23:00:00Z",
            "2026-11-30T23:00:00Z",
        ),
        (
            "moh_2026_12",
            "2026-11-30T23:00:00Z",
            "2026-12-31T23:00:00Z",
        ),
    ]);
    let now = t("2026-11-25T12:00:00Z");
    let utc = plan(&table(Interval::Monthly, 3), &s, now).unwrap();
    assert_eq!(
        labels(&utc),
        [
            "create partition public.moh_2026_12_from_31230000",
            "create partition public.moh_2027_01",
            "create partition public.moh_2027_02",
        ]
    );
    assert_eq!(utc[0].period.start, t("2026-12-31T23:00:00Z"));
    let mut lagos = table(Interval::Monthly, 3);
    lagos.time_zone = "Africa/Lagos".parse().unwrap();
    let l = plan(&lagos, &s, now).unwrap();
    assert_eq!(
        labels(&l),
        [
            "create partition public.moh_2027_01",
            "create partition public.moh_2027_02"
        ]
    );
    assert_eq!(l[0].period.start, t("2026-12-31T23:00:00Z"));
    assert_eq!(l[1].period.end, t("2027-02-28T23:00:00Z"));
}

#[test]
fn daily_periods_in_london_follow_the_clock_changes() {
    let mut tb = table(Interval::Daily, 2);
    tb.time_zone = "Europe/London".parse().unwrap();
    let a = plan(&tb, &snap(&[]), t("2027-03-27T12:00:00Z")).unwrap();
    let spans: Vec<i64> = a
        .iter()
        .map(|c| (c.period.end - c.period.start).num_hours())
        .collect();
    // 27 March (GMT), 28 March (clocks go forward: 23 h), 29 March (BST).
    assert_eq!(spans, [24, 23, 24]);
    assert_eq!(a[2].period.start, t("2027-03-28T23:00:00Z"));
    assert_eq!(labels(&a)[1], "create partition public.moh_2027_03_28");
}
