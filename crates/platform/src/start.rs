//! Starting one service on its own (the per-service binaries).

use std::{future::Future, process::ExitCode};

use mercato_telemetry::TelemetrySettings;
use serde::{Serialize, de::DeserializeOwned};

use mercato_auth::AuthSettings;
use mercato_database::DatabaseError;
use mercato_redis::{Redis, RedisUnavailable};

use crate::{Server, ServerSettings, server::ServerError, settings, settings::SettingsError};

/// A service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error("invalid redis settings: {0}")]
    Redis(#[from] RedisUnavailable),
    #[error(transparent)]
    Server(#[from] ServerError),
    /// Any other invalid setting, with a message naming it.
    #[error("{0}")]
    Invalid(String),
}

/// The composition root of a per-service binary: binds `settings`, lets
/// `install` add the service, guards it with `auth` (API-key rate limits
/// shared through `redis`), logs `"<name> listening"` with the bound
/// addresses, and serves until `signal`.
pub async fn run_alone(
    name: &str,
    settings: ServerSettings,
    auth: &AuthSettings,
    redis: Option<Redis>,
    install: impl AsyncFnOnce(&mut Server) -> Result<(), StartError>,
    signal: impl Future<Output = ()>,
) -> Result<(), StartError> {
    settings.validate()?;
    let mut server = Server::bind(settings).await?;
    install(&mut server).await?;
    server.protect(auth, redis)?;
    tracing::info!(
        grpc = %server.grpc_addr(),
        http = %server.http_addr(),
        metrics = %server.metrics_addr(),
        rest = ?server.rest_addr(),
        "{name} listening"
    );
    server.run(signal).await?;
    Ok(())
}

/// The whole `main` of a per-service binary: telemetry (settings `LOG_LEVEL`,
/// `LOG_FORMAT` and the `OTEL_*` variables), the service's settings, then
/// the command — none: `run` (serve); `migrate`: `migrate` (apply the
/// service's database migrations and exit, what a migration Job runs) —
/// then flushing the spans still batched.
pub async fn service_main<S, F, M>(
    service: &'static str,
    run: impl FnOnce(S) -> F,
    migrate: impl FnOnce(S) -> M,
) -> ExitCode
where
    S: Serialize + DeserializeOwned + Default,
    F: Future<Output = Result<(), StartError>>,
    M: Future<Output = Result<(), StartError>>,
{
    let (telemetry_settings, telemetry_error) = match settings::load::<TelemetrySettings>() {
        Ok(settings) => (settings, None),
        Err(e) => (TelemetrySettings::default(), Some(e)),
    };
    let telemetry = mercato_telemetry::init(service, &telemetry_settings);
    let command = std::env::args().nth(1);
    let code = match (telemetry_error, settings::load::<S>(), command.as_deref()) {
        (Some(e), _, _) | (None, Err(e), _) => {
            tracing::error!(error = %e, "cannot start");
            ExitCode::FAILURE
        }
        (None, Ok(settings), command @ (None | Some("migrate"))) => {
            let done = match command {
                None => run(settings).await,
                Some(_) => migrate(settings).await,
            };
            match done {
                Ok(()) => {
                    if command.is_some() {
                        tracing::info!("{service}: migrations applied");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!(error = %e, "{service} failed");
                    ExitCode::FAILURE
                }
            }
        }
        (None, Ok(_), Some(other)) => {
            tracing::error!(
                "unknown command {other:?}: `{service}` serves, `{service} migrate` applies its database migrations and exits"
            );
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}
