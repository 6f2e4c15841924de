//! The user service: registration, profiles and status of the shop's users,
//! a two-tier cache in front of the database, and a per-user activity stream
//! fed by every service of the suite.
//!
//! Layers, outside in: [`grpc::UserGrpc`] (tonic adapter) → [`users::Users`]
//! (use cases) → [`store::UserStore`] (SQL, Postgres or SQLite),
//! [`cache::UserCache`] (moka + Redis) and the shared
//! `mercato_activity::ActivityFeed` (in-process or Redis Streams). [`domain`] holds the validated types and
//! knows nothing of tonic or SQL. [`app`] reads settings and wires it all
//! into a `mercato_platform::Server`. [`experiments`] serves
//! `experiment.v1.ExperimentService` from the same database.

pub mod api_keys;
pub mod app;
pub mod cache;
pub mod domain;
pub mod error;
pub mod experiments;
pub mod grpc;
pub mod store;
pub mod users;

pub use app::{Settings, activity_feed, install, migrate, run};
pub use mercato_platform::StartError;
