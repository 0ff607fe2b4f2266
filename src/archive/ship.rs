//! `archive_command`: each verified archive file handed to the operator's command, in a process
//! group of its own (killed whole on timeout) and without any database secret in its
//! environment.

use crate::db;
use std::path::Path;
use std::time::Duration;

/// Why archive_command did not ship a file.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// `sh` could not be started.
    #[error("cannot start sh: {0}")]
    Start(#[source] std::io::Error),
    /// Waiting for it failed.
    #[error("waiting for it: {0}")]
    Wait(#[source] std::io::Error),
    /// It ran past `archive_command_timeout` and was killed with its process group.
    #[error("killed (with its process group) after {after:?} for {file}")]
    TimedOut {
        /// The timeout.
        after: Duration,
        /// The file it was shipping.
        file: String,
    },
    /// It exited with a failure.
    #[error("{status} for {file}: {stderr}")]
    Failed {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The file it was shipping.
        file: String,
        /// The last line of its stderr, passwords redacted.
        stderr: String,
    },
}

/// Runs `archive_command` for one file, with `%p`, `%f` and `%%` replaced (paths quoted for the
/// shell).
///
/// The command runs in a process group of its own, and on timeout the whole group is killed:
/// killing only `sh` would leave its children running, reparented to init. It gets this
/// process's environment less every database secret ([`child_env_removals`]).
pub async fn run(
    cmd: &str,
    path: &Path,
    timeout: Duration,
    database: &crate::config::DatabaseConfig,
) -> Result<(), ShipError> {
    let file = path
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default();
    let expanded = expand_command(cmd, &path.display().to_string(), file);
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(&expanded)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for key in child_env_removals(database) {
        command.env_remove(key);
    }
    let child = command.spawn().map_err(ShipError::Start)?;
    let pgid = child.id().map(|id| nix::unistd::Pid::from_raw(id as i32));
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => {
            if let Some(pgid) = pgid {
                // The group's leader is sh itself; its children share the group.
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            }
            Err(ShipError::TimedOut {
                after: timeout,
                file: file.to_string(),
            })
        }
        Ok(Err(e)) => Err(ShipError::Wait(e)),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr
                .lines()
                .last()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect::<String>();
            Err(ShipError::Failed {
                status: out.status,
                file: file.to_string(),
                stderr: crate::config::redact_url(&last),
            })
        }
    }
}

/// The environment variables a child process must not inherit: libpq's (`PG*`: `PGPASSWORD`,
/// `PGPASSFILE`, ...), partwarden's own overrides (`PARTWARDEN*`, which may hold the database
/// URL), the object store's secrets (`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), and any
/// other whose value contains the database password or connection string, or an AWS secret.
pub fn child_env_removals(database: &crate::config::DatabaseConfig) -> Vec<std::ffi::OsString> {
    let mut secrets: Vec<String> = Vec::new();
    if let Some(p) = &database.password {
        secrets.push(p.clone());
    }
    if let Ok((cfg, _)) = db::pg_config(database)
        && let Some(p) = cfg.get_password()
    {
        secrets.push(String::from_utf8_lossy(p).into_owned());
    }
    secrets.push(database.url.clone());
    for k in AWS_SECRETS {
        if let Ok(v) = std::env::var(k) {
            secrets.push(v);
        }
    }
    secrets.retain(|s| !s.is_empty());
    std::env::vars_os()
        .filter(|(k, v)| {
            let k = k.to_string_lossy();
            let v = v.to_string_lossy();
            k.starts_with("PG")
                || k.starts_with("PARTWARDEN")
                || AWS_SECRETS.contains(&k.as_ref())
                || secrets.iter().any(|s| v.contains(s.as_str()))
        })
        .map(|(k, _)| k)
        .collect()
}

/// The AWS variables that hold secrets.
const AWS_SECRETS: [&str; 2] = ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"];

/// PostgreSQL-style `%p` / `%f` / `%%` expansion, with single-quoted shell words.
fn expand_command(cmd: &str, path: &str, file: &str) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut out = String::new();
    let mut chars = cmd.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.peek() {
                Some('p') => {
                    chars.next();
                    out.push_str(&quote(path));
                }
                Some('f') => {
                    chars.next();
                    out.push_str(&quote(file));
                }
                Some('%') => {
                    chars.next();
                    out.push('%');
                }
                _ => out.push('%'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_command_expansion_quotes_paths() {
        assert_eq!(
            expand_command(
                "cp %p /backup/%f && echo 100%%",
                "/a b/it's.zst",
                "it's.zst"
            ),
            "cp '/a b/it'\\''s.zst' /backup/'it'\\''s.zst' && echo 100%"
        );
    }
}
