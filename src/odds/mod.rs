//! The odds write path: one round trip per scrape batch, at the database's speed.
//!
//! Application writers call [`write_batch`] with a scrape's markets, or keep an
//! [`OddsWriter`] (`writer.rs`), which writes the same but updates the markets it wrote before
//! by their row version (`partwarden.write_odds_known`, migration `0009_write_odds_known`),
//! sends only the JSON of those that changed since, inserts the markets it never wrote with a
//! plain `INSERT` (`partwarden.write_odds_new`, migration `0010_write_odds_new`, which upserts
//! them instead when one exists), and pipelines a cycle's batches.
//! [`write_batch`] keeps the latest scrape of each key when a batch repeats one (the later row
//! of the batch when the instants tie), sorts the batch by key, and sends one statement with
//! typed parameters (no SQL is built from values): a call of `partwarden.write_odds_packed`
//! (migration `0008_write_odds_packed`: the upsert of `0003_write_odds` with the change
//! detection of `0005_change_detection`, the batch's JSON as one value). On the server, in one
//! pass over the batch in key order (so concurrent writers with overlapping keys take their row
//! locks in one global order and never deadlock):
//!
//! 1. `market_odds_current` is upserted on its conflict target, the unique index
//!    `(event_id, bookmaker_slug, betpawa_market_id, COALESCE(line, 0))`: new markets are
//!    inserted;
//! 2. an existing market's outcomes are compared with the new ones as the application does: the
//!    same selections with the same odds and `is_active`, in any order. Changed markets get the
//!    new outcomes and `last_updated_at` = the scrape instant; unchanged ones only get
//!    `last_confirmed_at` bumped;
//! 3. every new or changed market gets a `market_odds_history` row (`captured_at` = the scrape
//!    instant); unchanged ones get none: the change-only history.
//!
//! A NULL line and line 0 are the same market (that is what `COALESCE(line, 0)` in the unique
//! index means): writing line 0 updates the market stored with a NULL line, and vice versa.
//!
//! A scrape not newer than what is stored for a market (`last_confirmed_at`) leaves that market
//! alone and is counted as stale, so batches applied out of order (or twice) never roll odds
//! back or duplicate history.
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
use tokio_postgres::GenericClient;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

mod wire;
mod writer;

use wire::JsonText;
use wire::{Tid, Xid};
pub use writer::{OddsWriter, WriterStats};

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
    /// Markets whose stored scrape is as new as this batch's or newer: left as they were.
    pub stale: u64,
}

impl std::ops::AddAssign for WriteSummary {
    /// Adds another batch's counts (a cycle's total).
    fn add_assign(&mut self, other: WriteSummary) {
        self.inserted += other.inserted;
        self.changed += other.changed;
        self.unchanged += other.unchanged;
        self.history_rows += other.history_rows;
        self.duplicates += other.duplicates;
        self.stale += other.stale;
    }
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
    #[error(
        "no partition of {table} for captured_at = {instant}; nothing of the batch was written (is partwarden's maintenance running? `partwarden --check` tells)"
    )]
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
    #[error("writing odds: {}", crate::dberror::error_text(.0))]
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

/// The batch as it is sent: one row per key (the latest scrape; the later row of the batch
/// when scrape instants tie), sorted by key. Returns the rows and how many duplicates were
/// dropped.
pub fn prepare(rows: &[MarketOdds]) -> (Vec<&MarketOdds>, u64) {
    use std::collections::HashMap;
    let mut latest: HashMap<(i32, &str, &str, u64), usize, FxBuild> =
        HashMap::with_capacity_and_hasher(rows.len(), FxBuild::default());
    for (i, r) in rows.iter().enumerate() {
        let key = (
            r.event_id,
            r.bookmaker_slug.as_str(),
            r.betpawa_market_id.as_str(),
            line_bits(r.line),
        );
        latest
            .entry(key)
            .and_modify(|j| {
                if rows[i].scraped_at >= rows[*j].scraped_at {
                    *j = i;
                }
            })
            .or_insert(i);
    }
    let duplicates = (rows.len() - latest.len()) as u64;
    let mut kept: Vec<&MarketOdds> = latest.into_values().map(|i| &rows[i]).collect();
    kept.sort_by(|a, b| key_cmp(market_key(a), market_key(b)));
    (kept, duplicates)
}

/// The hasher of the write path's maps: FxHash (rustc's), several times faster than SipHash on
/// short keys. Keys are a writer's own markets, so flooding is not a concern.
type FxBuild = std::hash::BuildHasherDefault<FxHasher>;

#[derive(Clone, Copy, Default)]
struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(i.into());
    }
    fn write_u32(&mut self, i: u32) {
        self.add(i.into());
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A line as the unique index sees it, as bits to hash: a NULL line is line 0, and -0.0 is 0.
fn line_bits(line: Option<f64>) -> u64 {
    let l = line.unwrap_or(0.0);
    if l == 0.0 {
        0.0f64.to_bits()
    } else {
        l.to_bits()
    }
}

fn market_key(r: &MarketOdds) -> (i32, &str, &str, Option<f64>) {
    (
        r.event_id,
        r.bookmaker_slug.as_str(),
        r.betpawa_market_id.as_str(),
        r.line,
    )
}

/// The one global order in which writers lock markets: event, bookmaker and market (bytes),
/// then the line with NULL as 0 and -0 as 0.
fn key_cmp(
    a: (i32, &str, &str, Option<f64>),
    b: (i32, &str, &str, Option<f64>),
) -> std::cmp::Ordering {
    let line0 = |l: Option<f64>| {
        let l = l.unwrap_or(0.0);
        if l == 0.0 { 0.0 } else { l }
    };
    (a.0, a.1.as_bytes(), a.2.as_bytes())
        .cmp(&(b.0, b.1.as_bytes(), b.2.as_bytes()))
        .then_with(|| line0(a.3).total_cmp(&line0(b.3)))
}

/// A prepared batch as the parameters of `partwarden.write_odds_packed` (migration
/// `0008_write_odds_packed`) or `partwarden.write_odds_known` (`0009_write_odds_known`): typed
/// arrays, one element per market, in [`MarketOdds`]'s field order, except that the batch's
/// outcomes and market_groups travel as one JSON array each (the server parses one value, not
/// one per market). For `write_odds_known`, every market also has the row version an
/// [`OddsWriter`]'s last write of it made, and one whose JSON is unchanged since travels
/// without it.
pub struct Packed<'a> {
    event_id: Vec<i32>,
    bookmaker_slug: Vec<&'a str>,
    betpawa_market_id: Vec<&'a str>,
    betpawa_market_name: Vec<&'a str>,
    line: Vec<Option<f64>>,
    handicap_type: Vec<Option<&'a str>>,
    handicap_home: Vec<Option<f64>>,
    handicap_away: Vec<Option<f64>>,
    outcomes: JsonText,
    market_groups: JsonText,
    unavailable_at: Vec<Option<DateTime<Utc>>>,
    scraped_at: Vec<DateTime<Utc>>,
    xmin: Vec<Xid>,
    ctid: Vec<Tid>,
    /// Per market, where its JSON is in `outcomes` and `market_groups` (`None` for a NULL
    /// market_groups), or `None` when it was sent without (unchanged since its version).
    spans: Vec<Option<Spans>>,
}

/// Where a market's outcomes and market_groups are in a [`Packed`]'s JSON.
#[derive(Clone, Debug)]
struct Spans {
    outcomes: std::ops::Range<usize>,
    market_groups: Option<std::ops::Range<usize>>,
}

impl<'a> Packed<'a> {
    /// The parameters of `rows` (as [`prepare`] returns them), every market with its JSON, for
    /// `partwarden.write_odds_packed` ([`WRITE_SQL`]).
    pub fn new(rows: &[&'a MarketOdds]) -> Packed<'a> {
        Packed::build(rows, |_, _| None)
    }

    /// The parameters of `rows` for `partwarden.write_odds_known` ([`KNOWN_SQL`]): every
    /// market with the row version `version(outcomes JSON, market_groups JSON)` gives (called
    /// once per market, in order), and whether that JSON is the version's (the market then
    /// travels without it).
    fn known(
        rows: &[&'a MarketOdds],
        mut version: impl FnMut(&[u8], Option<&[u8]>) -> (Xid, Tid, bool),
    ) -> Packed<'a> {
        Packed::build(rows, |o, g| Some(version(o, g)))
    }

    /// `version` gives a market's row version and whether its JSON is unchanged since, or
    /// `None` (for every market: write_odds_packed's parameters).
    fn build(
        rows: &[&'a MarketOdds],
        mut version: impl FnMut(&[u8], Option<&[u8]>) -> Option<(Xid, Tid, bool)>,
    ) -> Packed<'a> {
        let mut outcomes = Vec::with_capacity(rows.len() * 128);
        let mut groups = Vec::with_capacity(rows.len() * 16);
        let mut xmin = Vec::new();
        let mut ctid = Vec::new();
        let mut spans = Vec::with_capacity(rows.len());
        outcomes.push(b'[');
        groups.push(b'[');
        for (i, r) in rows.iter().enumerate() {
            if i > 0 {
                outcomes.push(b',');
                groups.push(b',');
            }
            let (o_at, g_at) = (outcomes.len(), groups.len());
            serde_json::to_writer(&mut outcomes, &r.outcomes).expect("a JSON value serializes");
            let o = o_at..outcomes.len();
            // [groups] for a value, [] for NULL: the server takes element 0.
            groups.push(b'[');
            let g = r.market_groups.as_ref().map(|v| {
                let at = groups.len();
                serde_json::to_writer(&mut groups, v).expect("a JSON value serializes");
                at..groups.len()
            });
            groups.push(b']');
            let Some((x, t, unchanged)) =
                version(&outcomes[o.clone()], g.clone().map(|g| &groups[g]))
            else {
                spans.push(Some(Spans {
                    outcomes: o,
                    market_groups: g,
                }));
                continue;
            };
            xmin.push(x);
            ctid.push(t);
            if unchanged {
                // 0: "unchanged since its version".
                outcomes.truncate(o_at);
                groups.truncate(g_at);
                outcomes.push(b'0');
                groups.push(b'0');
                spans.push(None);
            } else {
                spans.push(Some(Spans {
                    outcomes: o,
                    market_groups: g,
                }));
            }
        }
        outcomes.push(b']');
        groups.push(b']');
        Packed {
            event_id: rows.iter().map(|r| r.event_id).collect(),
            bookmaker_slug: rows.iter().map(|r| r.bookmaker_slug.as_str()).collect(),
            betpawa_market_id: rows.iter().map(|r| r.betpawa_market_id.as_str()).collect(),
            betpawa_market_name: rows
                .iter()
                .map(|r| r.betpawa_market_name.as_str())
                .collect(),
            line: rows.iter().map(|r| r.line).collect(),
            handicap_type: rows.iter().map(|r| r.handicap_type.as_deref()).collect(),
            handicap_home: rows.iter().map(|r| r.handicap_home).collect(),
            handicap_away: rows.iter().map(|r| r.handicap_away).collect(),
            outcomes: JsonText(outcomes),
            market_groups: JsonText(groups),
            unavailable_at: rows.iter().map(|r| r.unavailable_at).collect(),
            scraped_at: rows.iter().map(|r| r.scraped_at).collect(),
            xmin,
            ctid,
            spans,
        }
    }

    /// How many markets it has.
    pub fn len(&self) -> usize {
        self.event_id.len()
    }

    /// Whether it has no market.
    pub fn is_empty(&self) -> bool {
        self.event_id.is_empty()
    }

    /// How many markets travel without their JSON (unchanged since their row version).
    pub fn sent_as_versions(&self) -> usize {
        self.spans.iter().filter(|s| s.is_none()).count()
    }

    /// The fourteen parameters with their types, `$1` .. `$14`.
    pub fn params(&self) -> [(&(dyn ToSql + Sync), Type); 14] {
        [
            (&self.event_id, Type::INT4_ARRAY),
            (&self.bookmaker_slug, Type::TEXT_ARRAY),
            (&self.betpawa_market_id, Type::TEXT_ARRAY),
            (&self.betpawa_market_name, Type::TEXT_ARRAY),
            (&self.line, Type::FLOAT8_ARRAY),
            (&self.handicap_type, Type::TEXT_ARRAY),
            (&self.handicap_home, Type::FLOAT8_ARRAY),
            (&self.handicap_away, Type::FLOAT8_ARRAY),
            (&self.outcomes, Type::JSONB),
            (&self.market_groups, Type::JSONB),
            (&self.unavailable_at, Type::TIMESTAMPTZ_ARRAY),
            (&self.scraped_at, Type::TIMESTAMPTZ_ARRAY),
            (&self.xmin, Type::XID_ARRAY),
            (&self.ctid, Type::TID_ARRAY),
        ]
    }

    /// Market `i`'s outcomes and market_groups JSON, when it was sent with them.
    fn json_of(&self, i: usize) -> Option<(&[u8], Option<&[u8]>)> {
        self.spans[i].as_ref().map(|s| {
            (
                &self.outcomes.0[s.outcomes.clone()],
                s.market_groups.clone().map(|g| &self.market_groups.0[g]),
            )
        })
    }
}

/// The statement [`write_batch`] sends, and [`OddsWriter`] for the markets of a statement that
/// missed (a row no longer the version it wrote): the function of
/// `schema/0008_write_odds_packed.sql`.
pub const WRITE_SQL: &str = "SELECT * FROM partwarden.write_odds_packed($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

/// The statement [`OddsWriter`] sends for the markets it wrote before, by their row version:
/// the function of `schema/0009_write_odds_known.sql`.
pub const KNOWN_SQL: &str = "SELECT * FROM partwarden.write_odds_known($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

/// The statement [`OddsWriter`] sends for the markets it has no row version of: a plain
/// `INSERT`, or `write_odds_packed`'s upsert when one of them exists (the function of
/// `schema/0010_write_odds_new.sql`).
pub const NEW_SQL: &str = "SELECT * FROM partwarden.write_odds_new($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

/// What the server answered to one [`Packed`] batch.
struct Answer {
    summary: WriteSummary,
    /// A market sent as a row version was not that version any more: nothing was written.
    cache_miss: bool,
    /// Each market's row version now, in the batch's order, when every market was written.
    versions: Option<(Vec<Xid>, Vec<Tid>)>,
}

/// Sends one batch. `versions`: whether to decode the row versions of the answer (only a
/// writer that remembers them needs them).
async fn send(
    client: &impl GenericClient,
    sql: &str,
    packed: &Packed<'_>,
    versions: bool,
) -> Result<Answer, WriteError> {
    let row = client
        .query_typed_one(sql, &packed.params())
        .await
        .map_err(classify)?;
    let n = |i: usize| row.get::<_, i64>(i) as u64;
    let versions = if versions {
        let xmin: Option<Vec<Xid>> = row.get(6);
        let ctid: Option<Vec<Tid>> = row.get(7);
        xmin.zip(ctid)
    } else {
        None
    };
    Ok(Answer {
        summary: WriteSummary {
            inserted: n(0),
            changed: n(1),
            unchanged: n(2),
            history_rows: n(3),
            duplicates: 0,
            stale: n(4),
        },
        cache_miss: row.get(5),
        versions,
    })
}

/// Writes a scrape batch in one statement, one round trip. Works on a client or inside the
/// caller's transaction (anything that is a [`GenericClient`]). Every market's JSON is sent;
/// [`OddsWriter`] sends only what changed since its last write.
///
/// Returns an error, and writes nothing, when a row is invalid ([`WriteError::InvalidInput`],
/// before anything is sent), when the history table has no partition for a scrape instant
/// ([`WriteError::MissingPartition`]), or on any other database error ([`WriteError::Db`],
/// SQLSTATE via [`WriteError::code`]). Inside a caller's transaction, a database error aborts
/// that transaction, as any failed statement does.
pub async fn write_batch(
    client: &impl GenericClient,
    rows: &[MarketOdds],
) -> Result<WriteSummary, WriteError> {
    if rows.is_empty() {
        return Ok(WriteSummary::default());
    }
    validate_all(rows)?;
    let (rows, duplicates) = prepare(rows);
    let answer = send(client, WRITE_SQL, &Packed::new(&rows), false).await?;
    Ok(WriteSummary {
        duplicates,
        ..answer.summary
    })
}

fn validate_all(rows: &[MarketOdds]) -> Result<(), WriteError> {
    for (index, r) in rows.iter().enumerate() {
        validate(r).map_err(|message| WriteError::InvalidInput { index, message })?;
    }
    Ok(())
}

/// Sets `unavailable_at = at` on the markets of `keys` that are available, in one statement
/// (the function `partwarden.mark_unavailable`, in the same key order as [`write_batch`], so the
/// two never deadlock). Returns how many were marked. A market already marked
/// keeps the instant it was first seen gone.
pub async fn mark_unavailable(
    client: &impl GenericClient,
    keys: &[MarketKey],
    at: DateTime<Utc>,
) -> Result<u64, WriteError> {
    if keys.is_empty() {
        return Ok(0);
    }
    // One entry per key, in the same global order as write_batch.
    let mut sorted: Vec<(i32, &str, &str, Option<f64>)> = keys
        .iter()
        .map(|k| {
            (
                k.event_id,
                k.bookmaker_slug.as_str(),
                k.betpawa_market_id.as_str(),
                k.line,
            )
        })
        .collect();
    sorted.sort_by(|a, b| key_cmp((a.0, a.1, a.2, a.3), (b.0, b.1, b.2, b.3)));
    sorted.dedup_by(|a, b| key_cmp((a.0, a.1, a.2, a.3), (b.0, b.1, b.2, b.3)).is_eq());
    let event_id: Vec<i32> = sorted.iter().map(|k| k.0).collect();
    let bookmaker: Vec<&str> = sorted.iter().map(|k| k.1).collect();
    let market: Vec<&str> = sorted.iter().map(|k| k.2).collect();
    let line: Vec<Option<f64>> = sorted.iter().map(|k| k.3).collect();
    let params: [(&(dyn ToSql + Sync), Type); 5] = [
        (&event_id, Type::INT4_ARRAY),
        (&bookmaker, Type::TEXT_ARRAY),
        (&market, Type::TEXT_ARRAY),
        (&line, Type::FLOAT8_ARRAY),
        (&at, Type::TIMESTAMPTZ),
    ];
    let row = client
        .query_typed_one(
            "SELECT partwarden.mark_unavailable($1, $2, $3, $4, $5)",
            &params,
        )
        .await
        .map_err(classify)?;
    Ok(row.get::<_, i64>(0) as u64)
}

fn validate(r: &MarketOdds) -> Result<(), String> {
    // A string has at most as many characters as bytes: count them only when it matters.
    let chars = |s: &str| {
        if s.len() <= 20 {
            s.len()
        } else {
            s.chars().count()
        }
    };
    if chars(&r.bookmaker_slug) > 20 {
        return Err(format!(
            "bookmaker_slug {:?} is longer than 20 characters",
            r.bookmaker_slug
        ));
    }
    if chars(&r.betpawa_market_id) > 50 {
        return Err(format!(
            "betpawa_market_id {:?} is longer than 50 characters",
            r.betpawa_market_id
        ));
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
        *d.code() == SqlState::CHECK_VIOLATION
            && d.message().starts_with("no partition of relation")
    });
    if let Some(d) = missing {
        let table = d
            .table()
            .map(str::to_string)
            .unwrap_or_else(|| "market_odds_history".into());
        // "Partition key of the failing row contains (captured_at) = (2027-05-01 00:00:00+00)."
        let instant = d
            .detail()
            .and_then(|detail| {
                detail
                    .rsplit_once("= (")
                    .map(|(_, v)| v.trim_end_matches(['.', ')']).to_string())
            })
            .unwrap_or_else(|| "an instant of the batch".into());
        return WriteError::MissingPartition {
            table,
            instant,
            source: e,
        };
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
    fn duplicates_keep_the_latest_scrape_and_keys_are_sorted() {
        let t = Utc::now();
        let mut a = row();
        a.event_id = 2;
        let mut b = row();
        b.line = Some(0.0);
        b.scraped_at = t - chrono::Duration::seconds(1);
        let mut c = row();
        c.scraped_at = t;
        c.betpawa_market_name = "latest".into();
        let mut d = row();
        d.line = Some(-0.0);
        d.scraped_at = t;
        d.betpawa_market_name = "latest and last".into();
        let rows = [a, b, c, d];
        let (kept, dups) = prepare(&rows);
        assert_eq!(dups, 2);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].event_id, 1);
        assert_eq!(
            kept[0].betpawa_market_name, "latest and last",
            "a tie goes to the later row"
        );
        assert_eq!(kept[1].event_id, 2);
    }
}
