//! SQL identifiers that came from configuration.
//!
//! partwarden builds DDL, and DDL cannot take bind parameters for names, so every name that
//! reaches SQL goes through this module: it is validated once, when the configuration is read,
//! and quoted every time it is printed. The accepted alphabet is deliberately narrow (lower-case
//! ASCII letters, digits and `_`): such a name means the same thing quoted or unquoted, so what
//! an operator writes in `config.toml` is exactly what `psql` shows, and nothing a config value
//! contains can ever change the shape of a statement.

use std::fmt;

/// PostgreSQL's NAMEDATALEN - 1: longer names are silently truncated by the server, which would
/// make two different configured names collide.
pub const MAX_IDENT_BYTES: usize = 63;

/// One validated identifier (a schema, table, column or index name).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident(String);

impl Ident {
    /// Validates `s` as an identifier. Returns an error saying what is wrong otherwise.
    pub fn new(s: &str) -> Result<Ident, String> {
        if s.is_empty() {
            return Err("an identifier cannot be empty".into());
        }
        if s.len() > MAX_IDENT_BYTES {
            return Err(format!(
                "identifier {s:?} is {} bytes long; PostgreSQL allows at most {MAX_IDENT_BYTES}",
                s.len()
            ));
        }
        let first = s.as_bytes()[0];
        if !(first.is_ascii_lowercase() || first == b'_') {
            return Err(format!(
                "identifier {s:?} must start with a lower-case letter or '_'"
            ));
        }
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
        {
            return Err(format!(
                "identifier {s:?} contains {bad:?}; only lower-case letters, digits and '_' are accepted"
            ));
        }
        Ok(Ident(s.to_string()))
    }

    /// The bare name, as stored in the catalogs (`pg_class.relname`, ...).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name quoted for SQL text.
    pub fn quoted(&self) -> String {
        quote_ident(&self.0)
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A schema-qualified relation name, `schema.name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedName {
    /// The schema; `public` when the configuration gave none.
    pub schema: Ident,
    /// The relation's own name.
    pub name: Ident,
}

impl QualifiedName {
    /// Parses `schema.name` or `name` (meaning `public.name`).
    pub fn parse(s: &str) -> Result<QualifiedName, String> {
        let parts: Vec<&str> = s.split('.').collect();
        match parts.as_slice() {
            [name] => Ok(QualifiedName {
                schema: Ident::new("public")?,
                name: Ident::new(name)?,
            }),
            [schema, name] => Ok(QualifiedName {
                schema: Ident::new(schema)?,
                name: Ident::new(name)?,
            }),
            _ => Err(format!(
                "{s:?} is not a table name of the form schema.table"
            )),
        }
    }

    /// A sibling relation in the same schema.
    pub fn sibling(&self, name: Ident) -> QualifiedName {
        QualifiedName {
            schema: self.schema.clone(),
            name,
        }
    }

    /// `"schema"."name"`, for SQL text.
    pub fn quoted(&self) -> String {
        format!("{}.{}", self.schema.quoted(), self.name.quoted())
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Quotes any string as a SQL identifier, doubling embedded quotes (PostgreSQL's
/// `quote_ident`). Used for validated names and for names read back from the catalogs.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string as a SQL literal (PostgreSQL's `quote_literal`, for strings without
/// backslashes escapes since `standard_conforming_strings` is on). Only used for values that
/// partwarden itself computed, such as partition bounds, which DDL cannot take as parameters.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        assert_eq!(
            Ident::new("market_odds_history").unwrap().as_str(),
            "market_odds_history"
        );
        let q = QualifiedName::parse("public.market_odds_history").unwrap();
        assert_eq!(q.quoted(), "\"public\".\"market_odds_history\"");
        let q = QualifiedName::parse("odds").unwrap();
        assert_eq!(q.to_string(), "public.odds");
    }

    #[test]
    fn refuses_hostile_names() {
        for bad in [
            "",
            "Odds",
            "odds;drop table x",
            "od\"ds",
            "1odds",
            "odds history",
            &"x".repeat(64),
        ] {
            assert!(Ident::new(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(QualifiedName::parse("a.b.c").is_err());
        assert!(QualifiedName::parse(".b").is_err());
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
