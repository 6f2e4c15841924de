//! Server bootstrap shared by every mercato service.
//!
//! One job: turn a service's tonic handlers into a production process. It owns
//! - [`settings`]: typed settings, layered defaults → optional YAML file → environment;
//! - [`server::Server`]: binds the gRPC (9090), HTTP probe (8080) and metrics (8081)
//!   ports, serves `grpc.health.v1.Health` and reflection v1 + v1alpha next to the
//!   services, and shuts down gracefully (NOT_SERVING, then drain within a deadline);
//! - [`probes`]: `/health/live`, `/health/ready` (runs [`probes::ReadinessCheck`]s),
//!   `/health/startup`;
//! - [`database`] and [`redis`]: connecting to Postgres/SQLite (sqlx `Any`, portable SQL,
//!   embedded migrations) and to Redis with bounded timeouts;
//! - [`grpc_errors`], [`pagination`], [`money`] and [`time`]: the API conventions every service shares
//!   (`google.rpc.BadRequest` details, opaque AIP-158 page tokens);
//! - [`service_main`], [`run_alone`] and [`StartError`]: the shell of each per-service
//!   binary (telemetry from `mercato-telemetry`, settings, run until SIGTERM, flush);
//! - [`grpc_methods`]: the gRPC methods this build serves, which label metrics and spans.

pub mod database;
pub mod grpc_errors;
pub mod money;
pub mod pagination;
pub mod probes;
pub mod rate_limit;
pub mod redis;
pub mod server;
pub mod settings;
mod shutdown;
mod start;
pub mod time;

pub use server::Server;
pub use server::grpc_methods;
pub use settings::ServerSettings;
pub use shutdown::shutdown_signal;
pub use start::{StartError, run_alone, service_main};
