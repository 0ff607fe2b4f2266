//! The command line, in two phases: [`Args`] is what the user typed (clap), [`Mode`] is what
//! to do, validated. Usage errors exit 2 (clap's convention, and ours).

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Parser, ValueEnum};

use crate::ident::QualifiedName;

/// The git commit this binary was built from (`unknown` outside a git checkout).
pub const COMMIT: &str = env!("PARTWARDEN_COMMIT");

/// `--version`: the version and the commit.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PARTWARDEN_COMMIT"),
    ")"
);

/// Keeps a PostgreSQL odds store's partitions ahead of time, expires old ones with verified
/// archives, and checks routing and index health.
#[derive(Debug, Parser)]
#[command(name = "partwarden", version = VERSION, about, long_about = None)]
#[command(
    after_help = "Exit codes: 0 success, 1 the operation failed, 2 usage error, 78 configuration error.\n\
--check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.\n\
With no mode flag, partwarden runs as a daemon."
)]
pub struct Args {
    /// Configuration file.
    #[arg(
        long,
        value_name = "PATH",
        env = "PARTWARDEN_CONFIG",
        default_value = "config.toml"
    )]
    pub config: PathBuf,

    /// Create or adopt the odds schema, then create the partitions every table needs.
    #[arg(long, group = "mode")]
    pub bootstrap: bool,

    /// Report routing, runway and index health (monitoring-plugin exit codes).
    #[arg(long, group = "mode")]
    pub check: bool,

    /// Run one maintenance pass and exit.
    #[arg(long = "run-once", group = "mode")]
    pub run_once: bool,

    /// Restore an archived partition from its manifest.
    #[arg(long, group = "mode", value_name = "ARCHIVE")]
    pub restore: Option<PathBuf>,

    /// With --restore: the partitioned table to restore into, instead of the manifest's (which
    /// must otherwise be a configured table).
    #[arg(long, value_name = "SCHEMA.TABLE", value_parser = parse_target, requires = "restore")]
    pub target: Option<QualifiedName>,

    /// Print what would be done (every SQL statement, in order) and change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Plan as if the clock said this instant (RFC 3339); only with --dry-run.
    #[arg(long, value_name = "RFC3339", value_parser = parse_now, requires = "dry_run")]
    pub now: Option<DateTime<Utc>>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Print the man page or a shell's completions on stdout and exit (for packaging).
    #[arg(long, value_enum, value_name = "WHAT", hide = true, exclusive = true)]
    pub generate: Option<Generate>,
}

/// What `--generate` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Generate {
    /// The man page (roff), section 1.
    Man,
    /// bash completions.
    Bash,
    /// zsh completions.
    Zsh,
    /// fish completions.
    Fish,
}

impl Generate {
    /// Writes it to `out`.
    pub fn write(self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        use clap::CommandFactory;
        let mut cmd = Args::command();
        match self {
            Generate::Man => clap_mangen::Man::new(cmd).render(out),
            Generate::Bash => {
                clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "partwarden", out);
                Ok(())
            }
            Generate::Zsh => {
                clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, "partwarden", out);
                Ok(())
            }
            Generate::Fish => {
                clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, "partwarden", out);
                Ok(())
            }
        }
    }
}

/// Output format of reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// For machines.
    Json,
}

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `--bootstrap`.
    Bootstrap,
    /// `--check`.
    Check,
    /// `--run-once`.
    RunOnce,
    /// `--restore MANIFEST`.
    Restore(PathBuf),
    /// No mode flag.
    Daemon,
}

impl Args {
    /// The mode the flags select (clap already refused more than one).
    pub fn mode(&self) -> Mode {
        if self.bootstrap {
            Mode::Bootstrap
        } else if self.check {
            Mode::Check
        } else if self.run_once {
            Mode::RunOnce
        } else if let Some(p) = &self.restore {
            Mode::Restore(p.clone())
        } else {
            Mode::Daemon
        }
    }
}

fn parse_target(s: &str) -> Result<QualifiedName, String> {
    QualifiedName::parse(s)
}

fn parse_now(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("expected an RFC 3339 instant such as 2026-12-01T00:00:00Z ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_exclusive_and_now_needs_dry_run() {
        assert!(Args::try_parse_from(["partwarden", "--bootstrap", "--check"]).is_err());
        assert!(
            Args::try_parse_from(["partwarden", "--bootstrap", "--now", "2026-12-01T00:00:00Z"])
                .is_err()
        );
        let a = Args::try_parse_from([
            "partwarden",
            "--bootstrap",
            "--dry-run",
            "--now",
            "2026-12-01T00:00:00Z",
        ])
        .unwrap();
        assert_eq!(a.mode(), Mode::Bootstrap);
        assert_eq!(a.now.unwrap().to_rfc3339(), "2026-12-01T00:00:00+00:00");
        assert!(Args::try_parse_from(["partwarden", "--dry-run", "--now", "yesterday"]).is_err());
        assert_eq!(
            Args::try_parse_from(["partwarden"]).unwrap().mode(),
            Mode::Daemon
        );
    }
}
