//! Secrets out of anything that may quote a connection string or a config file: URL
//! credentials, password parameters, the values of secret keys in TOML errors.

use std::path::Path;

use super::ENV_PREFIX;

/// credentials of a URL (`postgresql://user:secret@host`) and the value of a `password`
/// parameter (key=value form, quoted or not, spaces around `=` allowed; URL query form).
///
/// It reads them the way tokio-postgres (and libpq) parse them, and where the two could
/// disagree it hides more, never less: URL credentials run from the first `:` to the last
/// `@` (an unescaped `@`, `/` or `?` in the password cannot end them early); an unquoted
/// key=value value runs to unescaped white space, a URL query value to the next `&`.
pub fn redact_url(s: &str) -> String {
    redact_password_params(&redact_url_credentials(s))
}

pub(super) fn redact_url_credentials(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        // The credentials as tokio-postgres reads them (`connstr`): up to the first `@`.
        let Some(creds) =
            crate::connstr::url_credentials(&rest[i..]).map(|r| (r.start + i)..(r.end + i))
        else {
            out.push_str(&rest[..i + 3]);
            rest = &rest[i + 3..];
            continue;
        };
        let Some(colon) = rest[creds.clone()].find(':') else {
            out.push_str(&rest[..i + 3]);
            rest = &rest[i + 3..];
            continue;
        };
        // Hide more, never less: up to the last `@`, in case a raw `@` is in the password.
        let last_at = rest.rfind('@').expect("an @ was found");
        out.push_str(&rest[..creds.start + colon + 1]);
        out.push_str("***");
        rest = &rest[last_at..];
    }
    out.push_str(rest);
    out
}

pub(super) fn redact_password_params(s: &str) -> String {
    const KEY: &str = "password";
    let mut out = String::with_capacity(s.len());
    let mut from = 0;
    let mut search = 0;
    while let Some(found) = s[search..].find(KEY) {
        let at = search + found;
        search = at + KEY.len();
        let before = s[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let in_url_query = matches!(before, Some('?' | '&')) && s[..at].contains("://");
        // Optional white space, `=`, optional white space.
        let mut rest = s[search..].char_indices().peekable();
        let mut eq = None;
        while let Some(&(i, c)) = rest.peek() {
            if c == '=' && eq.is_none() {
                eq = Some(i);
                rest.next();
            } else if c.is_whitespace() && !in_url_query {
                rest.next();
            } else {
                break;
            }
        }
        if eq.is_none() {
            continue;
        }
        let value_start = search + rest.peek().map_or(s.len() - search, |&(i, _)| i);
        let value = &s[value_start..];
        let len = if in_url_query {
            value.find('&').unwrap_or(value.len())
        } else {
            crate::connstr::value_len(value)
        };
        out.push_str(&s[from..value_start]);
        out.push_str("***");
        from = value_start + len;
        search = from.max(search);
    }
    out.push_str(&s[from..]);
    out
}

/// Error texts of the TOML parser quote the offending line of the file, escaped as it is
/// there, and the environment source may quote a value: replaces, in `message`, the value of
/// every `...url` or `...password...` key of the file and of `PARTWARDEN__*` variables with
/// `***`, whatever the redactor could make of it.
pub(super) fn scrub_secret_values(message: &str, path: &Path) -> String {
    let secret_key = |k: &str| {
        let k = k.trim().to_ascii_lowercase();
        k.ends_with("url") || k.contains("password")
    };
    let mut values: Vec<String> = Vec::new();
    if let Ok(text) = std::fs::read_to_string(path) {
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=')
                && secret_key(k)
            {
                values.push(v.trim().to_string());
                values.push(v.trim().trim_matches(['"', '\'']).to_string());
            }
        }
    }
    for (k, v) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with(ENV_PREFIX) && secret_key(&k) {
            values.push(v.to_string_lossy().into_owned());
        }
    }
    values.retain(|v| v.len() >= 2);
    // Longest first, so that a value inside another is not left half replaced.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut out = message.to_string();
    for v in values {
        out = out.replace(&v, "***");
    }
    out
}

pub(super) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
