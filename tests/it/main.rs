//! Integration tests against a real PostgreSQL (see `support.rs`). One binary, one module per
//! concern; every test gets a database of its own named after it.

mod any_table;
mod bootstrap;
mod catalog_truth;
mod check;
mod cli;
mod daemon;
mod faults;
mod ha;
mod lifecycle;
mod monitoring;
mod nothing_lost;
mod odds;
mod parquet;
mod pg;
mod round_two;
mod security;
mod store;
mod support;
mod takeover;
mod tls;
