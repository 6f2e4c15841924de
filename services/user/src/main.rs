//! `user-service`: the user service alone, configured by environment and
//! `/etc/config/config.yaml` (see `mercato_user::Settings`).

use std::process::ExitCode;

use mercato_platform::{service_main, shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    service_main("user-service", |settings| {
        mercato_user::run(settings, shutdown_signal())
    })
    .await
}
