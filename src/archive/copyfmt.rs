//! A streaming reader of PostgreSQL's text `COPY` format, just deep enough to count rows and
//! pick out one column.
//!
//! Archives are text COPY streams (compressed with zstd they are smaller than pg_dump's
//! custom format, and binary COPY compresses worse). To prove an archive holds what the table
//! held, partwarden counts the rows as it writes the stream and again when it reads the file
//! back, and takes the min/max of the partition key from the stream instead of scanning the
//! table again. In text COPY every row ends with a newline byte and data never contains a raw
//! newline or tab (they are written as `\n` and `\t`), so rows and fields can be found with a
//! byte search. The reader is fed chunks of any size and keeps only the bytes of the current
//! key field, so memory stays flat however large the table.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

/// How the captured column is written, to turn it into an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// `timestamptz`, written with its offset (`2026-03-01 00:00:02.5+00`).
    TimestampTz,
    /// `timestamp`, taken as UTC.
    Timestamp,
    /// `date`, midnight UTC.
    Date,
}

/// Longest key field kept; a longer field is not a timestamp.
const MAX_KEY_BYTES: usize = 64;

/// Counts rows of a text COPY stream and tracks min/max of one column.
#[derive(Debug)]
pub struct RowCounter {
    rows: u64,
    /// 0-based field of the current row that the next byte belongs to.
    field: usize,
    /// Bytes seen in the current row (to detect a missing final newline).
    in_row: bool,
    key: Option<(usize, KeyKind)>,
    key_bytes: Vec<u8>,
    min: Option<DateTime<Utc>>,
    max: Option<DateTime<Utc>>,
    /// A key value that could not be read as an instant: the range is then unknown.
    key_unreadable: bool,
}

impl RowCounter {
    /// A counter; `key` is the 0-based column to track and how it is written.
    pub fn new(key: Option<(usize, KeyKind)>) -> RowCounter {
        RowCounter {
            rows: 0,
            field: 0,
            in_row: false,
            key,
            key_bytes: Vec::with_capacity(MAX_KEY_BYTES),
            min: None,
            max: None,
            key_unreadable: false,
        }
    }

    /// Feeds the next chunk.
    pub fn feed(&mut self, data: &[u8]) {
        let Some((k, _)) = self.key else {
            let n = memchr::memchr_iter(b'\n', data).count();
            self.rows += n as u64;
            self.in_row = data.last().map_or(self.in_row, |&b| b != b'\n');
            return;
        };
        let mut start = 0;
        for pos in memchr::memchr2_iter(b'\t', b'\n', data) {
            if self.field == k {
                self.push_key(&data[start..pos]);
                self.end_key();
            }
            if data[pos] == b'\n' {
                self.rows += 1;
                self.field = 0;
                self.in_row = false;
            } else {
                self.field += 1;
                self.in_row = true;
            }
            start = pos + 1;
        }
        if start < data.len() {
            if self.field == k {
                self.push_key(&data[start..]);
            }
            self.in_row = true;
        }
    }

    fn push_key(&mut self, bytes: &[u8]) {
        let room = MAX_KEY_BYTES.saturating_sub(self.key_bytes.len());
        if bytes.len() > room {
            self.key_unreadable = true;
        }
        self.key_bytes
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn end_key(&mut self) {
        let Some((_, kind)) = self.key else { return };
        match parse_instant(&self.key_bytes, kind) {
            Some(t) => {
                self.min = Some(self.min.map_or(t, |m| m.min(t)));
                self.max = Some(self.max.map_or(t, |m| m.max(t)));
            }
            None => self.key_unreadable = true,
        }
        self.key_bytes.clear();
    }

    /// Ends the stream: the row count, or an error when the last row has no newline (the
    /// stream was cut).
    pub fn finish(&self) -> Result<u64, String> {
        if self.in_row {
            return Err(format!(
                "stream truncated after {} rows (last row incomplete)",
                self.rows
            ));
        }
        Ok(self.rows)
    }

    /// Rows seen so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Min and max of the tracked column; `None` when there were no rows or a value could not
    /// be read as an instant.
    pub fn key_range(&self) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        if self.key_unreadable {
            return None;
        }
        Some((self.min?, self.max?))
    }
}

/// An order-independent digest of the rows of a text COPY stream: the sum, modulo 2^256, of
/// the SHA-256 of every row (its bytes without the newline).
///
/// Two streams with the same multiset of rows have the same digest in any order, which is
/// what "the table holds exactly what the archive holds" means for a heap with no order. A
/// row changed, added or removed changes the sum (a removed row and an added copy of another
/// do not cancel, unlike XOR). Fed chunks of any size; keeps one hasher, so memory is flat.
#[derive(Clone, Default)]
pub struct ContentDigest {
    /// The hasher of the row in progress.
    row: sha2::Sha256,
    /// Whether the row in progress has any bytes (to detect a truncated last row).
    in_row: bool,
    /// The running sum, four little-endian 64-bit limbs.
    sum: [u64; 4],
    rows: u64,
}

impl ContentDigest {
    /// A digest of no rows.
    pub fn new() -> ContentDigest {
        ContentDigest::default()
    }

    /// Feeds the next chunk.
    pub fn feed(&mut self, data: &[u8]) {
        use sha2::Digest;
        let mut start = 0;
        for pos in memchr::memchr_iter(b'\n', data) {
            self.row.update(&data[start..pos]);
            let h = std::mem::take(&mut self.row).finalize();
            self.add(&h);
            self.rows += 1;
            self.in_row = false;
            start = pos + 1;
        }
        if start < data.len() {
            self.row.update(&data[start..]);
            self.in_row = true;
        }
    }

    /// Adds one row given by its SHA-256 (for digests of rows that are not COPY text lines).
    pub fn add_row_hash(&mut self, h: &[u8]) {
        self.add(h);
        self.rows += 1;
    }

    fn add(&mut self, h: &[u8]) {
        // The hash read as a big-endian 256-bit number, added with carries.
        let mut carry = 0u64;
        for (i, limb) in self.sum.iter_mut().enumerate() {
            let from = 32 - 8 * (i + 1);
            let v = u64::from_be_bytes(h[from..from + 8].try_into().expect("8 bytes"));
            let (s1, c1) = limb.overflowing_add(v);
            let (s2, c2) = s1.overflowing_add(carry);
            *limb = s2;
            carry = u64::from(c1) + u64::from(c2);
        }
    }

    /// Ends the stream: `(rows, "sha256-sum:<hex>")`, or an error when the last row has no
    /// newline (the stream was cut).
    pub fn finish(&self) -> Result<(u64, String), String> {
        if self.in_row {
            return Err(format!(
                "stream truncated after {} rows (last row incomplete)",
                self.rows
            ));
        }
        let mut hex = String::with_capacity(64 + 11);
        hex.push_str(DIGEST_PREFIX);
        for limb in self.sum.iter().rev() {
            hex.push_str(&format!("{limb:016x}"));
        }
        Ok((self.rows, hex))
    }
}

/// How [`ContentDigest::finish`] names its algorithm, so that a manifest says what it holds.
pub const DIGEST_PREFIX: &str = "sha256-sum:";

fn parse_instant(bytes: &[u8], kind: KeyKind) -> Option<DateTime<Utc>> {
    let s = std::str::from_utf8(bytes).ok()?;
    match kind {
        KeyKind::TimestampTz => DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z")
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        KeyKind::Timestamp => NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
            .ok()
            .map(|t| t.and_utc()),
        KeyKind::Date => NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"1\tbetpawa\t[{\"a\": \"x\\ny\"}]\t2026-03-01 00:00:02+00\n\
2\t\\N\t[]\t2026-02-28 23:59:59.999999+00\n\
3\tsporty\\tbet\t[]\t2026-03-05 10:00:00+01\n";

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn counts_rows_and_key_range_in_any_chunking() {
        for chunk in [1, 2, 3, 7, 19, 1000] {
            let mut c = RowCounter::new(Some((3, KeyKind::TimestampTz)));
            for part in STREAM.chunks(chunk) {
                c.feed(part);
            }
            assert_eq!(c.finish().unwrap(), 3, "chunk {chunk}");
            assert_eq!(
                c.key_range(),
                Some((t("2026-02-28T23:59:59.999999Z"), t("2026-03-05T09:00:00Z"))),
                "chunk {chunk}"
            );
            let mut plain = RowCounter::new(None);
            for part in STREAM.chunks(chunk) {
                plain.feed(part);
            }
            assert_eq!(plain.finish().unwrap(), 3);
        }
    }

    #[test]
    fn key_in_the_middle_and_other_types() {
        let mut c = RowCounter::new(Some((1, KeyKind::Date)));
        c.feed(b"a\t2026-01-02\tz\nb\t2025-12-31\tz\n");
        assert_eq!(c.finish().unwrap(), 2);
        assert_eq!(
            c.key_range(),
            Some((t("2025-12-31T00:00:00Z"), t("2026-01-02T00:00:00Z")))
        );
        let mut c = RowCounter::new(Some((0, KeyKind::Timestamp)));
        c.feed(b"2026-01-02 03:04:05\n");
        assert_eq!(
            c.key_range(),
            Some((t("2026-01-02T03:04:05Z"), t("2026-01-02T03:04:05Z")))
        );
    }

    #[test]
    fn truncated_and_unreadable() {
        let mut c = RowCounter::new(None);
        c.feed(&STREAM[..STREAM.len() - 3]);
        assert!(c.finish().is_err());
        let mut c = RowCounter::new(Some((0, KeyKind::TimestampTz)));
        c.feed(b"not a time\n");
        assert_eq!(c.finish().unwrap(), 1);
        assert_eq!(c.key_range(), None);
        let mut c = RowCounter::new(None);
        c.feed(b"");
        assert_eq!(c.finish().unwrap(), 0);
    }
    #[test]
    fn content_digest_ignores_order_and_chunking_but_not_content() {
        let digest = |stream: &[u8], chunk: usize| {
            let mut d = ContentDigest::new();
            for part in stream.chunks(chunk) {
                d.feed(part);
            }
            d.finish().unwrap()
        };
        let reordered: &[u8] = b"3\tsporty\\tbet\t[]\t2026-03-05 10:00:00+01\n\
1\tbetpawa\t[{\"a\": \"x\\ny\"}]\t2026-03-01 00:00:02+00\n\
2\t\\N\t[]\t2026-02-28 23:59:59.999999+00\n";
        let base = digest(STREAM, 1000);
        assert_eq!(base.0, 3);
        assert!(base.1.starts_with(DIGEST_PREFIX));
        for chunk in [1, 2, 5, 64] {
            assert_eq!(digest(STREAM, chunk), base, "chunk {chunk}");
            assert_eq!(digest(reordered, chunk), base, "reordered, chunk {chunk}");
        }
        // One byte changed, a row duplicated, a row swapped for a duplicate: all differ.
        let changed = [&STREAM[..STREAM.len() - 4], b"+02\n"].concat();
        assert_ne!(digest(&changed, 7).1, base.1);
        let duplicated = [STREAM, b"2\t\\N\t[]\t2026-02-28 23:59:59.999999+00\n"].concat();
        assert_ne!(digest(&duplicated, 7).1, base.1);
        let twice_two = b"2\ta\n2\ta\n";
        let one_each = b"2\ta\n3\ta\n";
        assert_ne!(digest(twice_two, 3).1, digest(one_each, 3).1);
        let mut cut = ContentDigest::new();
        cut.feed(&STREAM[..STREAM.len() - 1]);
        assert!(cut.finish().is_err());
        assert_eq!(ContentDigest::new().finish().unwrap().0, 0);
    }
}
