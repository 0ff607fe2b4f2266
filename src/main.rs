//! The `partwarden` binary: flags, configuration, logging, then one mode. Everything else lives
//! in the library; this file only maps outcomes to the documented exit codes.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use partwarden::bootstrap;
use partwarden::cli::{Args, Format, Mode};
use partwarden::config::Config;

/// Success.
const EXIT_OK: u8 = 0;
/// The operation failed (database error, ...).
const EXIT_FAILED: u8 = 1;
/// Usage error (clap uses 2 as well).
const EXIT_USAGE: u8 = 2;
/// Configuration error (sysexits EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    let mode = args.mode();
    let flag = match &mode {
        Mode::Bootstrap => None,
        Mode::Check => Some("--check"),
        Mode::RunOnce => Some("--run-once"),
        Mode::Restore(_) => Some("--restore"),
        Mode::Daemon => Some("the daemon (no mode flag)"),
    };
    if let Some(flag) = flag {
        eprintln!("partwarden: {flag} is not implemented in this version yet; use --bootstrap");
        return ExitCode::from(EXIT_USAGE);
    }
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("partwarden: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("partwarden: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let opts = bootstrap::Options {
        dry_run: args.dry_run,
        now: args.now(),
    };
    let mut stdout = std::io::stdout().lock();
    match runtime.block_on(bootstrap::run(&config, opts, &mut stdout)) {
        Ok(summary) => {
            let text = match args.format {
                Format::Text => summary.to_text(),
                Format::Json => {
                    serde_json::to_string_pretty(&summary).expect("summary serialises") + "\n"
                }
            };
            let _ = stdout.write_all(text.as_bytes());
            ExitCode::from(if summary.ok() { EXIT_OK } else { EXIT_FAILED })
        }
        Err(e) => {
            eprintln!("partwarden: bootstrap failed: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Human-readable logs on stderr, filtered by `RUST_LOG` (default `info`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
