//! `payment-service`: the payment service alone, configured by environment and
//! `/etc/config/config.yaml` (see `mercato_payment::Settings`).

use std::process::ExitCode;

use mercato_platform::{service_main, shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    service_main("payment-service", |settings| {
        mercato_payment::run(settings, shutdown_signal())
    })
    .await
}
