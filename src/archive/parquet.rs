//! Parquet archives (`maintenance.archive_format = "parquet"`): typed columns that DuckDB,
//! Spark or pandas read where the file lies, and that `--restore` turns back into exactly the
//! rows the partition had.
//!
//! Column mapping (PostgreSQL → Parquet): `smallint`/`integer`/`bigint` → INT16/INT32/INT64,
//! `real`/`double precision` → FLOAT/DOUBLE, `boolean` → BOOLEAN, `timestamp with time zone`
//! → TIMESTAMP(MICROS, UTC), everything else (`text`, `varchar`, `jsonb` as JSON text,
//! `numeric`, ...) → UTF8 holding PostgreSQL's own text of the value. All columns are
//! nullable; zstd-compressed; one row group per [`BATCH_ROWS`] rows, so memory stays flat.
//!
//! The file is made from the same `COPY ... TO STDOUT` text stream as a COPY archive: each
//! row is parsed into typed values, and a digest of the typed values (order-independent, like
//! the content digest) goes into the manifest as `typed_digest`, beside the content digest of
//! the text rows. Verifying reads the file back and recomputes the typed digest; the drop
//! compares the table with the content digest, as for COPY archives. A restore renders the
//! values as COPY text, loads them, and then re-reads the loaded table: its content digest
//! must be the manifest's, or the load is rolled back. So a round trip is proved identical,
//! byte for byte as PostgreSQL prints the rows, not assumed.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int16Array, Int32Array, Int64Array,
    RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, NaiveDateTime, Utc};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};

use super::copyfmt::ContentDigest;
use super::{ArchiveError, ManifestColumn};

/// Rows per record batch and row group.
pub const BATCH_ROWS: usize = 64 * 1024;
/// zstd level of the column chunks.
const ZSTD: i32 = 3;
/// How the manifest names the typed digest's algorithm.
pub const TYPED_DIGEST_PREFIX: &str = "sha256-sum-typed:";

/// How a column is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// INT16.
    Int16,
    /// INT32.
    Int32,
    /// INT64.
    Int64,
    /// FLOAT.
    Float32,
    /// DOUBLE.
    Float64,
    /// BOOLEAN.
    Bool,
    /// TIMESTAMP(MICROS, UTC).
    TimestampTz,
    /// UTF8: PostgreSQL's text of the value.
    Text,
}

impl Kind {
    /// The storage of a column of PostgreSQL type `data_type` (`format_type`'s text).
    pub fn of(data_type: &str) -> Kind {
        match data_type {
            "smallint" => Kind::Int16,
            "integer" => Kind::Int32,
            "bigint" => Kind::Int64,
            "real" => Kind::Float32,
            "double precision" => Kind::Float64,
            "boolean" => Kind::Bool,
            "timestamp with time zone" => Kind::TimestampTz,
            _ => Kind::Text,
        }
    }

    fn arrow(self) -> DataType {
        match self {
            Kind::Int16 => DataType::Int16,
            Kind::Int32 => DataType::Int32,
            Kind::Int64 => DataType::Int64,
            Kind::Float32 => DataType::Float32,
            Kind::Float64 => DataType::Float64,
            Kind::Bool => DataType::Boolean,
            Kind::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::Text => DataType::Utf8,
        }
    }
}

/// One value, typed.
#[derive(Clone, Debug, PartialEq)]
enum Value<'a> {
    Null,
    I64(i64),
    F64(f64),
    F32(f32),
    Bool(bool),
    Micros(i64),
    Text(Cow<'a, str>),
}

impl Value<'_> {
    /// The canonical bytes of the typed digest: a tag, then the value.
    fn hash_into(&self, h: &mut Sha256) {
        match self {
            Value::Null => h.update([0u8]),
            Value::I64(v) => {
                h.update([1u8]);
                h.update(v.to_le_bytes());
            }
            Value::F64(v) => {
                h.update([2u8]);
                h.update(v.to_bits().to_le_bytes());
            }
            Value::F32(v) => {
                h.update([3u8]);
                h.update(v.to_bits().to_le_bytes());
            }
            Value::Bool(v) => h.update([4u8, u8::from(*v)]),
            Value::Micros(v) => {
                h.update([5u8]);
                h.update(v.to_le_bytes());
            }
            Value::Text(s) => {
                h.update([6u8]);
                h.update((s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
        }
    }
}

fn schema(columns: &[ManifestColumn]) -> Arc<Schema> {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(&c.name, Kind::of(&c.data_type).arrow(), true))
            .collect::<Vec<_>>(),
    ))
}

/// PostgreSQL's COPY text escapes decoded (`\\`, `\b`, `\f`, `\n`, `\r`, `\t`, `\v`, and the
/// octal and hex forms COPY FROM also reads); borrowed when there is none.
fn unescape(field: &[u8]) -> Result<Cow<'_, str>, String> {
    if memchr::memchr(b'\\', field).is_none() {
        return std::str::from_utf8(field)
            .map(Cow::Borrowed)
            .map_err(|_| "a text value is not UTF-8".to_string());
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let c = field[i];
        if c != b'\\' || i + 1 == field.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let n = field[i + 1];
        i += 2;
        match n {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(n - b'0');
                let mut k = 0;
                while k < 2 && i < field.len() && (b'0'..=b'7').contains(&field[i]) {
                    v = v * 8 + u32::from(field[i] - b'0');
                    i += 1;
                    k += 1;
                }
                out.push(v as u8);
            }
            b'x' if i < field.len() && field[i].is_ascii_hexdigit() => {
                let mut v = 0u32;
                let mut k = 0;
                while k < 2 && i < field.len() && field[i].is_ascii_hexdigit() {
                    v = v * 16 + (field[i] as char).to_digit(16).expect("hex digit");
                    i += 1;
                    k += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| "a text value is not UTF-8".to_string())
}

/// The COPY text of a string: the escapes PostgreSQL itself writes.
fn escape(s: &str, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            8 => out.extend_from_slice(b"\\b"),
            12 => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            11 => out.extend_from_slice(b"\\v"),
            _ => out.push(b),
        }
    }
}

fn parse_float(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

fn parse_timestamptz(s: &str) -> Result<i64, String> {
    let refuse = || {
        format!(
            "timestamp {s:?} cannot be stored in Parquet (infinite, BC or not ISO); use archive_format = \"copy\""
        )
    };
    // `2026-05-01 00:00:01.25+00`, `...+05:30`, `...-03`: the session is UTC, but be exact.
    let (body, offset_secs) = match s.rfind(['+', '-']) {
        Some(p) if p >= 19 => {
            let (b, o) = s.split_at(p);
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let mut parts = o[1..].split(':');
            let h: i64 = parts
                .next()
                .and_then(|x| x.parse().ok())
                .ok_or_else(refuse)?;
            let m: i64 = parts
                .next()
                .map_or(Some(0), |x| x.parse().ok())
                .ok_or_else(refuse)?;
            let sec: i64 = parts
                .next()
                .map_or(Some(0), |x| x.parse().ok())
                .ok_or_else(refuse)?;
            (b, sign * (h * 3600 + m * 60 + sec))
        }
        _ => return Err(refuse()),
    };
    let naive =
        NaiveDateTime::parse_from_str(body, "%Y-%m-%d %H:%M:%S%.f").map_err(|_| refuse())?;
    Ok(naive.and_utc().timestamp_micros() - offset_secs * 1_000_000)
}

fn parse(kind: Kind, field: &[u8]) -> Result<Value<'_>, String> {
    if field == b"\\N" {
        return Ok(Value::Null);
    }
    let text = || std::str::from_utf8(field).map_err(|_| "a value is not UTF-8".to_string());
    let bad = |what: &str| format!("{what} {:?} does not parse", String::from_utf8_lossy(field));
    Ok(match kind {
        Kind::Int16 | Kind::Int32 | Kind::Int64 => {
            Value::I64(text()?.parse().map_err(|_| bad("integer"))?)
        }
        Kind::Float64 => Value::F64(parse_float(text()?).ok_or_else(|| bad("double"))?),
        Kind::Float32 => {
            let s = text()?;
            let v: f32 = match s {
                "NaN" => f32::NAN,
                "Infinity" => f32::INFINITY,
                "-Infinity" => f32::NEG_INFINITY,
                _ => s.parse().map_err(|_| bad("real"))?,
            };
            Value::F32(v)
        }
        Kind::Bool => match field {
            b"t" => Value::Bool(true),
            b"f" => Value::Bool(false),
            _ => return Err(bad("boolean")),
        },
        Kind::TimestampTz => Value::Micros(parse_timestamptz(text()?)?),
        Kind::Text => Value::Text(unescape(field)?),
    })
}

/// Column builders for one batch.
enum Builder {
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
    Ts(TimestampMicrosecondBuilder),
    Text(StringBuilder),
}

impl Builder {
    fn new(kind: Kind) -> Builder {
        match kind {
            Kind::Int16 => Builder::I16(Int16Builder::with_capacity(BATCH_ROWS)),
            Kind::Int32 => Builder::I32(Int32Builder::with_capacity(BATCH_ROWS)),
            Kind::Int64 => Builder::I64(Int64Builder::with_capacity(BATCH_ROWS)),
            Kind::Float32 => Builder::F32(Float32Builder::with_capacity(BATCH_ROWS)),
            Kind::Float64 => Builder::F64(Float64Builder::with_capacity(BATCH_ROWS)),
            Kind::Bool => Builder::Bool(BooleanBuilder::with_capacity(BATCH_ROWS)),
            Kind::TimestampTz => Builder::Ts(
                TimestampMicrosecondBuilder::with_capacity(BATCH_ROWS).with_timezone("UTC"),
            ),
            Kind::Text => Builder::Text(StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 32)),
        }
    }

    fn push(&mut self, v: &Value) -> Result<(), String> {
        let range = |what: &str| format!("{what} out of range for its column");
        match (self, v) {
            (Builder::I16(b), Value::Null) => b.append_null(),
            (Builder::I32(b), Value::Null) => b.append_null(),
            (Builder::I64(b), Value::Null) => b.append_null(),
            (Builder::F32(b), Value::Null) => b.append_null(),
            (Builder::F64(b), Value::Null) => b.append_null(),
            (Builder::Bool(b), Value::Null) => b.append_null(),
            (Builder::Ts(b), Value::Null) => b.append_null(),
            (Builder::Text(b), Value::Null) => b.append_null(),
            (Builder::I16(b), Value::I64(x)) => {
                b.append_value(i16::try_from(*x).map_err(|_| range("smallint"))?)
            }
            (Builder::I32(b), Value::I64(x)) => {
                b.append_value(i32::try_from(*x).map_err(|_| range("integer"))?)
            }
            (Builder::I64(b), Value::I64(x)) => b.append_value(*x),
            (Builder::F32(b), Value::F32(x)) => b.append_value(*x),
            (Builder::F64(b), Value::F64(x)) => b.append_value(*x),
            (Builder::Bool(b), Value::Bool(x)) => b.append_value(*x),
            (Builder::Ts(b), Value::Micros(x)) => b.append_value(*x),
            (Builder::Text(b), Value::Text(x)) => b.append_value(x),
            _ => return Err("a value of the wrong kind for its column".into()),
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::I16(b) => Arc::new(b.finish()),
            Builder::I32(b) => Arc::new(b.finish()),
            Builder::I64(b) => Arc::new(b.finish()),
            Builder::F32(b) => Arc::new(b.finish()),
            Builder::F64(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Ts(b) => Arc::new(b.finish()),
            Builder::Text(b) => Arc::new(b.finish()),
        }
    }
}

/// Turns a COPY text stream into a Parquet file, row group by row group.
pub struct Writer<W: Write + Send> {
    kinds: Vec<Kind>,
    builders: Vec<Builder>,
    schema: Arc<Schema>,
    writer: ArrowWriter<W>,
    /// The end of the previous chunk that was not a whole row yet.
    carry: Vec<u8>,
    in_batch: usize,
    typed: ContentDigest,
}

impl<W: Write + Send> Writer<W> {
    /// A writer for a table with `columns` (in COPY order) into `out`.
    pub fn new(columns: &[ManifestColumn], out: W) -> Result<Writer<W>, String> {
        let kinds: Vec<Kind> = columns.iter().map(|c| Kind::of(&c.data_type)).collect();
        let schema = schema(columns);
        let mut props = WriterProperties::builder().set_compression(Compression::ZSTD(
            ZstdLevel::try_new(ZSTD).map_err(|e| e.to_string())?,
        ));
        // Keys and instants mostly grow row by row: delta encoding stores them in a few bits.
        for (c, k) in columns.iter().zip(&kinds) {
            if matches!(k, Kind::Int64 | Kind::TimestampTz) {
                let path = parquet::schema::types::ColumnPath::from(c.name.as_str());
                props = props
                    .set_column_dictionary_enabled(path.clone(), false)
                    .set_column_encoding(path, parquet::basic::Encoding::DELTA_BINARY_PACKED);
            }
        }
        let props = props
            .set_max_row_group_size(BATCH_ROWS)
            .set_created_by(format!("partwarden {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer =
            ArrowWriter::try_new(out, schema.clone(), Some(props)).map_err(|e| e.to_string())?;
        Ok(Writer {
            builders: kinds.iter().map(|k| Builder::new(*k)).collect(),
            kinds,
            schema,
            writer,
            carry: Vec::new(),
            in_batch: 0,
            typed: ContentDigest::new(),
        })
    }

    /// Feeds the next chunk of the COPY text stream.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        let mut start = 0;
        for pos in memchr::memchr_iter(b'\n', chunk) {
            if self.carry.is_empty() {
                self.row(&chunk[start..pos])?;
            } else {
                let mut row = std::mem::take(&mut self.carry);
                row.extend_from_slice(&chunk[start..pos]);
                self.row(&row)?;
            }
            start = pos + 1;
        }
        self.carry.extend_from_slice(&chunk[start..]);
        Ok(())
    }

    fn row(&mut self, line: &[u8]) -> Result<(), String> {
        let mut h = Sha256::new();
        let mut n = 0;
        for (i, field) in line.split(|b| *b == b'\t').enumerate() {
            let kind = *self
                .kinds
                .get(i)
                .ok_or("a row has more fields than the table has columns")?;
            let v = parse(kind, field)?;
            v.hash_into(&mut h);
            self.builders[i].push(&v)?;
            n += 1;
        }
        if n != self.kinds.len() {
            return Err("a row has fewer fields than the table has columns".into());
        }
        self.typed.add_row_hash(&h.finalize());
        self.in_batch += 1;
        if self.in_batch == BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), String> {
        if self.in_batch == 0 {
            return Ok(());
        }
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        let batch = RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| e.to_string())?;
        self.writer.write(&batch).map_err(|e| e.to_string())?;
        self.writer.flush().map_err(|e| e.to_string())?;
        self.in_batch = 0;
        Ok(())
    }

    /// Ends the file: returns the output and the typed digest `(rows, digest)`.
    pub fn finish(mut self) -> Result<(W, u64, String), String> {
        if !self.carry.is_empty() {
            return Err("the COPY stream ended inside a row".into());
        }
        self.flush()?;
        let out = self.writer.into_inner().map_err(|e| e.to_string())?;
        let (rows, digest) = self.typed.finish()?;
        let digest = digest.replacen(super::copyfmt::DIGEST_PREFIX, TYPED_DIGEST_PREFIX, 1);
        Ok((out, rows, digest))
    }
}

/// Receives each row's COPY text.
type RowSink<'a> = dyn FnMut(&[u8]) -> Result<(), String> + 'a;

/// Reads a Parquet archive's rows back: calls `row` with each row's values (in column order)
/// and returns `(rows, typed digest)`. `render` asks for the COPY text of each row as well.
fn read_rows(
    path: &Path,
    columns: &[ManifestColumn],
    mut row_text: Option<&mut RowSink<'_>>,
) -> Result<(u64, String), ArchiveError> {
    let mismatch = |message: String| ArchiveError::Mismatch {
        path: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(super::io("opening archive", path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| mismatch(format!("not a Parquet file: {e}")))?
        .with_batch_size(BATCH_ROWS);
    let expected = schema(columns);
    let found = builder.schema().clone();
    if found.fields().len() != expected.fields().len()
        || found
            .fields()
            .iter()
            .zip(expected.fields())
            .any(|(a, b)| a.name() != b.name() || a.data_type() != b.data_type())
    {
        return Err(mismatch(
            "its columns differ from the manifest's".to_string(),
        ));
    }
    let reader = builder
        .build()
        .map_err(|e| mismatch(format!("reading Parquet: {e}")))?;
    let kinds: Vec<Kind> = columns.iter().map(|c| Kind::of(&c.data_type)).collect();
    let mut typed = ContentDigest::new();
    let mut line = Vec::with_capacity(512);
    for batch in reader {
        let batch = batch.map_err(|e| mismatch(format!("reading Parquet: {e}")))?;
        let cols = batch.columns();
        for r in 0..batch.num_rows() {
            let mut h = Sha256::new();
            line.clear();
            for (c, kind) in kinds.iter().enumerate() {
                let v = value_at(cols[c].as_ref(), *kind, r)
                    .ok_or_else(|| mismatch("a column of an unexpected type".into()))?;
                v.hash_into(&mut h);
                if row_text.is_some() {
                    if c > 0 {
                        line.push(b'\t');
                    }
                    render(&v, &mut line);
                }
            }
            typed.add_row_hash(&h.finalize());
            if let Some(f) = row_text.as_mut() {
                line.push(b'\n');
                f(&line).map_err(&mismatch)?;
            }
        }
    }
    let (rows, digest) = typed.finish().map_err(&mismatch)?;
    Ok((
        rows,
        digest.replacen(super::copyfmt::DIGEST_PREFIX, TYPED_DIGEST_PREFIX, 1),
    ))
}

fn value_at(a: &dyn Array, kind: Kind, r: usize) -> Option<Value<'_>> {
    if a.is_null(r) {
        return Some(Value::Null);
    }
    let any = a.as_any();
    Some(match kind {
        Kind::Int16 => Value::I64(any.downcast_ref::<Int16Array>()?.value(r).into()),
        Kind::Int32 => Value::I64(any.downcast_ref::<Int32Array>()?.value(r).into()),
        Kind::Int64 => Value::I64(any.downcast_ref::<Int64Array>()?.value(r)),
        Kind::Float32 => Value::F32(any.downcast_ref::<Float32Array>()?.value(r)),
        Kind::Float64 => Value::F64(any.downcast_ref::<Float64Array>()?.value(r)),
        Kind::Bool => Value::Bool(any.downcast_ref::<BooleanArray>()?.value(r)),
        Kind::TimestampTz => {
            Value::Micros(any.downcast_ref::<TimestampMicrosecondArray>()?.value(r))
        }
        Kind::Text => Value::Text(Cow::Borrowed(any.downcast_ref::<StringArray>()?.value(r))),
    })
}

/// The COPY text of a value, as PostgreSQL reads it back to the same value.
fn render(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"\\N"),
        Value::I64(x) => out.extend_from_slice(x.to_string().as_bytes()),
        Value::F64(x) => out.extend_from_slice(float_text(*x).as_bytes()),
        Value::F32(x) => {
            let s = if x.is_nan() {
                "NaN".to_string()
            } else if x.is_infinite() {
                if *x > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
            } else {
                // Shortest digits that read back to the same f32.
                format!("{x:?}")
            };
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bool(x) => out.push(if *x { b't' } else { b'f' }),
        Value::Micros(x) => {
            let t = DateTime::<Utc>::from_timestamp_micros(*x).unwrap_or_default();
            out.extend_from_slice(t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string().as_bytes());
        }
        Value::Text(s) => escape(s, out),
    }
}

fn float_text(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        // Rust prints the shortest digits that read back to the same double.
        format!("{x:?}")
    }
}

/// Checks a Parquet archive file against what the manifest says: rows and typed digest.
/// (Size and SHA-256 are checked by the caller.) Returns the rows.
pub fn check(
    path: &Path,
    columns: &[ManifestColumn],
    expected_typed: &str,
) -> Result<u64, ArchiveError> {
    let (rows, typed) = read_rows(path, columns, None)?;
    if typed != expected_typed {
        return Err(ArchiveError::Mismatch {
            path: path.to_path_buf(),
            message: format!("typed digest {typed}, manifest says {expected_typed}"),
        });
    }
    Ok(rows)
}

/// The rows of a Parquet archive as COPY text, in chunks of about `chunk` bytes, for a
/// restore; returns `(rows, typed digest)`.
pub fn copy_text(
    path: &Path,
    columns: &[ManifestColumn],
    chunk: usize,
    send: &mut dyn FnMut(Vec<u8>) -> Result<(), String>,
) -> Result<(u64, String), ArchiveError> {
    let mut buf: Vec<u8> = Vec::with_capacity(chunk + 4096);
    let mut f = |line: &[u8]| -> Result<(), String> {
        buf.extend_from_slice(line);
        if buf.len() >= chunk {
            send(std::mem::take(&mut buf))?;
        }
        Ok(())
    };
    let r = read_rows(path, columns, Some(&mut f))?;
    if !buf.is_empty() {
        send(buf).map_err(|message| ArchiveError::Mismatch {
            path: PathBuf::from(path),
            message,
        })?;
    }
    Ok(r)
}

/// A new Parquet file's writer over a buffered file.
pub fn file_writer(
    columns: &[ManifestColumn],
    file: BufWriter<File>,
) -> Result<Writer<BufWriter<File>>, String> {
    Writer::new(columns, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_round_trip() {
        for s in [
            "plain",
            "tab\there",
            "nl\nand\\back",
            "\u{8}\u{c}\r\u{b}",
            "é€🎲",
        ] {
            let mut out = Vec::new();
            escape(s, &mut out);
            assert_eq!(unescape(&out).unwrap(), s);
        }
        assert_eq!(unescape(b"\\101\\x42").unwrap(), "AB");
    }

    #[test]
    fn values_parse_as_postgresql_prints_them() {
        assert_eq!(
            parse(Kind::TimestampTz, b"2026-05-01 00:00:01.25+00").unwrap(),
            Value::Micros(1_777_593_601_250_000)
        );
        assert_eq!(
            parse(Kind::TimestampTz, b"2026-05-01 05:30:00+05:30").unwrap(),
            parse(Kind::TimestampTz, b"2026-05-01 00:00:00+00").unwrap()
        );
        assert!(parse(Kind::TimestampTz, b"infinity").is_err());
        assert_eq!(parse(Kind::Float64, b"1e-05").unwrap(), Value::F64(1e-5));
        assert_eq!(parse(Kind::Int32, b"\\N").unwrap(), Value::Null);
        for x in [0.1, 1.0 / 3.0, 1e300, -2.5e-308, 123456789.125] {
            let text = float_text(x);
            let v = parse(Kind::Float64, text.as_bytes()).unwrap();
            assert_eq!(v, Value::F64(x));
        }
    }
}
