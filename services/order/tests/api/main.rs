//! Integration tests of the order service and its saga: real user, payment
//! and order servers on port 0 talking gRPC to each other, real Postgres
//! (and SQLite where it applies). Crash tests run the order service as a
//! real child process that aborts at an injected crash point.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod catalog;
mod chaos;
mod commits;
mod concurrency;
mod crash;
mod credentials;
mod held_rows;
mod invariants;
mod micro;
mod outage;
mod providers;
mod refunds;
mod replicas;
mod saga;
mod security;
mod settling;
mod support;
mod telemetry;
