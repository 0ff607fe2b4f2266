//! The wire forms `partwarden.write_odds_packed` takes and returns that tokio-postgres has no
//! type for: a row version's `xmin` and `ctid`, and a jsonb value already serialized.

use std::error::Error;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

type BoxError = Box<dyn Error + Sync + Send>;

/// A transaction id as the `xmin` system column shows it (`xid`, 32 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Xid(pub u32);

/// A row version's place in its table (`tid`): block and line pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tid {
    /// Block number.
    pub block: u32,
    /// Line pointer (1-based).
    pub offset: u16,
}

impl<'a> FromSql<'a> for Xid {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Xid, BoxError> {
        let b: [u8; 4] = raw.try_into().map_err(|_| "an xid is 4 bytes")?;
        Ok(Xid(u32::from_be_bytes(b)))
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::XID
    }
}

impl ToSql for Xid {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.put_u32(self.0);
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::XID
    }
    to_sql_checked!();
}

impl<'a> FromSql<'a> for Tid {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Tid, BoxError> {
        if raw.len() != 6 {
            return Err("a tid is 6 bytes".into());
        }
        Ok(Tid {
            block: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
            offset: u16::from_be_bytes([raw[4], raw[5]]),
        })
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::TID
    }
}

impl ToSql for Tid {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.put_u32(self.block);
        out.put_u16(self.offset);
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::TID
    }
    to_sql_checked!();
}

/// JSON text already serialized (by serde_json, so valid), sent as `jsonb` as it is.
#[derive(Debug, Default)]
pub struct JsonText(pub Vec<u8>);

impl ToSql for JsonText {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        // jsonb's binary input: format version 1, then the text.
        out.put_u8(1);
        out.put_slice(&self.0);
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }
    to_sql_checked!();
}
