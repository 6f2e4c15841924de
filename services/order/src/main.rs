//! `order-service`: the order service alone, configured by environment and
//! `/etc/config/config.yaml` (see `mercato_order::Settings`).

use std::process::ExitCode;

use mercato_platform::{logging, settings, shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    logging::init(logging::LogFormat::Json);
    let settings: mercato_order::Settings = match settings::load() {
        Ok(settings) => settings,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    match mercato_order::run(settings, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "order service failed");
            ExitCode::FAILURE
        }
    }
}
