//! partwarden keeps a PostgreSQL odds store healthy: it owns the schema bootstrap, keeps
//! `market_odds_history`'s partitions ahead of time, and (in later modules) expires old ones
//! with verified archives and checks routing and index health.
//!
//! An application that only writes odds depends on this crate with `default-features = false`
//! and compiles [`odds`] (and [`dberror`]) with tokio-postgres, serde, serde_json, chrono and
//! thiserror, nothing else; the `daemon` feature (on by default) brings the rest.
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

#[cfg(feature = "daemon")]
pub mod archive;
#[cfg(feature = "daemon")]
pub mod bootstrap;
#[cfg(feature = "daemon")]
pub mod catalog;
#[cfg(feature = "daemon")]
pub mod check;
#[cfg(feature = "daemon")]
pub mod cli;
#[cfg(feature = "daemon")]
pub(crate) mod clock;
#[cfg(feature = "daemon")]
pub mod config;
#[cfg(feature = "daemon")]
pub(crate) mod connstr;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "daemon")]
pub mod db;
pub mod dberror;
#[cfg(feature = "daemon")]
pub(crate) mod expiry;
#[cfg(feature = "daemon")]
pub(crate) mod fault;
#[cfg(feature = "daemon")]
pub mod ident;
#[cfg(feature = "daemon")]
pub(crate) mod indexes;
#[cfg(feature = "daemon")]
pub(crate) mod ledger;
#[cfg(feature = "daemon")]
pub(crate) mod lock;
#[cfg(feature = "daemon")]
pub(crate) mod metrics;
#[cfg(feature = "daemon")]
pub mod migrate;
#[cfg(feature = "daemon")]
pub(crate) mod notify;
pub mod odds;
#[cfg(feature = "daemon")]
pub mod pass;
#[cfg(feature = "daemon")]
pub mod period;
#[cfg(feature = "daemon")]
pub(crate) mod premake;
#[cfg(feature = "daemon")]
pub mod restore;
#[cfg(feature = "daemon")]
pub(crate) mod scheduler;
#[cfg(feature = "daemon")]
pub(crate) mod shape;
#[cfg(feature = "daemon")]
pub mod step;
#[cfg(feature = "daemon")]
pub(crate) mod tls;
