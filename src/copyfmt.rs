//! A streaming reader of PostgreSQL's binary `COPY` format, just deep enough to count tuples
//! and pick out one column.
//!
//! Archives are binary COPY streams. To prove an archive holds what the table held, partwarden
//! counts the tuples as it writes the stream and again when it reads the file back, and takes
//! the min/max of the partition key from the stream instead of scanning the table again. The
//! parser is fed chunks of any size (as they come off the wire or out of the decompressor) and
//! keeps only a few bytes of state, so memory stays flat however large the table.

/// The 11-byte signature that starts every binary COPY stream.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// How the captured column is encoded, to turn it into an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// `timestamptz` / `timestamp`: int64 microseconds since 2000-01-01 00:00 UTC.
    Micros,
    /// `date`: int32 days since 2000-01-01.
    Days,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Signature, flags and header-extension length: 19 bytes.
    Header,
    /// A tuple's int16 field count, or -1 for the trailer.
    TupleStart,
    /// A field's int32 length.
    FieldLen,
    /// The captured field's bytes (we keep them).
    KeyData,
    /// After the trailer: nothing more may come.
    Done,
}

/// Counts tuples of a binary COPY stream and tracks min/max of one fixed-width column.
#[derive(Debug)]
pub struct TupleCounter {
    phase: Phase,
    acc: [u8; 19],
    acc_len: usize,
    want: usize,
    skip: u64,
    fields_left: i16,
    field_index: i16,
    key: Option<(usize, KeyKind)>,
    /// Where to go once the key's bytes are read.
    after_key: Option<(Phase, usize)>,
    tuples: u64,
    min: Option<i64>,
    max: Option<i64>,
}

impl TupleCounter {
    /// A counter; `key` is the 0-based column to track and how it is encoded.
    pub fn new(key: Option<(usize, KeyKind)>) -> TupleCounter {
        TupleCounter {
            phase: Phase::Header,
            acc: [0; 19],
            acc_len: 0,
            want: 19,
            skip: 0,
            fields_left: 0,
            field_index: 0,
            key,
            after_key: None,
            tuples: 0,
            min: None,
            max: None,
        }
    }

    /// Feeds the next chunk. Returns an error when the stream is not binary COPY.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = (self.skip.min(data.len() as u64)) as usize;
                data = &data[n..];
                self.skip -= n as u64;
                continue;
            }
            if self.phase == Phase::Done {
                return Err(format!(
                    "{} bytes after the end-of-data trailer",
                    data.len()
                ));
            }
            let n = (self.want - self.acc_len).min(data.len());
            self.acc[self.acc_len..self.acc_len + n].copy_from_slice(&data[..n]);
            self.acc_len += n;
            data = &data[n..];
            if self.acc_len == self.want {
                self.acc_len = 0;
                self.on_value()?;
            }
        }
        Ok(())
    }

    fn on_value(&mut self) -> Result<(), String> {
        match self.phase {
            Phase::Header => {
                if &self.acc[..11] != SIGNATURE {
                    return Err("not a binary COPY stream (bad signature)".into());
                }
                let ext = u32::from_be_bytes(self.acc[15..19].try_into().expect("4 bytes"));
                self.skip = u64::from(ext);
                self.phase = Phase::TupleStart;
                self.want = 2;
            }
            Phase::TupleStart => {
                let n = i16::from_be_bytes([self.acc[0], self.acc[1]]);
                if n == -1 {
                    self.phase = Phase::Done;
                    self.want = 1;
                } else if n < 0 {
                    return Err(format!("invalid field count {n}"));
                } else {
                    self.tuples += 1;
                    self.fields_left = n;
                    self.field_index = 0;
                    if n > 0 {
                        self.phase = Phase::FieldLen;
                        self.want = 4;
                    }
                }
            }
            Phase::FieldLen => {
                let len = i32::from_be_bytes(self.acc[..4].try_into().expect("4 bytes"));
                if len < -1 {
                    return Err(format!("invalid field length {len}"));
                }
                let index = self.field_index;
                self.field_index += 1;
                self.fields_left -= 1;
                let next = if self.fields_left == 0 {
                    (Phase::TupleStart, 2)
                } else {
                    (Phase::FieldLen, 4)
                };
                match self.key {
                    Some((k, kind)) if k as i16 == index && len >= 0 => {
                        let width = match kind {
                            KeyKind::Micros => 8,
                            KeyKind::Days => 4,
                        };
                        if len != width {
                            return Err(format!("key column has {len} bytes, expected {width}"));
                        }
                        self.phase = Phase::KeyData;
                        self.want = width as usize;
                        self.after_key = Some(next);
                    }
                    _ => {
                        if len > 0 {
                            self.skip = len as u64;
                        }
                        (self.phase, self.want) = next;
                    }
                }
            }
            Phase::KeyData => {
                let v = match self.want {
                    8 => i64::from_be_bytes(self.acc[..8].try_into().expect("8 bytes")),
                    _ => {
                        i64::from(i32::from_be_bytes(
                            self.acc[..4].try_into().expect("4 bytes"),
                        )) * 86_400_000_000
                    }
                };
                self.min = Some(self.min.map_or(v, |m| m.min(v)));
                self.max = Some(self.max.map_or(v, |m| m.max(v)));
                (self.phase, self.want) = self.after_key.take().expect("set with KeyData");
            }
            Phase::Done => unreachable!("checked in feed"),
        }
        Ok(())
    }

    /// Ends the stream: the tuple count, or an error when the stream stopped early.
    pub fn finish(&self) -> Result<u64, String> {
        if self.phase != Phase::Done || self.acc_len != 0 || self.skip != 0 {
            return Err(format!("stream truncated after {} tuples", self.tuples));
        }
        Ok(self.tuples)
    }

    /// Tuples seen so far.
    pub fn tuples(&self) -> u64 {
        self.tuples
    }

    /// Min and max of the tracked column, as microseconds since 2000-01-01 00:00 UTC.
    pub fn key_range(&self) -> Option<(i64, i64)> {
        Some((self.min?, self.max?))
    }
}

/// Microseconds since 2000-01-01 UTC (PostgreSQL's epoch) as an instant.
pub fn pg_micros_to_utc(us: i64) -> chrono::DateTime<chrono::Utc> {
    const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
    chrono::DateTime::from_timestamp_micros(us + PG_EPOCH_UNIX_SECS * 1_000_000).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream of `rows` tuples (id int8, note text or NULL, at timestamptz).
    fn stream(rows: &[(i64, Option<&str>, i64)]) -> Vec<u8> {
        let mut s = SIGNATURE.to_vec();
        s.extend(0u32.to_be_bytes());
        s.extend(4u32.to_be_bytes());
        s.extend(b"ext!");
        for (id, note, at) in rows {
            s.extend(3i16.to_be_bytes());
            s.extend(8i32.to_be_bytes());
            s.extend(id.to_be_bytes());
            match note {
                None => s.extend((-1i32).to_be_bytes()),
                Some(n) => {
                    s.extend((n.len() as i32).to_be_bytes());
                    s.extend(n.as_bytes());
                }
            }
            s.extend(8i32.to_be_bytes());
            s.extend(at.to_be_bytes());
        }
        s.extend((-1i16).to_be_bytes());
        s
    }

    #[test]
    fn counts_tuples_and_key_range_in_any_chunking() {
        let rows = [
            (1, Some("a"), 500),
            (2, None, -20),
            (3, Some(""), 7_000_000),
        ];
        let s = stream(&rows);
        for chunk in [1, 2, 3, 7, 19, 1000] {
            let mut c = TupleCounter::new(Some((2, KeyKind::Micros)));
            for part in s.chunks(chunk) {
                c.feed(part).unwrap();
            }
            assert_eq!(c.finish().unwrap(), 3, "chunk {chunk}");
            assert_eq!(c.key_range(), Some((-20, 7_000_000)));
        }
    }

    #[test]
    fn empty_stream_and_errors() {
        let mut c = TupleCounter::new(None);
        c.feed(&stream(&[])).unwrap();
        assert_eq!(c.finish().unwrap(), 0);
        assert_eq!(c.key_range(), None);

        let s = stream(&[(1, None, 1), (2, None, 2)]);
        let mut c = TupleCounter::new(None);
        c.feed(&s[..s.len() - 5]).unwrap();
        assert!(c.finish().is_err(), "truncated");

        let mut c = TupleCounter::new(None);
        let mut extra = s.clone();
        extra.push(0);
        assert!(c.feed(&extra).is_err(), "trailing data");

        let mut c = TupleCounter::new(None);
        assert!(c.feed(b"COPY text format, not binary").is_err());
    }

    #[test]
    fn pg_epoch() {
        assert_eq!(
            pg_micros_to_utc(0).to_rfc3339(),
            "2000-01-01T00:00:00+00:00"
        );
    }
}
