//! `order-service`: the order service alone, configured by environment and
//! `/etc/config/config.yaml` (see `mercato_order::Settings`).

use std::process::ExitCode;

use mercato_platform::{service_main, shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    service_main("order-service", |settings| {
        mercato_order::run(settings, shutdown_signal())
    })
    .await
}
