//! [`OddsWriter`]: the write path of a scraper that writes the same markets cycle after cycle.
//!
//! Most markets of a scrape cycle did not change since the last one (80% in the benchmark),
//! yet [`write_batch`](super::write_batch) sends every market's JSON, the server parses all of
//! it, and every market goes through `INSERT ... ON CONFLICT`: a probe of the unique index and
//! a row lock before the update. A writer remembers, per market, the JSON it last wrote and
//! the row version (`xmin`, `ctid`) its write made. The markets of a batch it knows go to
//! `partwarden.write_odds_known` (`schema/0009_write_odds_known.sql`), which fetches each row
//! by its ctid and updates it only if it is still that version of that market, which proves
//! the stored JSON is the one remembered (see `schema/0008_write_odds_packed.sql` for why); a
//! market whose JSON is byte for byte the remembered one travels without it. If any market of
//! that statement is not its version any more, nothing of it is written and the writer sends
//! those markets again through `write_odds_packed` with their JSON: a miss costs a second
//! statement, never a wrong row. The markets it does not know go to `partwarden.write_odds_new`
//! (`schema/0010_write_odds_new.sql`): most are new, and a plain `INSERT` spares the upsert's
//! conflict probe and speculative insertion; when one exists after all (written by someone
//! else, or before the writer started), the server rolls the insert back and upserts the same
//! parameters instead, with no resend.
//!
//! What is written is exactly what [`write_batch`](super::write_batch) writes: the same rows,
//! the same change detection, history and counts. Each statement takes its row locks in key
//! order.

use std::collections::{HashMap, VecDeque};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use chrono::{DateTime, Duration, Utc};
use tokio_postgres::GenericClient;

use super::{
    Answer, FxBuild, KNOWN_SQL, MarketKey, MarketOdds, NEW_SQL, Packed, Tid, WRITE_SQL, WriteError,
    WriteSummary, Xid, line_bits, prepare, send, validate_all,
};

/// Whether `e` is the entry of `r`'s market (event and line being those of its slot).
fn same_market(e: &Entry, r: &MarketOdds) -> bool {
    *e.bookmaker_slug == *r.bookmaker_slug && *e.betpawa_market_id == *r.betpawa_market_id
}

/// The markets a writer remembers by default (about 250 bytes each with their JSON).
const DEFAULT_CAPACITY: usize = 1_000_000;

/// How long a remembered version is used: longer than any scrape interval, far shorter than
/// the 2^31 transactions after which an xid can repeat.
const DEFAULT_MAX_AGE: Duration = Duration::hours(1);

/// Which function a statement calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `write_odds_known`: markets this writer wrote, by their row version.
    Known,
    /// `write_odds_new`: markets it has no version of, with their JSON.
    New,
    /// `write_odds_packed`: the markets of a statement that missed, with their JSON.
    Resend,
}

impl Kind {
    fn sql(self) -> &'static str {
        match self {
            Kind::Known => KNOWN_SQL,
            Kind::New => NEW_SQL,
            Kind::Resend => WRITE_SQL,
        }
    }
}

/// One statement of a cycle: its markets (in key order), the function it calls and its
/// parameters.
struct Statement<'a> {
    rows: Vec<&'a MarketOdds>,
    kind: Kind,
    packed: Packed<'a>,
}

impl<'a> Statement<'a> {
    /// `rows`, every market with its JSON, through `write_odds_new` ([`Kind::New`]) or
    /// `write_odds_packed` ([`Kind::Resend`]): neither can miss.
    fn in_full(rows: Vec<&'a MarketOdds>, kind: Kind) -> Statement<'a> {
        let packed = Packed::new(&rows);
        Statement { rows, kind, packed }
    }
}

/// A statement sent, or about to be, and its answer to come.
type InFlight<'a> =
    Pin<Box<dyn Future<Output = (Statement<'a>, Result<Answer, WriteError>)> + Send + 'a>>;

/// Sends a statement: the request goes out on the first poll, which this does; the answer is
/// awaited later, in order.
async fn start<'a, C: GenericClient + Sync>(
    client: &'a C,
    statement: Statement<'a>,
) -> InFlight<'a> {
    let mut sent: InFlight<'a> = Box::pin(async move {
        let answer = send(client, statement.kind.sql(), &statement.packed, true).await;
        (statement, answer)
    });
    match poll_fn(|cx| Poll::Ready(sent.as_mut().poll(cx))).await {
        Poll::Ready(done) => Box::pin(std::future::ready(done)),
        Poll::Pending => sent,
    }
}

/// A cycle's counts so far, and its first error.
struct Progress {
    total: WriteSummary,
    error: Option<WriteError>,
}

/// What this writer last wrote of a market, and the row version that write made.
#[derive(Debug)]
struct Entry {
    bookmaker_slug: Box<str>,
    betpawa_market_id: Box<str>,
    outcomes: Box<[u8]>,
    market_groups: Option<Box<[u8]>>,
    xmin: Xid,
    ctid: Tid,
    scraped_at: DateTime<Utc>,
}

/// What a writer sent since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Statements answered: one or two per batch (the markets the writer knows, the others),
    /// and one more for each that missed.
    pub batches: u64,
    /// Markets sent with their JSON.
    pub sent_with_json: u64,
    /// Markets sent as the row version this writer made, without their JSON (unchanged).
    pub sent_as_versions: u64,
    /// Statements of known markets sent a second time, with every market's JSON through
    /// `write_odds_packed`, because a market was not the version sent any more.
    pub resent: u64,
    /// Statements of markets this writer had no version of that found one of them in the
    /// table already (written by someone else, or before this writer was made): the server
    /// upserted them instead of inserting them, with no resend.
    pub new_existed: u64,
}

/// A writer of scrape batches that writes the markets it wrote before by their row version and
/// sends only the JSON of those that changed since. Keep one per connection (or per scraper)
/// for the life of the process:
///
/// ```no_run
/// # async fn demo(client: &tokio_postgres::Client, cycles: Vec<Vec<partwarden::odds::MarketOdds>>)
/// # -> Result<(), partwarden::odds::WriteError> {
/// let mut writer = partwarden::odds::OddsWriter::new();
/// for cycle in cycles {
///     // Batches of 5,000, pipelined; or writer.write(client, batch) one batch at a time.
///     let summary = writer.write_cycle(client, &cycle, 5_000).await?;
/// }
/// # Ok(()) }
/// ```
///
/// It remembers up to `capacity` markets (default 1,000,000; the least recently scraped are
/// forgotten first) for an hour each. Writes by anyone else, including
/// [`mark_unavailable`](super::mark_unavailable) and the application's own `UPDATE`s, are
/// safe: the markets they touched miss once and are sent in full. Mark markets unavailable
/// through [`OddsWriter::mark_unavailable`] to spare that miss.
///
/// A batch is one statement for the markets it remembers and one for the others. On a client
/// (autocommit) each statement is a transaction of its own that locks its rows in key order,
/// so concurrent writers never deadlock. Inside a transaction of the caller's:
/// - a batch with both kinds locks its rows in two passes in key order, so two such
///   transactions writing the same markets at the same time can deadlock (PostgreSQL then
///   cancels one after `deadlock_timeout`, an error [`WriteError::is_transient`] says may be
///   retried);
/// - each statement runs in a subtransaction (a miss, or the insert of a market that exists
///   after all, is rolled back to it): keep such a transaction under 64 statements (32
///   batches), beyond which PostgreSQL's per-backend subtransaction cache overflows and every
///   snapshot in the cluster gets slower while the transaction is open.
#[derive(Debug)]
pub struct OddsWriter {
    /// By event and line (as the unique index sees it), the few markets of each: looked up
    /// without allocating a key.
    known: HashMap<(i32, u64), Vec<Entry>, FxBuild>,
    len: usize,
    capacity: usize,
    max_age: Duration,
    stats: WriterStats,
}

impl Default for OddsWriter {
    fn default() -> Self {
        OddsWriter::new()
    }
}

impl OddsWriter {
    /// A writer that remembers nothing yet.
    pub fn new() -> OddsWriter {
        OddsWriter::with_capacity(DEFAULT_CAPACITY)
    }

    /// A writer that remembers at most `markets` markets.
    pub fn with_capacity(markets: usize) -> OddsWriter {
        OddsWriter {
            known: HashMap::default(),
            len: 0,
            capacity: markets,
            max_age: DEFAULT_MAX_AGE,
            stats: WriterStats::default(),
        }
    }

    /// How many markets it remembers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it remembers no market.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What it sent so far.
    pub fn stats(&self) -> WriterStats {
        self.stats
    }

    /// Forgets every market: the next batches are sent in full.
    pub fn forget(&mut self) {
        self.known.clear();
        self.len = 0;
    }

    /// Writes a scrape batch: what [`write_batch`](super::write_batch) writes, with the same
    /// errors, sending the JSON only of markets that are new or changed since this writer's
    /// last write of them. The batch is one statement for the markets this writer knows and
    /// one for the others, each atomic on its own: on an error in the second, what the first
    /// wrote stays, and writing the batch again is safe (those markets are then stale). The
    /// writer forgets the markets of a statement that failed.
    pub async fn write<C: GenericClient + Sync>(
        &mut self,
        client: &C,
        rows: &[MarketOdds],
    ) -> Result<WriteSummary, WriteError> {
        self.write_cycle(client, rows, rows.len()).await
    }

    /// Writes a whole scrape cycle as batches of `batch_size` markets, pipelined: while the
    /// server runs one batch, the next is prepared and queued behind it on the connection, so
    /// the client's work (sorting, serializing, comparing with what it wrote) costs no time of
    /// the server's: the server starts the next statement as soon as it answers one, and this
    /// task prepares the one after while it runs.
    ///
    /// The cycle is deduplicated and sorted as one batch, then cut into batches in key order:
    /// a market is in one batch only. Each batch is one or two statements (see
    /// [`OddsWriter::write`]), each atomic on its own. On an error the statements before it
    /// (and the one queued behind it) are written, no later one is sent, and the first error
    /// is returned; writing the same cycle again is safe (what was written is left alone as
    /// stale, the rest is written).
    pub async fn write_cycle<C: GenericClient + Sync>(
        &mut self,
        client: &C,
        rows: &[MarketOdds],
        batch_size: usize,
    ) -> Result<WriteSummary, WriteError> {
        if rows.is_empty() {
            return Ok(WriteSummary::default());
        }
        validate_all(rows)?;
        let (rows, duplicates) = prepare(rows);
        let chunks: Vec<&[&MarketOdds]> = rows.chunks(batch_size.max(1)).collect();
        let mut progress = Progress {
            total: WriteSummary {
                duplicates,
                ..WriteSummary::default()
            },
            error: None,
        };
        // Statements sent and not yet answered, oldest first. Their answers come back in this
        // order, and only the oldest is ever awaited: awaiting a later one would leave the
        // earlier one's answer unread, and tokio-postgres stops reading the connection when
        // the answer of a statement nobody polls fills its channel.
        let mut in_flight: VecDeque<InFlight<'_>> = VecDeque::new();
        // The next batch's statements (the markets this writer knows, then the others),
        // waiting for their turn.
        let mut ready: VecDeque<Statement<'_>> = VecDeque::new();
        let mut next = 0;
        loop {
            // One statement running, one queued: enough to keep the server busy.
            while in_flight.len() < 2 && progress.error.is_none() {
                if ready.is_empty() && next < chunks.len() {
                    let (known, unknown) = self.statements(chunks[next]);
                    next += 1;
                    ready.extend(known.into_iter().chain(unknown));
                }
                let Some(statement) = ready.pop_front() else {
                    break;
                };
                in_flight.push_back(start(client, statement).await);
            }
            let Some(sent) = in_flight.pop_front() else {
                break;
            };
            let (statement, answer) = sent.await;
            if let Some(rows) = self.settle(statement, answer, &mut progress) {
                // A market was not the version sent: its markets again, with every market's
                // JSON (which cannot miss), behind the statements already sent.
                in_flight.push_back(start(client, Statement::in_full(rows, Kind::Resend)).await);
            }
        }
        match progress.error {
            Some(e) => Err(e),
            None => Ok(progress.total),
        }
    }

    /// Takes a statement's answer: counts and remembers it, or keeps the first error. Returns
    /// the statement's markets when it missed and they must be sent again in full.
    fn settle<'a>(
        &mut self,
        statement: Statement<'a>,
        answer: Result<Answer, WriteError>,
        progress: &mut Progress,
    ) -> Option<Vec<&'a MarketOdds>> {
        self.stats.batches += 1;
        match answer {
            Ok(a) if a.cache_miss => {
                self.stats.resent += 1;
                self.forget_rows(&statement.rows);
                Some(statement.rows)
            }
            Ok(a) => {
                if statement.kind == Kind::New && a.summary.inserted < statement.rows.len() as u64 {
                    self.stats.new_existed += 1;
                }
                let as_versions = statement.packed.sent_as_versions() as u64;
                self.stats.sent_as_versions += as_versions;
                self.stats.sent_with_json += statement.rows.len() as u64 - as_versions;
                progress.total += a.summary;
                self.remember(&statement.rows, &statement.packed, a.versions);
                None
            }
            Err(e) => {
                self.forget_rows(&statement.rows);
                progress.error.get_or_insert(e);
                None
            }
        }
    }

    /// The statements of a batch (`rows` in key order): the markets this writer knows, by
    /// their row version (`partwarden.write_odds_known`), and the others, with their JSON
    /// (`partwarden.write_odds_new`); `None` for a kind the batch has none of.
    fn statements<'a>(
        &self,
        rows: &[&'a MarketOdds],
    ) -> (Option<Statement<'a>>, Option<Statement<'a>>) {
        let mut known = Vec::new();
        let mut entries = Vec::new();
        let mut unknown = Vec::new();
        for r in rows {
            match self.version_of(r) {
                Some(e) => {
                    known.push(*r);
                    entries.push(e);
                }
                None => unknown.push(*r),
            }
        }
        let unknown = (!unknown.is_empty()).then(|| Statement::in_full(unknown, Kind::New));
        if known.is_empty() {
            return (None, unknown);
        }
        // Called once per market, in order.
        let mut entries = entries.into_iter();
        let packed = Packed::known(&known, |o, g| {
            let e = entries.next().expect("an entry per known market");
            let unchanged = *e.outcomes == *o && e.market_groups.as_deref() == g;
            (e.xmin, e.ctid, unchanged)
        });
        let known = Statement {
            rows: known,
            kind: Kind::Known,
            packed,
        };
        (Some(known), unknown)
    }

    /// The parameters of the statements [`OddsWriter::write`] would send first for `rows` (as
    /// [`prepare`](super::prepare) returns them), to run them elsewhere (the benchmark runs
    /// them server-side): for the markets it knows, `partwarden.write_odds_known`'s
    /// ([`KNOWN_SQL`](super::KNOWN_SQL)); for the others, `partwarden.write_odds_new`'s
    /// ([`NEW_SQL`](super::NEW_SQL)).
    pub fn statements_for<'a>(&self, rows: &[&'a MarketOdds]) -> (Packed<'a>, Packed<'a>) {
        let (known, unknown) = self.statements(rows);
        let packed = |s: Option<Statement<'a>>| s.map_or_else(|| Packed::new(&[]), |s| s.packed);
        (packed(known), packed(unknown))
    }

    /// [`mark_unavailable`](super::mark_unavailable), forgetting the markets it marks (their
    /// rows get a new version).
    pub async fn mark_unavailable<C: GenericClient + Sync>(
        &mut self,
        client: &C,
        keys: &[MarketKey],
        at: DateTime<Utc>,
    ) -> Result<u64, WriteError> {
        for k in keys {
            self.remove(k.event_id, &k.bookmaker_slug, &k.betpawa_market_id, k.line);
        }
        super::mark_unavailable(client, keys, at).await
    }

    /// What this writer last wrote of `r`'s market, when that can be used for this scrape:
    /// written less than `max_age` before it, and before it (a scrape not newer than the
    /// stored one goes in full, which tells it stale).
    fn version_of(&self, r: &MarketOdds) -> Option<&Entry> {
        let e = self.entry(r)?;
        let age = r.scraped_at - e.scraped_at;
        (age > Duration::zero() && age <= self.max_age).then_some(e)
    }

    fn remember(
        &mut self,
        rows: &[&MarketOdds],
        packed: &Packed<'_>,
        versions: Option<(Vec<Xid>, Vec<Tid>)>,
    ) {
        let Some((xmin, ctid)) =
            versions.filter(|(x, t)| x.len() == rows.len() && t.len() == rows.len())
        else {
            // Some market was stale: which version each has is not known.
            self.forget_rows(rows);
            return;
        };
        for (i, r) in rows.iter().enumerate() {
            match packed.json_of(i) {
                Some((outcomes, market_groups)) => {
                    let entry = Entry {
                        bookmaker_slug: r.bookmaker_slug.as_str().into(),
                        betpawa_market_id: r.betpawa_market_id.as_str().into(),
                        outcomes: outcomes.into(),
                        market_groups: market_groups.map(Into::into),
                        xmin: xmin[i],
                        ctid: ctid[i],
                        scraped_at: r.scraped_at,
                    };
                    let slots = self
                        .known
                        .entry((r.event_id, line_bits(r.line)))
                        .or_default();
                    match slots.iter_mut().find(|e| same_market(e, r)) {
                        Some(e) => *e = entry,
                        None => {
                            slots.push(entry);
                            self.len += 1;
                        }
                    }
                }
                None => {
                    let slots = self.known.get_mut(&(r.event_id, line_bits(r.line)));
                    if let Some(e) = slots.and_then(|s| s.iter_mut().find(|e| same_market(e, r))) {
                        e.xmin = xmin[i];
                        e.ctid = ctid[i];
                        e.scraped_at = r.scraped_at;
                    }
                }
            }
        }
        self.keep_within_capacity();
    }

    fn entry(&self, r: &MarketOdds) -> Option<&Entry> {
        self.known
            .get(&(r.event_id, line_bits(r.line)))?
            .iter()
            .find(|e| same_market(e, r))
    }

    fn remove(&mut self, event_id: i32, bookmaker_slug: &str, market_id: &str, line: Option<f64>) {
        let key = (event_id, line_bits(line));
        if let Some(slots) = self.known.get_mut(&key) {
            let before = slots.len();
            slots.retain(|e| {
                !(&*e.bookmaker_slug == bookmaker_slug && &*e.betpawa_market_id == market_id)
            });
            self.len -= before - slots.len();
            if slots.is_empty() {
                self.known.remove(&key);
            }
        }
    }

    fn forget_rows(&mut self, rows: &[&MarketOdds]) {
        for r in rows {
            self.remove(r.event_id, &r.bookmaker_slug, &r.betpawa_market_id, r.line);
        }
    }

    /// Over capacity, keeps the three quarters of it scraped last.
    fn keep_within_capacity(&mut self) {
        if self.len <= self.capacity {
            return;
        }
        let keep = self.capacity * 3 / 4;
        if keep == 0 {
            self.forget();
            return;
        }
        let mut at: Vec<DateTime<Utc>> = self
            .known
            .values()
            .flatten()
            .map(|e| e.scraped_at)
            .collect();
        let drop = at.len() - keep;
        let (_, cutoff, _) = at.select_nth_unstable(drop - 1);
        let cutoff = *cutoff;
        let mut len = 0;
        self.known.retain(|_, slots| {
            slots.retain(|e| e.scraped_at > cutoff);
            len += slots.len();
            !slots.is_empty()
        });
        self.len = len;
    }
}
