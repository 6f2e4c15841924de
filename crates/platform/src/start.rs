//! Starting one service on its own (the per-service binaries).

use std::future::Future;

use crate::{
    Server, ServerSettings, database::DatabaseError, redis::RedisUnavailable, server::ServerError,
    settings::SettingsError,
};

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

/// Binds `settings`, lets `install` add the service, logs
/// `"<name> listening"` with the bound addresses, and serves until `signal`.
pub async fn run_alone(
    name: &str,
    settings: ServerSettings,
    install: impl AsyncFnOnce(&mut Server) -> Result<(), StartError>,
    signal: impl Future<Output = ()>,
) -> Result<(), StartError> {
    settings.validate()?;
    let mut server = Server::bind(settings).await?;
    install(&mut server).await?;
    tracing::info!(
        grpc = %server.grpc_addr(),
        http = %server.http_addr(),
        metrics = %server.metrics_addr(),
        "{name} listening"
    );
    server.run(signal).await?;
    Ok(())
}
