//! The odds write path: one round trip per scrape batch, at the database's speed.
//!
//! Application writers call [`write_batch`] with a scrape's markets. It sends one statement
//! with typed array parameters (no SQL is built from values) that, on the server:
//!
//! 1. keeps the latest scrape of each key when a batch repeats one (the later row of the batch
//!    when the instants tie);
//! 2. locks the markets that already exist, in key order (so concurrent writers with
//!    overlapping keys never deadlock), and compares their outcomes with the new ones as the
//!    application does: the same selections with the same odds and `is_active`, in any order;
//! 3. upserts `market_odds_current` on its conflict target, the unique index
//!    `(event_id, bookmaker_slug, betpawa_market_id, COALESCE(line, 0))`: new markets are
//!    inserted; changed markets get their outcomes and `last_updated_at` = the scrape instant;
//!    unchanged markets only get `last_confirmed_at` bumped;
//! 4. writes a `market_odds_history` row (`captured_at` = the scrape instant) for every new or
//!    changed market, and none for unchanged ones: the change-only history.
//!
//! A NULL line and line 0 are the same market (that is what `COALESCE(line, 0)` in the unique
//! index means): writing line 0 updates the market stored with a NULL line, and vice versa.
//!
//! A scrape older than what is stored for a market (`last_confirmed_at`) is ignored for that
//! market and counted as stale, so batches applied out of order never roll odds back.
//!
//! ```no_run
//! # async fn demo(client: &tokio_postgres::Client) -> Result<(), partwarden::odds::WriteError> {
//! use partwarden::odds::{write_batch, MarketOdds};
//! let scraped_at = chrono::Utc::now();
//! let markets = vec![MarketOdds {
//!     event_id: 4711,
//!     bookmaker_slug: "betpawa".into(),
//!     betpawa_market_id: "1x2".into(),
//!     betpawa_market_name: "1X2".into(),
//!     line: None,
//!     handicap_type: None,
//!     handicap_home: None,
//!     handicap_away: None,
//!     outcomes: serde_json::json!([{"name": "1", "odds": 1.85, "is_active": true},
//!                                  {"name": "X", "odds": 3.4, "is_active": true},
//!                                  {"name": "2", "odds": 4.2, "is_active": true}]),
//!     market_groups: None,
//!     unavailable_at: None,
//!     scraped_at,
//! }];
//! let summary = write_batch(client, &markets).await?;
//! println!("{} new, {} changed, {} unchanged, {} history rows",
//!          summary.inserted, summary.changed, summary.unchanged, summary.history_rows);
//! # Ok(()) }
//! ```

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::GenericClient;

/// One market of one bookmaker for one event, as scraped: the writable columns of
/// `market_odds_current` and the scrape instant.
#[derive(Clone, Debug, PartialEq)]
pub struct MarketOdds {
    /// The event; negative for competitor-only events.
    pub event_id: i32,
    /// `betpawa`, `sportybet`, `bet9ja`, ... (at most 20 characters).
    pub bookmaker_slug: String,
    /// The market's id in BetPawa's catalogue (at most 50 characters).
    pub betpawa_market_id: String,
    /// Its display name (at most 255 characters).
    pub betpawa_market_name: String,
    /// The line (over/under 2.5, handicap -1, ...); `None` for markets without one, which is
    /// the same market as line 0.
    pub line: Option<f64>,
    /// Handicap kind, when the market is a handicap.
    pub handicap_type: Option<String>,
    /// Home handicap.
    pub handicap_home: Option<f64>,
    /// Away handicap.
    pub handicap_away: Option<f64>,
    /// A JSON array of outcomes: `[{"name": "1", "odds": 1.85, "is_active": true}, ...]`.
    pub outcomes: serde_json::Value,
    /// Market groups, free JSON.
    pub market_groups: Option<serde_json::Value>,
    /// When the market became unavailable, if it is (a write with `None` makes it available).
    pub unavailable_at: Option<DateTime<Utc>>,
    /// When this was scraped: `last_updated_at` / `last_confirmed_at` / history `captured_at`.
    pub scraped_at: DateTime<Utc>,
}

/// The key of a market: what the unique index of `market_odds_current` is on.
#[derive(Clone, Debug, PartialEq)]
pub struct MarketKey {
    /// The event.
    pub event_id: i32,
    /// The bookmaker.
    pub bookmaker_slug: String,
    /// The market.
    pub betpawa_market_id: String,
    /// The line; `None` and `Some(0.0)` are the same key.
    pub line: Option<f64>,
}

/// What a batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WriteSummary {
    /// Markets new to `market_odds_current`.
    pub inserted: u64,
    /// Markets whose outcomes changed.
    pub changed: u64,
    /// Markets whose outcomes did not change (only `last_confirmed_at` moved).
    pub unchanged: u64,
    /// Rows written to `market_odds_history` (one per new or changed market).
    pub history_rows: u64,
    /// Rows of the batch that repeated a key of the same batch (the latest scrape was kept).
    pub duplicates: u64,
    /// Markets whose stored scrape is newer than this batch's: left as they were.
    pub stale: u64,
}

/// Why a batch was not written. In every case nothing of the batch was written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A row is not acceptable; nothing was sent.
    #[error("row {index} of the batch: {message}")]
    InvalidInput {
        /// 0-based position in the batch.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// The history table has no partition for a scrape instant of the batch.
    #[error("no partition of {table} for captured_at = {instant}; nothing of the batch was written (is partwarden's maintenance running? `partwarden --check` tells)")]
    MissingPartition {
        /// The table, `market_odds_history`.
        table: String,
        /// The instant without a partition, as the server printed it.
        instant: String,
        /// The server's error (SQLSTATE 23514).
        #[source]
        source: tokio_postgres::Error,
    },
    /// Any other database error; its SQLSTATE is reachable with [`WriteError::code`].
    #[error("writing odds: {}", crate::db::error_text(.0))]
    Db(#[source] tokio_postgres::Error),
}

impl WriteError {
    /// The SQLSTATE, when the server reported one.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            WriteError::InvalidInput { .. } => None,
            WriteError::MissingPartition { source, .. } | WriteError::Db(source) => source.code(),
        }
    }

    /// Whether retrying the same batch may succeed: serialization failure, deadlock, a lost
    /// connection or an admin shutdown. A missing partition is not retryable until one exists.
    pub fn is_transient(&self) -> bool {
        match self {
            WriteError::Db(e) => {
                e.is_closed()
                    || matches!(
                        e.code(),
                        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
                            || *c == SqlState::T_R_DEADLOCK_DETECTED
                            || *c == SqlState::ADMIN_SHUTDOWN
                            || *c == SqlState::CANNOT_CONNECT_NOW
                    )
            }
            _ => false,
        }
    }
}

/// `outcomes` reduced to what counts for "changed": the sorted list of (name, odds, is_active).
/// `$X` is replaced by the column it normalises.
const NORMALISED: &str = "(SELECT coalesce(jsonb_agg(jsonb_build_array(e -> 'name', e -> 'odds', e -> 'is_active') \
     ORDER BY e ->> 'name', e ->> 'odds', e ->> 'is_active'), '[]'::jsonb) FROM jsonb_array_elements($X) AS e)";

/// The statement, over a relation `src` with the batch's columns (`input` for [`write_batch`];
/// the benchmark runs the same statement over a loaded table to measure the server's ceiling).
pub fn upsert_sql(src: &str) -> String {
    let norm_old = NORMALISED.replace("$X", "c.outcomes");
    let norm_new = NORMALISED.replace("$X", "d.outcomes");
    format!(
        "WITH input AS ({src}),
dedup AS (
    SELECT DISTINCT ON (event_id, bookmaker_slug, betpawa_market_id, coalesce(line, 0)) *
    FROM input
    ORDER BY event_id, bookmaker_slug, betpawa_market_id, coalesce(line, 0), scraped_at DESC, ord DESC
),
old AS (
    SELECT c.event_id, c.bookmaker_slug, c.betpawa_market_id, coalesce(c.line, 0) AS line0,
           {norm_old} AS normalised, c.last_confirmed_at
    FROM market_odds_current c
    JOIN dedup d ON c.event_id = d.event_id AND c.bookmaker_slug = d.bookmaker_slug
                AND c.betpawa_market_id = d.betpawa_market_id AND coalesce(c.line, 0) = coalesce(d.line, 0)
    ORDER BY c.event_id, c.bookmaker_slug, c.betpawa_market_id, coalesce(c.line, 0)
    FOR UPDATE OF c
),
classified AS (
    SELECT d.*, o.event_id IS NOT NULL AS existed,
           coalesce(o.last_confirmed_at > d.scraped_at, false) AS stale,
           (o.event_id IS NULL OR o.normalised IS DISTINCT FROM {norm_new}) AS changed
    FROM dedup d
    LEFT JOIN old o ON o.event_id = d.event_id AND o.bookmaker_slug = d.bookmaker_slug
                   AND o.betpawa_market_id = d.betpawa_market_id AND o.line0 = coalesce(d.line, 0)
),
upserted AS (
    INSERT INTO market_odds_current AS c
        (event_id, bookmaker_slug, betpawa_market_id, betpawa_market_name, line, handicap_type,
         handicap_home, handicap_away, outcomes, market_groups, unavailable_at, last_updated_at,
         last_confirmed_at)
    SELECT event_id, bookmaker_slug, betpawa_market_id, betpawa_market_name, line, handicap_type,
           handicap_home, handicap_away, outcomes, market_groups, unavailable_at,
           -- '-infinity' marks an unchanged market; it is never stored (such a market exists,
           -- is locked above, and so always takes the DO UPDATE branch).
           CASE WHEN changed THEN scraped_at ELSE '-infinity'::timestamptz END,
           scraped_at
    FROM classified
    WHERE NOT stale
    ORDER BY event_id, bookmaker_slug, betpawa_market_id, coalesce(line, 0)
    ON CONFLICT (event_id, bookmaker_slug, betpawa_market_id, (coalesce(line, 0::double precision)))
    DO UPDATE SET
        betpawa_market_name = EXCLUDED.betpawa_market_name,
        line = EXCLUDED.line,
        handicap_type = EXCLUDED.handicap_type,
        handicap_home = EXCLUDED.handicap_home,
        handicap_away = EXCLUDED.handicap_away,
        outcomes = CASE WHEN EXCLUDED.last_updated_at = '-infinity' THEN c.outcomes ELSE EXCLUDED.outcomes END,
        market_groups = EXCLUDED.market_groups,
        unavailable_at = EXCLUDED.unavailable_at,
        last_updated_at = CASE WHEN EXCLUDED.last_updated_at = '-infinity' THEN c.last_updated_at
                               ELSE EXCLUDED.last_updated_at END,
        last_confirmed_at = greatest(c.last_confirmed_at, EXCLUDED.last_confirmed_at)
    RETURNING (c.xmax = 0) AS inserted
),
history AS (
    INSERT INTO market_odds_history (event_id, bookmaker_slug, betpawa_market_id, line, outcomes, captured_at)
    SELECT event_id, bookmaker_slug, betpawa_market_id, line, outcomes, scraped_at
    FROM classified
    WHERE changed AND NOT stale
    RETURNING 1
)
SELECT (SELECT count(*) FROM upserted WHERE inserted),
       (SELECT count(*) FROM classified WHERE changed AND NOT stale),
       (SELECT count(*) FROM classified WHERE NOT changed AND NOT stale),
       (SELECT count(*) FROM history),
       (SELECT count(*) FROM input) - (SELECT count(*) FROM dedup),
       (SELECT count(*) FROM classified WHERE stale)"
    )
}

/// The parameters of [`write_batch`], as a relation (`$1` .. `$12`, the columns of
/// [`MarketOdds`] in order, then `ord`, the position in the batch).
pub const INPUT: &str = "SELECT * FROM unnest($1::int4[], $2::text[], $3::text[], $4::text[], $5::float8[], \
     $6::text[], $7::float8[], $8::float8[], $9::jsonb[], $10::jsonb[], $11::timestamptz[], $12::timestamptz[]) \
     WITH ORDINALITY AS t(event_id, bookmaker_slug, betpawa_market_id, betpawa_market_name, line, handicap_type, \
     handicap_home, handicap_away, outcomes, market_groups, unavailable_at, scraped_at, ord)";

/// Writes a scrape batch in one statement, one round trip. Works on a client or inside the
/// caller's transaction (anything that is a [`GenericClient`]).
///
/// Returns an error, and writes nothing, when a row is invalid ([`WriteError::InvalidInput`],
/// before anything is sent), when the history table has no partition for a scrape instant
/// ([`WriteError::MissingPartition`]), or on any other database error ([`WriteError::Db`],
/// SQLSTATE via [`WriteError::code`]). Inside a caller's transaction, a database error aborts
/// that transaction, as any failed statement does.
pub async fn write_batch(client: &impl GenericClient, rows: &[MarketOdds]) -> Result<WriteSummary, WriteError> {
    if rows.is_empty() {
        return Ok(WriteSummary::default());
    }
    for (index, r) in rows.iter().enumerate() {
        validate(r).map_err(|message| WriteError::InvalidInput { index, message })?;
    }
    let event_id: Vec<i32> = rows.iter().map(|r| r.event_id).collect();
    let bookmaker: Vec<&str> = rows.iter().map(|r| r.bookmaker_slug.as_str()).collect();
    let market: Vec<&str> = rows.iter().map(|r| r.betpawa_market_id.as_str()).collect();
    let name: Vec<&str> = rows.iter().map(|r| r.betpawa_market_name.as_str()).collect();
    let line: Vec<Option<f64>> = rows.iter().map(|r| r.line).collect();
    let handicap_type: Vec<Option<&str>> = rows.iter().map(|r| r.handicap_type.as_deref()).collect();
    let handicap_home: Vec<Option<f64>> = rows.iter().map(|r| r.handicap_home).collect();
    let handicap_away: Vec<Option<f64>> = rows.iter().map(|r| r.handicap_away).collect();
    let outcomes: Vec<&serde_json::Value> = rows.iter().map(|r| &r.outcomes).collect();
    let groups: Vec<Option<&serde_json::Value>> = rows.iter().map(|r| r.market_groups.as_ref()).collect();
    let unavailable: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.unavailable_at).collect();
    let scraped: Vec<DateTime<Utc>> = rows.iter().map(|r| r.scraped_at).collect();
    let params: [(&(dyn ToSql + Sync), Type); 12] = [
        (&event_id, Type::INT4_ARRAY),
        (&bookmaker, Type::TEXT_ARRAY),
        (&market, Type::TEXT_ARRAY),
        (&name, Type::TEXT_ARRAY),
        (&line, Type::FLOAT8_ARRAY),
        (&handicap_type, Type::TEXT_ARRAY),
        (&handicap_home, Type::FLOAT8_ARRAY),
        (&handicap_away, Type::FLOAT8_ARRAY),
        (&outcomes, Type::JSONB_ARRAY),
        (&groups, Type::JSONB_ARRAY),
        (&unavailable, Type::TIMESTAMPTZ_ARRAY),
        (&scraped, Type::TIMESTAMPTZ_ARRAY),
    ];
    let sql = upsert_sql(INPUT);
    let row = client.query_typed_one(&sql, &params).await.map_err(classify)?;
    let n = |i: usize| row.get::<_, i64>(i) as u64;
    let changed_or_new = n(1);
    let inserted = n(0);
    Ok(WriteSummary {
        inserted,
        changed: changed_or_new.saturating_sub(inserted),
        unchanged: n(2),
        history_rows: n(3),
        duplicates: n(4),
        stale: n(5),
    })
}

/// Sets `unavailable_at = at` on the markets of `keys` that are available, in one statement
/// (key order, like [`write_batch`]). Returns how many were marked. A market already marked
/// keeps the instant it was first seen gone.
pub async fn mark_unavailable(
    client: &impl GenericClient,
    keys: &[MarketKey],
    at: DateTime<Utc>,
) -> Result<u64, WriteError> {
    if keys.is_empty() {
        return Ok(0);
    }
    let event_id: Vec<i32> = keys.iter().map(|k| k.event_id).collect();
    let bookmaker: Vec<&str> = keys.iter().map(|k| k.bookmaker_slug.as_str()).collect();
    let market: Vec<&str> = keys.iter().map(|k| k.betpawa_market_id.as_str()).collect();
    let line: Vec<Option<f64>> = keys.iter().map(|k| k.line).collect();
    let params: [(&(dyn ToSql + Sync), Type); 5] = [
        (&event_id, Type::INT4_ARRAY),
        (&bookmaker, Type::TEXT_ARRAY),
        (&market, Type::TEXT_ARRAY),
        (&line, Type::FLOAT8_ARRAY),
        (&at, Type::TIMESTAMPTZ),
    ];
    let row = client
        .query_typed_one(
            "WITH k AS (SELECT DISTINCT * FROM unnest($1::int4[], $2::text[], $3::text[], $4::float8[]) \
                        AS t(event_id, bookmaker_slug, betpawa_market_id, line)),
                  target AS (
                    SELECT c.id FROM market_odds_current c
                    JOIN k ON c.event_id = k.event_id AND c.bookmaker_slug = k.bookmaker_slug
                          AND c.betpawa_market_id = k.betpawa_market_id AND coalesce(c.line, 0) = coalesce(k.line, 0)
                    WHERE c.unavailable_at IS NULL
                    ORDER BY c.event_id, c.bookmaker_slug, c.betpawa_market_id, coalesce(c.line, 0)
                    FOR UPDATE OF c),
                  marked AS (UPDATE market_odds_current c SET unavailable_at = $5
                             FROM target WHERE c.id = target.id RETURNING 1)
             SELECT count(*) FROM marked",
            &params,
        )
        .await
        .map_err(classify)?;
    Ok(row.get::<_, i64>(0) as u64)
}

fn validate(r: &MarketOdds) -> Result<(), String> {
    let chars = |s: &str| s.chars().count();
    if chars(&r.bookmaker_slug) > 20 {
        return Err(format!("bookmaker_slug {:?} is longer than 20 characters", r.bookmaker_slug));
    }
    if chars(&r.betpawa_market_id) > 50 {
        return Err(format!("betpawa_market_id {:?} is longer than 50 characters", r.betpawa_market_id));
    }
    if chars(&r.betpawa_market_name) > 255 {
        return Err("betpawa_market_name is longer than 255 characters".into());
    }
    if r.handicap_type.as_deref().is_some_and(|h| chars(h) > 50) {
        return Err("handicap_type is longer than 50 characters".into());
    }
    if !r.outcomes.is_array() {
        return Err("outcomes must be a JSON array of {name, odds, is_active}".into());
    }
    if r.line.is_some_and(|l| !l.is_finite()) {
        return Err("line must be a finite number".into());
    }
    Ok(())
}

fn classify(e: tokio_postgres::Error) -> WriteError {
    let missing = e.as_db_error().filter(|d| {
        *d.code() == SqlState::CHECK_VIOLATION && d.message().starts_with("no partition of relation")
    });
    if let Some(d) = missing {
        let table = d.table().map(str::to_string).unwrap_or_else(|| "market_odds_history".into());
        // "Partition key of the failing row contains (captured_at) = (2027-05-01 00:00:00+00)."
        let instant = d
            .detail()
            .and_then(|detail| detail.rsplit_once("= (").map(|(_, v)| v.trim_end_matches(['.', ')']).to_string()))
            .unwrap_or_else(|| "an instant of the batch".into());
        return WriteError::MissingPartition { table, instant, source: e };
    }
    WriteError::Db(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> MarketOdds {
        MarketOdds {
            event_id: 1,
            bookmaker_slug: "betpawa".into(),
            betpawa_market_id: "1x2".into(),
            betpawa_market_name: "1X2".into(),
            line: None,
            handicap_type: None,
            handicap_home: None,
            handicap_away: None,
            outcomes: serde_json::json!([]),
            market_groups: None,
            unavailable_at: None,
            scraped_at: Utc::now(),
        }
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(validate(&row()).is_ok());
        let mut r = row();
        r.bookmaker_slug = "x".repeat(21);
        assert!(validate(&r).unwrap_err().contains("bookmaker_slug"));
        let mut r = row();
        r.outcomes = serde_json::json!({"1": 1.5});
        assert!(validate(&r).unwrap_err().contains("JSON array"));
        let mut r = row();
        r.line = Some(f64::NAN);
        assert!(validate(&r).is_err());
    }

    #[test]
    fn the_statement_targets_the_unique_index() {
        let sql = upsert_sql(INPUT);
        assert!(sql.contains("ON CONFLICT (event_id, bookmaker_slug, betpawa_market_id, (coalesce(line, 0::double precision)))"));
        assert!(sql.contains("FOR UPDATE OF c"));
    }
}
