//! One line for a database error, with its SQLSTATE: the only piece of the daemon's error
//! handling the odds write path needs, so it lives apart from `db` (connections, TLS,
//! configuration), which an application writer's build does not compile.

/// A database error in one line: the server's message, SQLSTATE and detail when it has them,
/// otherwise the client library's description with its cause.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(d) = db.detail() {
            s.push_str(": ");
            s.push_str(d);
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
