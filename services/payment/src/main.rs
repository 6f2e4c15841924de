//! `payment-service`: the payment service alone, configured by environment and
//! `/etc/config/config.yaml` (see `mercato_payment::Settings`).

/// mimalloc: measured faster than the system allocator on the hot path,
/// and the shipped image is a musl build, whose own allocator is slow
/// under threads (docs/benchmarks.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use mercato_platform::{service_main, shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    service_main(
        "payment-service",
        |settings| mercato_payment::run(settings, shutdown_signal()),
        mercato_payment::migrate,
    )
    .await
}
