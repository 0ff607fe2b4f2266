//! The upsert library module against a real PostgreSQL.

use chrono::{DateTime, Duration, Utc};
use partwarden::odds::{
    MarketKey, MarketOdds, WriteError, WriteSummary, mark_unavailable, write_batch,
};
use serde_json::json;

use crate::support::bootstrapped;

fn market(
    event: i32,
    market_id: &str,
    line: Option<f64>,
    odds: &[(&str, f64)],
    at: DateTime<Utc>,
) -> MarketOdds {
    MarketOdds {
        event_id: event,
        bookmaker_slug: "betpawa".into(),
        betpawa_market_id: market_id.into(),
        betpawa_market_name: format!("market {market_id}"),
        line,
        handicap_type: None,
        handicap_home: None,
        handicap_away: None,
        outcomes: json!(
            odds.iter()
                .map(|(n, o)| json!({"name": n, "odds": o, "is_active": true}))
                .collect::<Vec<_>>()
        ),
        market_groups: Some(json!(["main"])),
        unavailable_at: None,
        scraped_at: at,
    }
}

fn now() -> DateTime<Utc> {
    // Microsecond precision, as PostgreSQL stores it.
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap()
}

async fn current_count(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM market_odds_current", &[])
        .await
        .unwrap()
        .get(0)
}

async fn history_count(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM market_odds_history", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn new_changed_unchanged_and_duplicate_rows_in_one_batch() {
    let db = bootstrapped("odds_kinds").await;
    let c = db.client().await;
    let t1 = now() - Duration::minutes(10);
    let t2 = now() - Duration::minutes(5);
    let first = vec![
        market(1, "1x2", None, &[("1", 1.85), ("X", 3.4), ("2", 4.2)], t1),
        market(1, "ou", Some(2.5), &[("over", 1.9), ("under", 1.9)], t1),
        market(2, "1x2", None, &[("1", 2.0), ("X", 3.0), ("2", 3.5)], t1),
    ];
    let s = write_batch(&c, &first).await.unwrap();
    assert_eq!(
        s,
        WriteSummary {
            inserted: 3,
            changed: 0,
            unchanged: 0,
            history_rows: 3,
            duplicates: 0,
            stale: 0
        }
    );

    let second = vec![
        // Changed odds.
        market(1, "1x2", None, &[("1", 1.80), ("X", 3.5), ("2", 4.4)], t2),
        // Same selections and odds in another order, odds written as 1.90: unchanged.
        market(1, "ou", Some(2.5), &[("under", 1.90), ("over", 1.9)], t2),
        // Identical: unchanged.
        market(2, "1x2", None, &[("1", 2.0), ("X", 3.0), ("2", 3.5)], t2),
        // New, twice: the later scrape wins.
        market(3, "1x2", None, &[("1", 9.0)], t2 - Duration::minutes(1)),
        market(3, "1x2", None, &[("1", 1.5)], t2),
    ];
    let s = write_batch(&c, &second).await.unwrap();
    assert_eq!(
        s,
        WriteSummary {
            inserted: 1,
            changed: 1,
            unchanged: 2,
            history_rows: 2,
            duplicates: 1,
            stale: 0
        }
    );

    let rows = c
        .query(
            "SELECT event_id, betpawa_market_id, last_updated_at, last_confirmed_at, outcomes FROM market_odds_current ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap();
    let get = |i: usize| {
        (
            rows[i].get::<_, DateTime<Utc>>(2),
            rows[i].get::<_, DateTime<Utc>>(3),
        )
    };
    assert_eq!(get(0), (t2, t2), "changed: last_updated_at moves");
    assert_eq!(get(1), (t1, t2), "unchanged: only last_confirmed_at moves");
    assert_eq!(get(2), (t1, t2));
    assert_eq!(
        rows[3].get::<_, serde_json::Value>(4)[0]["odds"],
        json!(1.5),
        "the latest scrape of a duplicate wins"
    );

    // History: one row per new or changed market, captured at its scrape instant.
    let h = c
        .query("SELECT event_id, betpawa_market_id, captured_at FROM market_odds_history ORDER BY captured_at, event_id, betpawa_market_id", &[])
        .await
        .unwrap();
    let h: Vec<(i32, String, DateTime<Utc>)> =
        h.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(
        h,
        [
            (1, "1x2".to_string(), t1),
            (1, "ou".to_string(), t1),
            (2, "1x2".to_string(), t1),
            (1, "1x2".to_string(), t2),
            (3, "1x2".to_string(), t2),
        ]
    );
}

#[tokio::test]
async fn a_null_line_and_line_zero_are_the_same_market() {
    let db = bootstrapped("odds_null_zero").await;
    let c = db.client().await;
    let t1 = now() - Duration::minutes(2);
    write_batch(&c, &[market(7, "ah", None, &[("1", 1.9), ("2", 1.9)], t1)])
        .await
        .unwrap();
    let s = write_batch(
        &c,
        &[market(
            7,
            "ah",
            Some(0.0),
            &[("1", 1.9), ("2", 1.9)],
            t1 + Duration::seconds(1),
        )],
    )
    .await
    .unwrap();
    assert_eq!((s.inserted, s.unchanged), (0, 1));
    let s = write_batch(
        &c,
        &[market(
            7,
            "ah",
            None,
            &[("1", 2.0), ("2", 1.8)],
            t1 + Duration::seconds(2),
        )],
    )
    .await
    .unwrap();
    assert_eq!((s.inserted, s.changed), (0, 1));
    let n = current_count(&c).await;
    assert_eq!(n, 1);
    // A different line is a different market.
    let s = write_batch(
        &c,
        &[market(7, "ah", Some(-0.5), &[("1", 1.5), ("2", 2.5)], t1)],
    )
    .await
    .unwrap();
    assert_eq!(s.inserted, 1);
}

#[tokio::test]
async fn inside_a_transaction_that_rolls_back_nothing_is_written() {
    let db = bootstrapped("odds_tx").await;
    let mut c = db.client().await;
    let tx = c.transaction().await.unwrap();
    let s = write_batch(&tx, &[market(1, "1x2", None, &[("1", 1.5)], now())])
        .await
        .unwrap();
    assert_eq!(s.inserted, 1);
    tx.rollback().await.unwrap();
    let n = current_count(&c).await;
    assert_eq!((n, history_count(&c).await), (0, 0));
}

#[tokio::test]
async fn a_missing_partition_is_a_typed_error_and_nothing_is_written() {
    let db = bootstrapped("odds_missing").await;
    let c = db.client().await;
    let far: DateTime<Utc> = "2040-05-01T12:00:00Z".parse().unwrap();
    let batch = vec![
        market(1, "1x2", None, &[("1", 1.5)], now()),
        market(2, "1x2", None, &[("1", 1.5)], far),
    ];
    let e = write_batch(&c, &batch).await.unwrap_err();
    match &e {
        WriteError::MissingPartition { table, instant, .. } => {
            assert_eq!(table, "market_odds_history");
            assert!(instant.starts_with("2040-05-01 12:00:00"), "{instant}");
        }
        other => panic!("expected MissingPartition, got {other:?}"),
    }
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION)
    );
    assert!(!e.is_transient());
    assert!(
        e.to_string()
            .contains("no partition of market_odds_history for captured_at = 2040-05-01"),
        "{e}"
    );
    let n = current_count(&c).await;
    assert_eq!(
        (n, history_count(&c).await),
        (0, 0),
        "not even the row with a partition"
    );
}

#[tokio::test]
async fn invalid_rows_are_refused_before_anything_is_sent() {
    let db = bootstrapped("odds_invalid").await;
    let c = db.client().await;
    let mut bad = market(1, "1x2", None, &[("1", 1.5)], now());
    bad.bookmaker_slug = "a-bookmaker-with-a-long-name".into();
    let e = write_batch(&c, &[market(2, "x", None, &[], now()), bad])
        .await
        .unwrap_err();
    assert!(
        matches!(e, WriteError::InvalidInput { index: 1, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("row 1 of the batch: bookmaker_slug"));
}

#[tokio::test]
async fn an_older_scrape_never_rolls_odds_back() {
    let db = bootstrapped("odds_stale").await;
    let c = db.client().await;
    let t = now() - Duration::minutes(1);
    write_batch(&c, &[market(1, "1x2", None, &[("1", 1.5)], t)])
        .await
        .unwrap();
    let s = write_batch(
        &c,
        &[market(
            1,
            "1x2",
            None,
            &[("1", 9.9)],
            t - Duration::minutes(5),
        )],
    )
    .await
    .unwrap();
    assert_eq!((s.stale, s.changed, s.history_rows), (1, 0, 0));
    let odds: serde_json::Value = c
        .query_one("SELECT outcomes FROM market_odds_current", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(odds[0]["odds"], json!(1.5));
}

#[tokio::test]
async fn mark_unavailable_sets_the_first_instant_and_a_write_clears_it() {
    let db = bootstrapped("odds_unavailable").await;
    let c = db.client().await;
    let t = now() - Duration::minutes(3);
    write_batch(
        &c,
        &[
            market(1, "1x2", None, &[("1", 1.5)], t),
            market(1, "ou", Some(2.5), &[("o", 1.9)], t),
        ],
    )
    .await
    .unwrap();
    let key = |m: &str, line: Option<f64>| MarketKey {
        event_id: 1,
        bookmaker_slug: "betpawa".into(),
        betpawa_market_id: m.into(),
        line,
    };
    let gone = t + Duration::minutes(1);
    assert_eq!(
        mark_unavailable(&c, &[key("1x2", Some(0.0)), key("nope", None)], gone)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        mark_unavailable(&c, &[key("1x2", None)], gone + Duration::minutes(1))
            .await
            .unwrap(),
        0
    );
    let at: Option<DateTime<Utc>> = c
        .query_one(
            "SELECT unavailable_at FROM market_odds_current WHERE betpawa_market_id = '1x2'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(at, Some(gone));
    write_batch(
        &c,
        &[market(
            1,
            "1x2",
            None,
            &[("1", 1.5)],
            gone + Duration::minutes(2),
        )],
    )
    .await
    .unwrap();
    let at: Option<DateTime<Utc>> = c
        .query_one(
            "SELECT unavailable_at FROM market_odds_current WHERE betpawa_market_id = '1x2'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(at, None);
}

#[tokio::test]
async fn concurrent_writers_on_shuffled_overlapping_keys_do_not_deadlock() {
    let db = bootstrapped("odds_concurrent").await;
    let base = now() - Duration::minutes(30);
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let c = db.client().await;
        writers.push(tokio::spawn(async move {
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (w + 1);
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let mut totals = WriteSummary::default();
            for round in 0..25i64 {
                let at = base + Duration::seconds(round * 10 + w as i64);
                let mut batch: Vec<MarketOdds> = (0..600)
                    .map(|k| {
                        market(
                            k / 3,
                            &format!("m{}", k % 3),
                            None,
                            &[("1", 1.0 + (next() % 50) as f64 / 10.0)],
                            at,
                        )
                    })
                    .collect();
                // Shuffle: every writer sends the same keys in its own random order.
                for i in (1..batch.len()).rev() {
                    let j = (next() % (i as u64 + 1)) as usize;
                    batch.swap(i, j);
                }
                let s = write_batch(&c, &batch)
                    .await
                    .expect("no deadlock, no error");
                totals += s;
            }
            totals
        }));
    }
    let mut inserted = 0;
    for w in writers {
        let t = w.await.unwrap();
        inserted += t.inserted;
        assert_eq!(t.inserted + t.changed + t.unchanged + t.stale, 25 * 600);
    }
    assert_eq!(
        inserted, 600,
        "each key inserted exactly once across writers"
    );
    let n: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM market_odds_current", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 600);
}

/// (id, heap page) of every market, by id.
async fn pages(c: &tokio_postgres::Client) -> Vec<(i64, i64)> {
    c.query(
        "SELECT id::bigint, (ctid::text::point)[0]::bigint FROM market_odds_current ORDER BY id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Every scrape cycle updates every market it sees; at fillfactor 50 (migration 0004) the new
/// version fits on the row's own page, so the update is HOT: no new index entries, and the
/// row stays where it is. At the default fillfactor of 100 the pages are full and every row
/// of this test moves to a new page.
#[tokio::test]
async fn a_rescrape_updates_markets_in_place() {
    let db = bootstrapped("odds_hot").await;
    let c = db.client().await;
    let t1 = now() - Duration::minutes(10);
    let scrape = |at: DateTime<Utc>, bump: f64| -> Vec<MarketOdds> {
        (0..3000)
            .map(|i| {
                market(
                    i / 3,
                    ["1x2", "ou", "ah"][(i % 3) as usize],
                    Some(2.5),
                    &[("1", 1.5 + bump), ("X", 3.25), ("2", 4.75)],
                    at,
                )
            })
            .collect()
    };
    write_batch(&c, &scrape(t1, 0.0)).await.unwrap();
    let before = pages(&c).await;
    assert_eq!(before.len(), 3000);
    // Unchanged (only last_confirmed_at moves), then changed (new outcomes, same size).
    let s = write_batch(&c, &scrape(t1 + Duration::minutes(1), 0.0))
        .await
        .unwrap();
    assert_eq!(s.unchanged, 3000);
    let s = write_batch(&c, &scrape(t1 + Duration::minutes(2), 0.25))
        .await
        .unwrap();
    assert_eq!(s.changed, 3000);
    assert_eq!(pages(&c).await, before, "every row stayed on its page");
}

/// What counts as a change: the (name, odds, is_active) selections as a multiset. Each case is
/// a market written twice; the second write must count as changed or unchanged as listed.
#[tokio::test]
async fn what_counts_as_a_change() {
    let db = bootstrapped("odds_change").await;
    let c = db.client().await;
    let sel =
        |n: &str, o: serde_json::Value, a: bool| json!({"name": n, "odds": o, "is_active": a});
    // Two active selections, the first side of most cases.
    let two = json!([sel("1", json!(1.5), true), sel("2", json!(2.5), true)]);
    let cases: Vec<(&str, serde_json::Value, serde_json::Value, bool)> = vec![
        ("identical", two.clone(), two.clone(), false),
        (
            "reordered",
            two.clone(),
            json!([sel("2", json!(2.5), true), sel("1", json!(1.5), true)]),
            false,
        ),
        (
            "odds spelled 1.50",
            json!([sel("1", json!(1.5), true)]),
            json!([sel(
                "1",
                serde_json::from_str::<serde_json::Value>("1.50").unwrap(),
                true
            )]),
            false,
        ),
        (
            "other keys differ",
            json!([{"name": "1", "odds": 1.5, "is_active": true, "id": 7}]),
            json!([{"name": "1", "odds": 1.5, "is_active": true, "id": 8}]),
            false,
        ),
        (
            "missing and null odds",
            json!([{"name": "1", "is_active": false}, sel("2", json!(2.5), true)]),
            json!([sel("2", json!(2.5), true), {"name": "1", "odds": null, "is_active": false}]),
            false,
        ),
        (
            "odds changed",
            two.clone(),
            json!([sel("1", json!(1.55), true), sel("2", json!(2.5), true)]),
            true,
        ),
        (
            "is_active flipped",
            two.clone(),
            json!([sel("1", json!(1.5), false), sel("2", json!(2.5), true)]),
            true,
        ),
        (
            "odds swapped between names",
            two.clone(),
            json!([sel("1", json!(2.5), true), sel("2", json!(1.5), true)]),
            true,
        ),
        (
            "selection added",
            json!([sel("1", json!(1.5), true)]),
            json!([sel("1", json!(1.5), true), sel("2", json!(1.5), true)]),
            true,
        ),
        (
            "same set, other multiset",
            json!([
                sel("1", json!(1.5), true),
                sel("1", json!(1.5), true),
                sel("2", json!(2.5), true)
            ]),
            json!([
                sel("1", json!(1.5), true),
                sel("2", json!(2.5), true),
                sel("2", json!(2.5), true)
            ]),
            true,
        ),
        (
            "odds as a string",
            json!([sel("1", json!(1.5), true)]),
            json!([sel("1", json!("1.5"), true)]),
            true,
        ),
        (
            "no odds at all, name changed",
            json!([{"name": "1"}]),
            json!([{"name": "2"}]),
            true,
        ),
    ];
    let t1 = now() - Duration::minutes(10);
    let t2 = now() - Duration::minutes(5);
    let batch = |at: DateTime<Utc>, second: bool| -> Vec<MarketOdds> {
        cases
            .iter()
            .enumerate()
            .map(|(i, (_, a, b, _))| {
                let mut m = market(i as i32, "m", None, &[], at);
                m.outcomes = if second { b.clone() } else { a.clone() };
                m
            })
            .collect()
    };
    write_batch(&c, &batch(t1, false)).await.unwrap();
    let s = write_batch(&c, &batch(t2, true)).await.unwrap();
    let rows = c
        .query(
            "SELECT event_id, last_updated_at = last_confirmed_at FROM market_odds_current ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    for (r, (name, _, _, changed)) in rows.iter().zip(&cases) {
        assert_eq!(r.get::<_, bool>(1), *changed, "{name}");
    }
    let expected = cases.iter().filter(|c| c.3).count() as u64;
    assert_eq!((s.changed, s.history_rows), (expected, expected));
    assert_eq!(s.unchanged, cases.len() as u64 - expected);
}

// ---- OddsWriter: unchanged markets sent as the row version the writer made ----

use partwarden::odds::OddsWriter;

/// (outcomes, market name, last_updated_at, last_confirmed_at) of event `event`'s "1x2".
async fn stored(
    c: &tokio_postgres::Client,
    event: i32,
) -> (serde_json::Value, String, DateTime<Utc>, DateTime<Utc>) {
    let r = c
        .query_one(
            "SELECT outcomes, betpawa_market_name, last_updated_at, last_confirmed_at \
             FROM market_odds_current WHERE event_id = $1 AND betpawa_market_id = '1x2'",
            &[&event],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

/// The first two columns of `sql`'s rows.
async fn pairs<A, B>(c: &tokio_postgres::Client, sql: &str) -> Vec<(A, B)>
where
    A: for<'a> tokio_postgres::types::FromSql<'a>,
    B: for<'a> tokio_postgres::types::FromSql<'a>,
{
    c.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The (ctid, xmin) of event `event`'s row, as text.
async fn row_version(c: &tokio_postgres::Client, event: i32) -> (String, String) {
    let r = c
        .query_one(
            "SELECT ctid::text, xmin::text FROM market_odds_current WHERE event_id = $1",
            &[&event],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

/// `rows` scraped again, unchanged, at `at`.
fn rescraped(rows: &[MarketOdds], at: DateTime<Utc>) -> Vec<MarketOdds> {
    rows.iter()
        .cloned()
        .map(|mut m| {
            m.scraped_at = at;
            m
        })
        .collect()
}

fn cycle(at: DateTime<Utc>, odds_of_event_1: f64) -> Vec<MarketOdds> {
    (1..=20)
        .map(|e| {
            let o = if e == 1 { odds_of_event_1 } else { 1.5 };
            market(e, "1x2", None, &[("1", o), ("X", 3.0), ("2", 4.0)], at)
        })
        .collect()
}

#[tokio::test]
async fn a_writer_sends_unchanged_markets_without_their_json() {
    let db = bootstrapped("odds_writer").await;
    let c = db.client().await;
    let t = now() - Duration::minutes(30);
    let mut w = OddsWriter::new();
    let s = w.write(&c, &cycle(t, 1.5)).await.unwrap();
    assert_eq!((s.inserted, s.history_rows), (20, 20));
    assert_eq!(w.len(), 20);
    // Next cycle: event 1 changed, and every market has a new display name.
    let mut next = cycle(t + Duration::minutes(5), 1.6);
    for m in &mut next {
        m.betpawa_market_name = "renamed".into();
    }
    let s = w.write(&c, &next).await.unwrap();
    assert_eq!(
        (s.inserted, s.changed, s.unchanged, s.history_rows, s.stale),
        (0, 1, 19, 1, 0)
    );
    let st = w.stats();
    assert_eq!(
        (st.sent_as_versions, st.resent),
        (19, 0),
        "the 19 unchanged markets went without JSON"
    );
    for e in 1..=20 {
        let (outcomes, name, updated, confirmed) = stored(&c, e).await;
        assert_eq!(name, "renamed", "scalar columns are written either way");
        assert_eq!(confirmed, t + Duration::minutes(5));
        let odds = if e == 1 { 1.6 } else { 1.5 };
        assert_eq!(outcomes[0]["odds"], json!(odds));
        assert_eq!(updated == confirmed, e == 1, "event {e}");
    }
    assert_eq!(history_count(&c).await, 21);
    // A third cycle, nothing changed: all 20 as versions, still exact.
    let s = w
        .write(&c, &cycle(t + Duration::minutes(10), 1.6))
        .await
        .unwrap();
    assert_eq!((s.unchanged, s.history_rows), (20, 0));
    assert_eq!(w.stats().sent_as_versions, 39);
    assert_eq!(w.stats().resent, 0);
}

/// Markets a writer has no version of go through a plain INSERT; when one of them exists after
/// all (someone else wrote it, or the writer was restarted), the server rolls that insert back
/// and upserts the same batch: what is written and counted is write_batch's, with no market
/// inserted twice and no history row for the insert rolled back.
#[tokio::test]
async fn a_writer_inserts_markets_it_never_wrote_and_upserts_them_when_one_exists() {
    let db = bootstrapped("odds_writer_new").await;
    let c = db.client().await;
    let t = now() - Duration::minutes(30);
    let at = |m: i64| t + Duration::minutes(m);

    // All new: inserted, nothing fell back.
    let mut w = OddsWriter::new();
    let s = w.write(&c, &cycle(at(0), 1.5)).await.unwrap();
    assert_eq!((s.inserted, s.history_rows), (20, 20));
    assert_eq!(w.stats().new_existed, 0);

    // Events 21..=40 for a writer that never wrote them, where someone else wrote event 40
    // (the batch's last market: 19 markets are inserted before the conflict) with the same
    // outcomes earlier, and event 30 with a later scrape.
    let batch: Vec<MarketOdds> = (21..=40)
        .map(|e| market(e, "1x2", None, &[("1", 1.5), ("X", 3.0), ("2", 4.0)], at(2)))
        .collect();
    let mut e40 = batch[19].clone();
    e40.scraped_at = at(1);
    let mut e30 = batch[9].clone();
    e30.scraped_at = at(3);
    write_batch(&c, &[e40, e30]).await.unwrap();
    assert_eq!(history_count(&c).await, 22);
    let mut w = OddsWriter::new();
    let s = w.write(&c, &batch).await.unwrap();
    assert_eq!(
        (s.inserted, s.changed, s.unchanged, s.stale, s.history_rows),
        (18, 0, 1, 1, 18),
        "the upsert's counts"
    );
    assert_eq!(w.stats().new_existed, 1);
    assert_eq!(w.stats().resent, 0, "upserted by the server, not resent");
    assert_eq!(
        history_count(&c).await,
        40,
        "one history row per new market"
    );
    let per_key: Vec<(i32, i64)> = pairs(
        &c,
        "SELECT event_id, count(*) FROM market_odds_current WHERE event_id > 20 \
         GROUP BY event_id ORDER BY event_id",
    )
    .await;
    assert_eq!(per_key, (21..=40).map(|e| (e, 1)).collect::<Vec<_>>());
    assert_eq!(
        stored(&c, 30).await.3,
        at(3),
        "the stale scrape left event 30 alone"
    );
    assert_eq!(stored(&c, 40).await.3, at(2));

    // A writer restarted on markets that all exist: each batch's first market exists.
    let mut w = OddsWriter::new();
    let s = w.write_cycle(&c, &cycle(at(5), 1.6), 5).await.unwrap();
    assert_eq!(
        (s.inserted, s.changed, s.unchanged, s.history_rows),
        (0, 1, 19, 1)
    );
    assert_eq!(w.stats().new_existed, 4, "four batches, each upserted");
    assert_eq!(history_count(&c).await, 41);
    // It remembers what the upserts wrote: the next cycle goes by version.
    let s = w.write_cycle(&c, &cycle(at(6), 1.6), 5).await.unwrap();
    assert_eq!((s.unchanged, s.history_rows), (20, 0));
    assert_eq!(w.stats().sent_as_versions, 20);
}

/// The writer remembers what it wrote; anything that wrote the row since must make it send the
/// JSON again, or it would take a changed market for unchanged and lose the change.
#[tokio::test]
async fn a_writer_never_trusts_a_row_someone_else_wrote() {
    let db = bootstrapped("odds_writer_others").await;
    let mut c = db.client().await;
    let t = now() - Duration::minutes(60);
    let at = |m: i64| t + Duration::minutes(m);
    let mut w = OddsWriter::new();
    w.write(&c, &cycle(at(0), 1.5)).await.unwrap();

    // 1. Another writer changes event 1's odds; ours then writes its old odds again: that is a
    //    change back, with a history row.
    write_batch(&c, &cycle(at(1), 9.9)[..1]).await.unwrap();
    let s = w.write(&c, &cycle(at(2), 1.5)).await.unwrap();
    assert_eq!((s.changed, s.unchanged, s.history_rows), (1, 19, 1));
    assert_eq!(stored(&c, 1).await.0[0]["odds"], json!(1.5));
    assert_eq!(w.stats().resent, 1, "the batch was sent again in full");

    // 2. The application's own UPDATE of the outcomes.
    c.execute(
        "UPDATE market_odds_current SET outcomes = '[{\"name\": \"1\", \"odds\": 7.0}]' WHERE event_id = 2",
        &[],
    )
    .await
    .unwrap();
    let s = w.write(&c, &cycle(at(3), 1.5)).await.unwrap();
    assert_eq!((s.changed, s.history_rows), (1, 1));
    assert_eq!(stored(&c, 2).await.0[0]["odds"], json!(1.5));

    // 3. A write of ours inside a transaction that rolls back: the rolled-back version must
    //    not be trusted. Event 3 goes to 2.0 and back; the stored row still has 1.5.
    let mut moved = cycle(at(4), 1.5);
    moved[2].outcomes = json!([{"name": "1", "odds": 2.0, "is_active": true}]);
    let tx = c.transaction().await.unwrap();
    w.write(&tx, &moved).await.unwrap();
    tx.rollback().await.unwrap();
    moved.iter_mut().for_each(|m| m.scraped_at = at(5));
    let s = w.write(&c, &moved).await.unwrap();
    assert_eq!(
        (s.changed, s.history_rows),
        (1, 1),
        "event 3 changed to 2.0 and has its history row"
    );
    assert_eq!(
        stored(&c, 3).await.0,
        json!([{"name": "1", "odds": 2.0, "is_active": true}])
    );

    // 4. mark_unavailable by someone else, then a write that makes the market available.
    mark_unavailable(
        &c,
        &[MarketKey {
            event_id: 4,
            bookmaker_slug: "betpawa".into(),
            betpawa_market_id: "1x2".into(),
            line: None,
        }],
        at(6),
    )
    .await
    .unwrap();
    w.write(&c, &rescraped(&moved, at(7))).await.unwrap();
    let gone: Option<DateTime<Utc>> = c
        .query_one(
            "SELECT unavailable_at FROM market_odds_current WHERE event_id = 4",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(gone, None, "the write made it available again");

    // 5. The market was deleted: it is inserted again, with its outcomes and a history row.
    c.execute("DELETE FROM market_odds_current WHERE event_id = 5", &[])
        .await
        .unwrap();
    let before = history_count(&c).await;
    let s = w.write(&c, &rescraped(&moved, at(8))).await.unwrap();
    assert_eq!((s.inserted, s.history_rows), (1, 1));
    assert_eq!(history_count(&c).await, before + 1);
    assert_eq!(stored(&c, 5).await.0[0]["odds"], json!(1.5));

    // 6. VACUUM FULL moves every row (new ctids): the batch misses once and is sent in full.
    c.batch_execute("VACUUM FULL market_odds_current")
        .await
        .unwrap();
    let resent = w.stats().resent;
    let s = w
        .write(&c, &rescraped(&moved, at(8) + Duration::seconds(30)))
        .await
        .unwrap();
    assert_eq!((s.unchanged, s.history_rows), (20, 0));
    assert_eq!(w.stats().resent, resent + 1);

    // 7. A replayed (stale) batch: counted stale, nothing rolled back.
    let s = w.write(&c, &cycle(at(2), 1.5)).await.unwrap();
    assert_eq!(s.stale, 20, "{s:?}");
    assert_eq!(stored(&c, 3).await.0[0]["odds"], json!(2.0));
    // A batch with a stale market does not say which versions the others have now: the
    // writer forgot them, sends them in full once, then without JSON again.
    for (minute, as_versions) in [(9, 0), (10, 20)] {
        let sent = w.stats().sent_as_versions;
        let s = w.write(&c, &rescraped(&moved, at(minute))).await.unwrap();
        assert_eq!((s.unchanged, s.history_rows), (20, 0));
        assert_eq!(w.stats().sent_as_versions - sent, as_versions);
    }

    // 8. The writer's version's slot holds another version of the same market: the version
    //    was replaced (here by an UPDATE that moves the row), VACUUM freed its slot, and a
    //    later UPDATE put the market back in it with other outcomes. Same ctid, same market:
    //    only the xmin tells, and the market must be found changed back. (One market in the
    //    table, so that the freed slot is the one the next version takes.)
    c.batch_execute("TRUNCATE market_odds_current")
        .await
        .unwrap();
    let one = rescraped(&moved[5..6], at(11));
    assert_eq!(one[0].event_id, 6);
    assert_eq!(w.write(&c, &one).await.unwrap().inserted, 1);
    let (ctid, xmin) = row_version(&c, 6).await;
    // VACUUM frees the slot only when no snapshot in the database (an autovacuum worker's
    // ANALYZE, say) can still see the old version: until the market lands in it, move it and
    // vacuum again.
    for attempt in 1.. {
        c.execute(
            "UPDATE market_odds_current SET bookmaker_slug = 'moved' WHERE event_id = 6",
            &[],
        )
        .await
        .unwrap();
        c.batch_execute("VACUUM (INDEX_CLEANUP ON) market_odds_current")
            .await
            .unwrap();
        c.execute(
            "UPDATE market_odds_current SET bookmaker_slug = 'betpawa', \
             outcomes = '[{\"name\": \"1\", \"odds\": 7.0, \"is_active\": true}]' WHERE event_id = 6",
            &[],
        )
        .await
        .unwrap();
        if row_version(&c, 6).await.0 == ctid || attempt == 100 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (ctid_now, xmin_now) = row_version(&c, 6).await;
    assert_eq!(
        ctid_now, ctid,
        "the market is back in the slot of the writer's version"
    );
    assert_ne!(xmin_now, xmin);
    let s = w.write(&c, &rescraped(&one, at(12))).await.unwrap();
    assert_eq!((s.changed, s.unchanged, s.history_rows), (1, 0, 1), "{s:?}");
    assert_eq!(stored(&c, 6).await.0[0]["odds"], json!(1.5));

    // 9. VACUUM FULL moved another market written by the same statement into the slot of the
    //    writer's version: same ctid, same xmin, another market. Only the key tells.
    c.batch_execute("TRUNCATE market_odds_current")
        .await
        .unwrap();
    let three: Vec<MarketOdds> = (1..=3)
        .map(|e| {
            let mut m = market(e, "1x2", None, &[("1", 1.5)], at(13));
            m.betpawa_market_name = format!("event {e}");
            m
        })
        .collect();
    assert_eq!(w.write(&c, &three).await.unwrap().inserted, 3);
    let (slot_of_1, xmin_of_1) = row_version(&c, 1).await;
    c.execute("DELETE FROM market_odds_current WHERE event_id = 1", &[])
        .await
        .unwrap();
    // VACUUM FULL keeps the deleted row while any snapshot in the database (an autovacuum
    // worker's ANALYZE, say) can still see it: until it is gone, again.
    for attempt in 1.. {
        c.batch_execute("VACUUM FULL market_odds_current")
            .await
            .unwrap();
        if row_version(&c, 2).await.0 == slot_of_1 || attempt == 100 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        row_version(&c, 2).await,
        (slot_of_1, xmin_of_1),
        "event 2 now has event 1's version"
    );
    let s = w.write(&c, &rescraped(&three[..2], at(14))).await.unwrap();
    assert_eq!((s.inserted, s.unchanged), (1, 1), "{s:?}");
    let names: Vec<(i32, String)> = pairs(
        &c,
        "SELECT event_id, betpawa_market_name FROM market_odds_current ORDER BY event_id",
    )
    .await;
    assert_eq!(
        names,
        (1..=3)
            .map(|e| (e, format!("event {e}")))
            .collect::<Vec<_>>()
    );
}

/// The same cases as `what_counts_as_a_change`, written by an OddsWriter: the JSON it sends for
/// changed markets is compared exactly as write_batch's.
#[tokio::test]
async fn a_writer_counts_changes_as_write_batch_does() {
    let db = bootstrapped("odds_writer_change").await;
    let c = db.client().await;
    let t1 = now() - Duration::minutes(10);
    let t2 = now() - Duration::minutes(5);
    let sel = |n: &str, o: f64| json!({"name": n, "odds": o, "is_active": true});
    let cases = [
        (
            json!([sel("1", 1.5), sel("2", 2.5)]),
            json!([sel("1", 1.5), sel("2", 2.5)]),
            false,
        ),
        (
            json!([sel("1", 1.5), sel("2", 2.5)]),
            json!([sel("2", 2.5), sel("1", 1.5)]),
            false,
        ),
        (json!([sel("1", 1.5)]), json!([sel("1", 1.55)]), true),
        (
            json!([sel("1", 1.5)]),
            json!([sel("1", 1.5), sel("2", 1.5)]),
            true,
        ),
    ];
    let batch = |at, second: bool| -> Vec<MarketOdds> {
        cases
            .iter()
            .enumerate()
            .map(|(i, (a, b, _))| {
                let mut m = market(i as i32, "m", None, &[], at);
                m.outcomes = if second { b.clone() } else { a.clone() };
                m
            })
            .collect()
    };
    let mut w = OddsWriter::new();
    w.write(&c, &batch(t1, false)).await.unwrap();
    let s = w.write(&c, &batch(t2, true)).await.unwrap();
    assert_eq!((s.changed, s.unchanged, s.history_rows), (2, 2, 2));
    assert_eq!(
        w.stats().sent_as_versions,
        1,
        "only the identical one went without JSON"
    );
    let rows = c
        .query(
            "SELECT last_updated_at = last_confirmed_at, outcomes FROM market_odds_current ORDER BY event_id",
            &[],
        )
        .await
        .unwrap();
    for (r, (_, b, changed)) in rows.iter().zip(&cases) {
        assert_eq!(r.get::<_, bool>(0), *changed);
        assert_eq!(
            r.get::<_, serde_json::Value>(1),
            *b,
            "the latest spelling is stored"
        );
    }
}

/// Writers that remember, on the same keys: each one's versions are overwritten by the others'
/// all the time, so batches miss and are resent, in the same key order: no deadlock, no error,
/// and the final state is the last scrape of every key.
#[tokio::test]
async fn concurrent_odds_writers_miss_and_resend_without_deadlock() {
    let db = bootstrapped("odds_writer_concurrent").await;
    let base = now() - Duration::minutes(30);
    let mut tasks = Vec::new();
    for w in 0..3i64 {
        let c = db.client().await;
        tasks.push(tokio::spawn(async move {
            let mut writer = OddsWriter::new();
            for round in 0..20i64 {
                let at = base + Duration::seconds(round * 10 + w);
                // The same odds for every writer, changing every fourth round.
                let mut batch: Vec<MarketOdds> = (0..300)
                    .map(|k| {
                        let odds = 1.0 + ((k as i64 + round / 4) % 40) as f64 / 10.0;
                        market(k / 3, &format!("m{}", k % 3), None, &[("1", odds)], at)
                    })
                    .collect();
                batch.rotate_left((w as usize * 97) % 300);
                writer
                    .write(&c, &batch)
                    .await
                    .expect("no deadlock, no error");
            }
            writer.stats()
        }));
    }
    let mut resent = 0;
    let mut as_versions = 0;
    for t in tasks {
        let s = t.await.unwrap();
        resent += s.resent;
        as_versions += s.sent_as_versions;
    }
    let c = db.client().await;
    let wrong: i64 = c
        .query_one(
            "SELECT count(*) FROM market_odds_current \
             WHERE outcomes -> 0 -> 'odds' <> to_jsonb(1.0 + ((event_id * 3 + substr(betpawa_market_id, 2)::int + 4) % 40) / 10.0)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0, "every market has the odds of the last round");
    println!("resent batches {resent}, markets sent as versions {as_versions}");
}

/// Writers that never wrote the same new markets, at the same time: the first insert of each
/// market wins, the others wait for it, fail on the unique index and are upserted instead. No
/// market is inserted twice, and each gets exactly one history row (same outcomes).
#[tokio::test]
async fn concurrent_writers_of_the_same_new_markets_insert_each_once() {
    let db = bootstrapped("odds_writer_new_concurrent").await;
    let base = now() - Duration::minutes(30);
    let mut tasks = Vec::new();
    for w in 0..4i64 {
        let c = db.client().await;
        tasks.push(tokio::spawn(async move {
            let mut writer = OddsWriter::new();
            let at = base + Duration::seconds(w);
            let cycle: Vec<MarketOdds> = (0..600)
                .map(|k| market(k / 3, &format!("m{}", k % 3), None, &[("1", 1.5)], at))
                .collect();
            let s = writer
                .write_cycle(&c, &cycle, 50)
                .await
                .expect("no deadlock, no error");
            (s, writer.stats())
        }));
    }
    let (mut inserted, mut counted, mut fell_back) = (0, 0, 0);
    for t in tasks {
        let (s, stats) = t.await.unwrap();
        inserted += s.inserted;
        counted += s.inserted + s.unchanged + s.stale;
        fell_back += stats.new_existed;
        assert_eq!(s.changed, 0, "{s:?}");
    }
    assert_eq!(inserted, 600, "each market inserted by one writer");
    assert_eq!(counted, 4 * 600);
    assert_eq!(
        fell_back,
        3 * 12,
        "of each batch's four statements, three were upserted"
    );
    let c = db.client().await;
    let (rows, keys): (i64, i64) = {
        let r = c
            .query_one(
                "SELECT count(*), count(DISTINCT (event_id, betpawa_market_id)) FROM market_odds_current",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((rows, keys), (600, 600));
    assert_eq!(history_count(&c).await, 600, "one history row per market");
}

/// A cycle in pipelined batches writes what batch-by-batch writes, and the second cycle sends
/// its unchanged markets without JSON.
#[tokio::test]
async fn write_cycle_pipelines_batches_and_writes_what_write_batch_writes() {
    let db = bootstrapped("odds_write_cycle").await;
    let c = db.client().await;
    let t = now() - Duration::minutes(30);
    // 250 markets, in no particular order, with a duplicate of event 7 (the later one wins).
    let scrape = |at: DateTime<Utc>, bump: f64| -> Vec<MarketOdds> {
        let mut v: Vec<MarketOdds> = (0..250)
            .rev()
            .map(|e| {
                let o = if e % 5 == 0 { 1.5 + bump } else { 1.5 };
                market(e, "1x2", None, &[("1", o)], at)
            })
            .collect();
        let mut dup = v[10].clone();
        dup.outcomes = json!([{"name": "1", "odds": 9.0, "is_active": true}]);
        v.push(dup);
        v
    };
    let mut w = OddsWriter::new();
    let s = w.write_cycle(&c, &scrape(t, 0.0), 40).await.unwrap();
    assert_eq!(
        (s.inserted, s.history_rows, s.duplicates, s.stale),
        (250, 250, 1, 0)
    );
    assert_eq!(w.stats().batches, 7, "250 markets in batches of 40");
    let s = w
        .write_cycle(&c, &scrape(t + Duration::minutes(5), 0.1), 40)
        .await
        .unwrap();
    // Every fifth market changed; event 239 (v[10]) got 9.0 both times.
    assert_eq!((s.changed, s.unchanged, s.history_rows), (50, 200, 50));
    assert_eq!(w.stats().sent_as_versions, 200);
    assert_eq!(w.stats().resent, 0);
    let wrong: i64 = c
        .query_one(
            "SELECT count(*) FROM market_odds_current WHERE outcomes -> 0 -> 'odds' <> \
             CASE WHEN event_id = 239 THEN 9.0 WHEN event_id % 5 = 0 THEN 1.6 ELSE 1.5 END::text::jsonb",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0);
    assert_eq!(history_count(&c).await, 300);
}

/// A batch that fails stops the cycle: batches before it are written, none after the one
/// queued behind it is sent, the error is the batch's, and writing the cycle again finishes it.
#[tokio::test]
async fn write_cycle_stops_at_the_first_failed_batch_and_can_be_written_again() {
    let db = bootstrapped("odds_write_cycle_error").await;
    let c = db.client().await;
    let at = now() - Duration::minutes(30);
    let far: DateTime<Utc> = "2040-05-01T12:00:00Z".parse().unwrap();
    // Events 0..50 in batches of 5; events 10..15 (the third batch) have no partition.
    let cycle = |late: DateTime<Utc>| -> Vec<MarketOdds> {
        (0..50)
            .map(|e| {
                let when = if (10..15).contains(&e) { late } else { at };
                market(e, "1x2", None, &[("1", 1.5)], when)
            })
            .collect()
    };
    let mut w = OddsWriter::new();
    let e = w.write_cycle(&c, &cycle(far), 5).await.unwrap_err();
    assert!(matches!(e, WriteError::MissingPartition { .. }), "{e:?}");
    let written: Vec<i32> = c
        .query("SELECT event_id FROM market_odds_current ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(&written[..10], &(0..10).collect::<Vec<_>>()[..]);
    assert!(
        written.len() == 10 || written[10..] == (15..20).collect::<Vec<_>>()[..],
        "only the batch queued behind the failed one may follow it: {written:?}"
    );
    let s = w.write_cycle(&c, &cycle(at), 5).await.unwrap();
    assert_eq!(s.inserted + s.stale, 50);
    assert_eq!(s.stale as usize, written.len());
    let n = current_count(&c).await;
    assert_eq!((n, history_count(&c).await), (50, 50));
}

/// A miss in a pipelined cycle: the batch is sent again behind the ones in flight, and the
/// cycle completes (a resend awaited out of order would stall the connection: the response of
/// the batch queued before it is never read).
#[tokio::test]
async fn write_cycle_resends_a_missed_batch_behind_the_ones_in_flight() {
    let db = bootstrapped("odds_write_cycle_miss").await;
    let c = db.client().await;
    let t = now() - Duration::minutes(30);
    let scrape = |at: DateTime<Utc>| -> Vec<MarketOdds> {
        (0..20_000)
            .map(|e| market(e, "1x2", None, &[("1", 1.5), ("X", 3.0)], at))
            .collect()
    };
    let mut w = OddsWriter::new();
    w.write_cycle(&c, &scrape(t), 5000).await.unwrap();
    // Someone else writes two markets of the first batches.
    let mut other = scrape(t + Duration::minutes(1));
    other.retain(|m| m.event_id == 3 || m.event_id == 5010);
    for m in &mut other {
        m.outcomes = json!([{"name": "1", "odds": 8.0}]);
    }
    write_batch(&c, &other).await.unwrap();
    let s = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        w.write_cycle(&c, &scrape(t + Duration::minutes(2)), 5000),
    )
    .await
    .expect("the cycle completes")
    .unwrap();
    assert_eq!((s.changed, s.unchanged, s.history_rows), (2, 19_998, 2));
    assert_eq!(w.stats().resent, 2, "the two batches with those markets");
    let wrong: i64 = c
        .query_one(
            "SELECT count(*) FROM market_odds_current WHERE outcomes -> 0 -> 'odds' <> '1.5'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0);
}

/// A session whose notices (here: auto_explain's plans) are collected.
async fn explaining_client(
    url: &str,
) -> (tokio_postgres::Client, std::sync::mpsc::Receiver<String>) {
    let (client, mut conn) = url
        .parse::<tokio_postgres::Config>()
        .unwrap()
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    tokio::spawn(async move {
        while let Some(Ok(m)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let tokio_postgres::AsyncMessage::Notice(n) = m {
                let _ = tx.send(n.message().to_string());
            }
        }
    });
    client
        .batch_execute(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; \
             SET auto_explain.log_nested_statements = on; SET auto_explain.log_level = notice",
        )
        .await
        .unwrap();
    (client, rx)
}

/// write_odds_known takes its row locks in the order of its arrays (the writer's key order, the
/// one global order every writer locks in) only with one plan: a nested loop over the arrays
/// with a fetch by ctid inside. Any other (a hash join, or a probe of an index on the key
/// columns) would lock in another order, and be slower. Checked on every execution, the
/// first ones (custom plans, with the arrays' sizes known) and the generic plan after them.
#[tokio::test]
async fn a_writer_updates_known_markets_by_ctid_in_key_order() {
    let db = bootstrapped("odds_known_plan").await;
    let (c, notices) = explaining_client(&db.url).await;
    let t = now() - Duration::minutes(30);
    let markets = |at: DateTime<Utc>| -> Vec<MarketOdds> {
        (0..800)
            .map(|e| market(e, "1x2", None, &[("1", 1.5 + (e % 3) as f64)], at))
            .collect()
    };
    let mut w = OddsWriter::new();
    w.write_cycle(&c, &markets(t), 100).await.unwrap();
    while notices.try_recv().is_ok() {}
    for cycle in 1..=2 {
        let s = w
            .write_cycle(&c, &markets(t + Duration::minutes(cycle)), 100)
            .await
            .unwrap();
        assert_eq!(s.unchanged, 800);
    }
    let plans: Vec<String> = notices
        .try_iter()
        .filter(|n| n.contains("Update on market_odds_current"))
        .collect();
    assert_eq!(plans.len(), 16, "one plan per batch");
    for plan in plans {
        let lines: Vec<&str> = plan
            .lines()
            .skip_while(|l| !l.contains("Update on market_odds_current"))
            .skip(1)
            .take(3)
            .map(str::trim)
            .collect();
        assert!(
            lines[0].starts_with("->  Nested Loop")
                && lines[1].starts_with("->  Function Scan on t")
                && lines[2].starts_with("->  Tid Scan on market_odds_current"),
            "{plan}"
        );
    }
}
