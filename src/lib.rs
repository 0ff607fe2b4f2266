//! partwarden keeps a PostgreSQL odds store healthy: it owns the schema bootstrap, keeps
//! `market_odds_history`'s partitions ahead of time, and (in later modules) expires old ones
//! with verified archives and checks routing and index health.
//!
//! Module map (see `ARCHITECTURE.md` for the invariants that tie them together):
//!
//! - [`cli`]: command-line flags into a [`cli::Mode`].
//! - [`config`]: `config.toml` and `PARTWARDEN__*` overrides into a validated [`config::Config`].
//! - [`ident`]: identifiers from configuration, validated and quoted.
//! - [`period`]: UTC calendar arithmetic for daily, weekly and monthly partitions.
//! - [`clock`]: the database server's clock, and the host's compared with it.
//! - [`db`]: opening sessions (UTC, timeouts, no secrets in errors).
//! - [`catalog`]: snapshots of tables, partitions and indexes from `pg_catalog`.
//! - [`shape`]: the odds tables' expected shape, compared field by field.
//! - [`migrate`]: embedded migrations of `schema/`, planned, applied or adopted.
//! - [`premake`]: the pure planner of partitions to create, and runway.
//! - [`ddl`]: the executor: every DDL action in its own transaction under lock_timeout, retried.
//! - [`bootstrap`]: `--bootstrap`, tying the above together.

pub mod archive;
pub mod bootstrap;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod copyfmt;
pub mod daemon;
pub mod db;
pub mod ddl;
pub mod expiry;
pub mod fault;
pub mod ident;
pub mod indexes;
pub mod ledger;
pub mod metrics;
pub mod migrate;
pub mod notify;
pub mod odds;
pub mod pass;
pub mod period;
pub mod premake;
pub mod restore;
pub mod scheduler;
pub mod shape;
pub mod tls;
