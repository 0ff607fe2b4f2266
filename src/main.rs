//! The `partwarden` binary: flags, configuration, logging, then one mode. Everything else lives
//! in the library; this file only maps outcomes to the documented exit codes.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use partwarden::cli::{Args, Format, Mode};
use partwarden::config::{Config, LogFormat};
use partwarden::{bootstrap, check, daemon, pass, restore};

/// Success.
const EXIT_OK: u8 = 0;
/// The operation failed (database error, ...).
const EXIT_FAILED: u8 = 1;
/// Configuration error (sysexits EX_CONFIG). Usage errors exit 2, from clap.
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(what) = args.generate {
        return match what.write(&mut std::io::stdout()) {
            Ok(()) => ExitCode::from(EXIT_OK),
            Err(e) => {
                eprintln!("partwarden: --generate: {e}");
                ExitCode::from(EXIT_FAILED)
            }
        };
    }
    let mode = args.mode();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        // --check speaks the monitoring-plugin convention even here: UNKNOWN, and valid JSON.
        Err(e) if mode == Mode::Check => {
            let report =
                check::Report::unknown("configuration", format!("configuration error: {e}"));
            print(
                &mut std::io::stdout(),
                args.format,
                &report,
                report.to_text(check::colour()),
            );
            return ExitCode::from(report.status.exit_code());
        }
        Err(e) => {
            eprintln!("partwarden: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing(config.daemon.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("partwarden: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let mut stdout = std::io::stdout();
    let code = runtime.block_on(async {
        match mode {
            Mode::Bootstrap => {
                let opts = bootstrap::Options {
                    dry_run: args.dry_run,
                    now: args.now,
                };
                match bootstrap::run(&config, opts, &mut stdout).await {
                    Ok(summary) => {
                        print(&mut stdout, args.format, &summary, summary.to_text());
                        if summary.ok() { EXIT_OK } else { EXIT_FAILED }
                    }
                    Err(e) => {
                        eprintln!("partwarden: bootstrap failed: {e}");
                        EXIT_FAILED
                    }
                }
            }
            Mode::RunOnce => {
                let opts = pass::Options {
                    dry_run: args.dry_run,
                    now: args.now,
                };
                match pass::run_once(&config, opts, &mut stdout).await {
                    Ok(report) => {
                        print(&mut stdout, args.format, &report, report.to_text());
                        if report.ok() { EXIT_OK } else { EXIT_FAILED }
                    }
                    Err(e) => {
                        eprintln!("partwarden: maintenance pass failed: {e}");
                        EXIT_FAILED
                    }
                }
            }
            Mode::Restore(manifest) => match restore::run(&config, &manifest, args.target.as_ref(), args.dry_run, &mut stdout).await {
                Ok(outcome) => {
                    print(&mut stdout, args.format, &outcome, outcome.to_text());
                    EXIT_OK
                }
                Err(e) => {
                    eprintln!("partwarden: restore failed: {e}");
                    EXIT_FAILED
                }
            },
            Mode::Check => {
                let report = check::run(&config, args.now).await;
                print(&mut stdout, args.format, &report, report.to_text(check::colour()));
                report.status.exit_code()
            }
            Mode::Daemon => {
                if args.dry_run {
                    eprintln!("partwarden: --dry-run needs a mode (--bootstrap, --run-once, --restore); the daemon has none");
                    return 2;
                }
                let shutdown = match daemon::signals() {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("partwarden: daemon cannot start: {e}");
                        return EXIT_FAILED;
                    }
                };
                match daemon::run(args.config.clone(), config.clone(), shutdown).await {
                    Ok(()) => EXIT_OK,
                    Err(e) => {
                        eprintln!("partwarden: daemon cannot start: {e}");
                        EXIT_FAILED
                    }
                }
            }
        }
    });
    ExitCode::from(code)
}

fn print<T: serde::Serialize>(out: &mut impl Write, format: Format, value: &T, text: String) {
    let text = match format {
        Format::Text => text,
        Format::Json => serde_json::to_string_pretty(value).expect("reports serialise") + "\n",
    };
    let _ = out.write_all(text.as_bytes());
}

/// Logs on stderr, filtered by `RUST_LOG` (default `info`), as text or JSON lines.
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_cron_scheduler=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}
