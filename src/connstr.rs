//! The grammar of PostgreSQL connection strings, read the way tokio-postgres (and libpq) read
//! them, in one place: `tls` takes `sslmode`/`sslrootcert` out of them, `config::redact_url`
//! hides passwords in them. Two readings of one string that disagree are how a password ends
//! up in a log, or `sslmode=require` is silently dropped.
//!
//! - URL form, `postgres[ql]://[user[:password]@]host[:port][,...][/dbname][?k=v&...]`: the
//!   credentials run to the *first* `@` after the scheme (a raw `?`, `/` or `:` in a password is
//!   part of it); the query starts at the first `?` after them.
//! - key=value form, `k = v k2='v 2'`: white space around `=` allowed; a value is quoted
//!   (`'...'`) or plain (to unescaped white space); a backslash escapes the next character in
//!   both.

/// Whether `s` is the URL form.
pub fn is_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// In a URL, the byte range of the credentials (`user[:password]`, after `://`, before the
/// first `@`), if there are any.
pub fn url_credentials(s: &str) -> Option<std::ops::Range<usize>> {
    let start = s.find("://")? + 3;
    let at = s[start..].find('@')?;
    Some(start..start + at)
}

/// In a URL, the byte offset of the `?` that starts the query, if any: the first `?` after the
/// credentials.
pub fn url_query_start(s: &str) -> Option<usize> {
    let from = url_credentials(s)
        .map(|c| c.end + 1)
        .or_else(|| s.find("://").map(|i| i + 3))
        .unwrap_or(0);
    s[from..].find('?').map(|i| from + i)
}

/// Bytes of a key=value value at the start of `v`: quoted (to the closing unescaped `'`, or the
/// end), or plain (to unescaped white space).
pub fn value_len(v: &str) -> usize {
    let (quoted, body) = match v.strip_prefix('\'') {
        Some(b) => (true, b),
        None => (false, v),
    };
    let offset = usize::from(quoted);
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '\'' if quoted => return offset + i + 1,
            c if !quoted && c.is_whitespace() => return i,
            _ => {}
        }
    }
    v.len()
}

/// The value a key=value value stands for: quotes removed, escapes applied.
pub fn unescape(raw: &str) -> String {
    let body = raw
        .strip_prefix('\'')
        .map(|b| b.strip_suffix('\'').unwrap_or(b))
        .unwrap_or(raw);
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `key=value` pairs of a key=value string: (key, value, the pair's raw text).
pub fn key_values(s: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut i = 0;
    let ws = |c: char| c.is_whitespace();
    while i < s.len() {
        let rest = &s[i..];
        let skip = rest.len() - rest.trim_start_matches(ws).len();
        i += skip;
        if i >= s.len() {
            break;
        }
        let start = i;
        let key_len = s[i..]
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(s.len() - i);
        let key = s[i..i + key_len].to_string();
        i += key_len;
        i += s[i..].len() - s[i..].trim_start_matches(ws).len();
        if s[i..].starts_with('=') {
            i += 1;
            i += s[i..].len() - s[i..].trim_start_matches(ws).len();
            let len = value_len(&s[i..]);
            let raw_value = &s[i..i + len];
            i += len;
            if !key.is_empty() {
                out.push((key, unescape(raw_value), s[start..i].to_string()));
            }
        } else if !key.is_empty() {
            out.push((key, String::new(), s[start..i].to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_as_tokio_postgres_reads_them() {
        let u = "postgresql://app:pa?ss/w@db:5432/odds?sslmode=require";
        assert_eq!(&u[url_credentials(u).unwrap()], "app:pa?ss/w");
        assert_eq!(&u[url_query_start(u).unwrap()..], "?sslmode=require");
        assert_eq!(url_query_start("postgresql://db/odds"), None);
        assert_eq!(
            &"postgresql://db/odds?x=1"[url_query_start("postgresql://db/odds?x=1").unwrap()..],
            "?x=1"
        );
        assert_eq!(url_credentials("postgresql://db/odds"), None);
    }

    #[test]
    fn key_values_with_quotes_escapes_and_spaces() {
        let kv = key_values("host=db password = 'a b\\'c' sslmode=require user=a\\ b");
        let pairs: Vec<(&str, &str)> = kv
            .iter()
            .map(|(k, v, _)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("host", "db"),
                ("password", "a b'c"),
                ("sslmode", "require"),
                ("user", "a b")
            ]
        );
        assert_eq!(kv[1].2, "password = 'a b\\'c'");
    }
}
