//! The server shell shared by every mercato service.
//!
//! One job: turn a service's tonic handlers into a production process. The
//! pieces below it live in crates of their own — the database
//! (`mercato-database`), Redis (`mercato-redis`) and the API conventions
//! (`mercato-api`) — so that libraries such as the saga engine or the
//! activity feed need none of this shell. It owns
//! - [`settings`]: typed settings, layered defaults → optional YAML file → environment;
//! - [`server::Server`]: binds the gRPC (9090), HTTP probe (8080) and metrics (8081)
//!   ports, serves `grpc.health.v1.Health` and reflection v1 + v1alpha next to the
//!   services, and shuts down gracefully (NOT_SERVING, then drain within a deadline);
//! - [`probes`]: `/health/live`, `/health/ready` (runs [`probes::ReadinessCheck`]s),
//!   `/health/startup`;
//! - [`grpc_errors`]: field violations as `google.rpc.BadRequest` details;
//! - [`rate_limit`]: API-key rate limits shared through Redis;
//! - [`service_main`], [`run_alone`] and [`StartError`]: the shell of each per-service
//!   binary (telemetry from `mercato-telemetry`, settings, run until SIGTERM, flush);
//! - [`grpc_methods`]: the gRPC methods this build serves, which label metrics and spans.

pub mod grpc_errors;
pub mod probes;
pub mod rate_limit;
pub mod server;
pub mod settings;
mod shutdown;
mod start;

pub use server::grpc_methods;
pub use server::{Server, ServerError};
pub use settings::ServerSettings;
pub use shutdown::shutdown_signal;
pub use start::{StartError, run_alone, service_main};
