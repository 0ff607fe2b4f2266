//! partwarden keeps a PostgreSQL odds store healthy: it owns the schema bootstrap, keeps
//! `market_odds_history`'s partitions ahead of time, expires old ones into verified archives,
//! and checks routing and index health.
//!
//! **Application writers** depend on this crate with `default-features = false` and get
//! [`odds`] (the write path) and [`dberror`], compiled with tokio-postgres, serde, serde_json,
//! chrono, thiserror and bytes only (`scripts/check-odds-deps.sh` keeps it so).
//!
//! **The daemon** (feature `daemon`, on by default) is driven through a small public surface:
//! the operations [`bootstrap::run`], [`pass::run_once`] / [`pass::run`], [`check::run`],
//! [`restore::run`] and [`daemon::run`], their [`config::Config`] and reports, and the
//! read-only views a tool or a test may use ([`catalog::snapshot`], the [`archive`] format,
//! [`migrate::MIGRATIONS`]). Everything else is `pub(crate)`: planners, the step executor,
//! the ledger, locks, metrics. See `ARCHITECTURE.md` for the map and the invariants.

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
pub(crate) mod drain;
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
pub(crate) mod step;
#[cfg(feature = "daemon")]
pub(crate) mod tls;
#[cfg(feature = "daemon")]
pub(crate) mod unmanaged;

#[cfg(feature = "daemon")]
pub use step::StepError;
