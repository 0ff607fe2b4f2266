//! Loading, validation and redaction of the configuration.

use super::raw::*;
use super::redact::*;
use super::*;

#[test]
fn redacts_passwords() {
    assert_eq!(
        redact_url("postgresql://app:s3cr%40t@db:5432/odds"),
        "postgresql://app:***@db:5432/odds"
    );
    assert_eq!(
        redact_url("postgresql://app@db/odds?password=hunter2&sslmode=require"),
        "postgresql://app@db/odds?password=***&sslmode=require"
    );
    assert_eq!(
        redact_url("host=db password='a b\\'c' user=app"),
        "host=db password=*** user=app"
    );
    assert_eq!(redact_url("host=db password=x"), "host=db password=***");
    assert_eq!(
        redact_url("postgresql://app@db/odds"),
        "postgresql://app@db/odds"
    );
}

/// Escapes `s` for a TOML basic string.
fn toml_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Every way a password can sit in a connection string, for `pw`.
fn connection_strings(pw: &str, ws_before: &str, ws_after: &str, port: &str) -> Vec<String> {
    let url_enc = pw.replace('%', "%25").replace('@', "%40");
    let query_enc = url_enc.replace('&', "%26");
    let quoted = pw.replace('\\', "\\\\").replace('\'', "\\'");
    let plain: String = pw
        .chars()
        .flat_map(|c| {
            let escape = c.is_whitespace() || c == '\\' || c == '\'';
            escape.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect();
    vec![
        format!("postgresql://app:{url_enc}@127.0.0.1:{port}/odds"),
        format!("postgresql://app:{pw}@127.0.0.1:{port}/odds"),
        format!("postgresql://app@127.0.0.1:{port}/odds?password={query_enc}&sslmode=disable"),
        format!("host=127.0.0.1 port={port} password{ws_before}={ws_after}'{quoted}' dbname=odds"),
        format!("host=127.0.0.1 port={port} password{ws_before}={ws_after}{plain} dbname=odds"),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Issue "Nothing lost, nobody in", item 7: random passwords of every printable ASCII
    /// character, in URL and key=value form, through every error path a configuration
    /// can reach before a connection is made, and the connection error itself.
    #[test]
    fn no_password_reaches_an_error(
        pw in "Zq[ -~]{6,24}",
        ws_before in " {0,2}",
        ws_after in " {0,2}",
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let url_enc = pw.replace('%', "%25").replace('@', "%40");
        let forms = [pw.clone(), url_enc.clone(), toml_escape(&pw), toml_escape(&url_enc)];
        let shows = |text: &str| forms.iter().find(|f| text.contains(f.as_str())).cloned();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for (i, url) in connection_strings(&pw, &ws_before, &ws_after, "notaport").iter().enumerate() {
            proptest::prop_assert_eq!(shows(&redact_url(url)), None, "redact_url, form {}: {}", i, url);
            // Invalid port: the validation error.
            std::fs::write(&path, format!("[database]\nurl = \"{}\"\n", toml_escape(url))).unwrap();
            let e = match Config::load(&path) {
                Err(e) => e.to_string(),
                // A raw `@` in a URL password moves the rest into the host part.
                Ok(c) => format!("{:?}", c.database),
            };
            proptest::prop_assert_eq!(shows(&e), None, "validation, form {}: {}", i, e);
            // A TOML syntax error on the url's own line (unterminated string) and on another.
            std::fs::write(&path, format!("[database]\nurl = \"{}\n", toml_escape(url))).unwrap();
            let e = Config::load(&path).unwrap_err().to_string();
            proptest::prop_assert_eq!(shows(&e), None, "TOML error, form {}: {}", i, e);
            std::fs::write(&path, format!("[database]\nurl = \"{}\"\nurl = 1\n", toml_escape(url))).unwrap();
            let e = Config::load(&path).unwrap_err().to_string();
            proptest::prop_assert_eq!(shows(&e), None, "duplicate key, form {}: {}", i, e);
        }
        for (i, url) in connection_strings(&pw, &ws_before, &ws_after, "1").iter().enumerate() {
            std::fs::write(&path, format!("[database]\nurl = \"{}\"\nconnect_timeout = \"1s\"\n", toml_escape(url))).unwrap();
            let Ok(config) = Config::load(&path) else {
                // A raw `@` or `/` in a URL password can make it invalid: covered above.
                continue;
            };
            let debug = format!("{:?}", config.database);
            proptest::prop_assert_eq!(shows(&debug), None, "Debug, form {}: {}", i, debug);
            let e = runtime
                .block_on(crate::db::connect(&config.database))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            proptest::prop_assert_eq!(shows(&e), None, "connect, form {}: {}", i, e);
        }
    }
}

#[test]
fn redacts_the_forms_that_leaked() {
    assert_eq!(
        redact_url("postgresql://app:pa?ss/w@db:5432/odds"),
        "postgresql://app:***@db:5432/odds"
    );
    assert_eq!(
        redact_url("host=db password = hunter2 user=app"),
        "host=db password = *** user=app"
    );
    assert_eq!(
        redact_url("host=db password=a\\ b user=app"),
        "host=db password=*** user=app"
    );
    assert_eq!(
        redact_url("postgresql://db/odds?password=a b&x=1"),
        "postgresql://db/odds?password=***&x=1"
    );
    assert_eq!(
        redact_url("no secrets: passwords=1"),
        "no secrets: passwords=1"
    );
}

/// Issue "Nothing lost, nobody in", item 6: a rotated password_file was not noticed on
/// reload, because the change was looked for in the redacted `Debug` text.
#[test]
fn a_rotated_password_is_a_change_of_settings() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = \"host=db user=app\"\npassword_file = \"{}\"\n",
            pw.display()
        ),
    )
    .unwrap();
    let write_pw = |p: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&pw, p).unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    write_pw("first");
    let before = Config::load(&cfg).unwrap().database;
    write_pw("second");
    let after = Config::load(&cfg).unwrap().database;
    assert_eq!(
        format!("{before:?}"),
        format!("{after:?}"),
        "Debug hides it"
    );
    assert_ne!(before, after);
}

#[test]
fn durations() {
    assert_eq!(duration("k", "200ms").unwrap(), Duration::from_millis(200));
    assert!(duration("k", "0s").is_err());
    assert!(duration("k", "soon").unwrap_err().contains("key `k`"));
}
