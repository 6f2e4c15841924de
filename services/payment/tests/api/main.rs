//! Integration tests of the payment service: real servers on port 0, real
//! Postgres and SQLite, the generated client.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod abandoned;
mod charge;
mod environments;
mod late;
mod leases;
mod migrations;
mod outcomes;
mod providers;
mod reconciliation;
mod refund;
mod statements;
mod stripe;
mod support;
mod void;
