//! Integration tests of the user service: real servers on port 0, real
//! Postgres, SQLite and Redis, the generated client. `helpers` explains the
//! isolation; `scripts/test.sh` makes sure Postgres and Redis are running.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod api_keys;
mod binary;
mod cache;
mod crud;
mod experiments;
mod helpers;
mod lifecycle;
mod metrics;
mod storage;
mod stream;
