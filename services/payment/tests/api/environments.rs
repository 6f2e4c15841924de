//! Where the simulated provider may run (issue 34): it takes no money, so
//! a service configured for staging or production refuses to start with
//! it unless `danger_allow_simulated_payments` says to — the binary itself,
//! configured by its environment as a Deployment configures it.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use mercato_testkit::processes::free_port;

/// Starts `payment-service` with `env` on a fresh SQLite file; returns
/// its exit status if it exits within `within`, and what it printed.
fn run(env: &[(&str, &str)], within: Duration) -> (Option<std::process::ExitStatus>, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, mercato_testkit::auth::settings_yaml()).unwrap();
    let log = dir.path().join("out.log");
    let addr = |port: u16| format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_payment-service"))
        .env_clear()
        .env("CONFIG_FILE", &config)
        .env("GRPC_ADDR", addr(free_port()))
        .env("HTTP_ADDR", addr(free_port()))
        .env("METRICS_ADDR", addr(0))
        .env("REST_ADDR", addr(0))
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/payment.db", dir.path().display()),
        )
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, std::fs::read_to_string(&log).unwrap())
}

#[test]
fn production_with_the_simulated_provider_does_not_start_and_says_why() {
    for environment in ["production", "staging"] {
        let (status, out) = run(
            &[("DEPLOYMENT_ENVIRONMENT", environment)],
            Duration::from_secs(20),
        );
        let status = status.expect("it exits");
        assert!(!status.success(), "{environment}: {out}");
        assert!(
            out.contains("payment_provider is simulated, which takes no money")
                && out.contains("danger_allow_simulated_payments"),
            "{environment}: {out}"
        );
    }
    let (status, out) = run(
        &[
            ("DEPLOYMENT_ENVIRONMENT", "production"),
            ("PAYMENT_PROVIDER", "stripe"),
        ],
        Duration::from_secs(20),
    );
    assert!(!status.expect("it exits").success(), "{out}");
    assert!(out.contains("stripe_secret_key_file"), "{out}");
}

#[test]
fn the_simulated_provider_runs_in_production_only_when_allowed_loudly() {
    let (status, out) = run(
        &[
            ("DEPLOYMENT_ENVIRONMENT", "production"),
            ("DANGER_ALLOW_SIMULATED_PAYMENTS", "true"),
        ],
        Duration::from_secs(5),
    );
    assert_eq!(status, None, "it keeps running: {out}");
    assert!(
        out.contains("DANGER: the simulated payment provider"),
        "{out}"
    );
    // Development is the default, and runs it quietly.
    let (status, out) = run(&[], Duration::from_secs(5));
    assert_eq!(status, None, "it keeps running: {out}");
    assert!(!out.contains("DANGER"), "{out}");
}
