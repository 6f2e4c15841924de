//! The `user-service` binary as Kubernetes runs it: configured by a YAML file
//! plus environment variables, on Postgres and Redis, logging JSON, stopped
//! with SIGTERM.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use mercato_proto::user::v1::user_service_client::UserServiceClient;
use serde_json::Value;

use crate::{
    crud::create_req,
    helpers::{Db, RedisMode, TestDatabase, admin_channel, http_get},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_service_binary_reads_file_and_env_and_stops_on_sigterm() {
    let database = TestDatabase::create(Db::Postgres).await;
    let RedisMode::Url {
        url: redis_url,
        prefix,
    } = RedisMode::fresh()
    else {
        unreachable!()
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    // The file sets the gRPC address and an HTTP address the environment overrides.
    std::fs::write(
        &config,
        format!(
            "grpc_addr: 127.0.0.1:0
http_addr: 127.0.0.1:1
drain_timeout_secs: 3
{}",
            mercato_testkit::auth::settings_yaml()
        ),
    )
    .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_user-service"))
        .env_clear()
        .env("CONFIG_FILE", &config)
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("REST_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", &database.url)
        .env("REDIS_URL", &redis_url)
        .env("REDIS_KEY_PREFIX", &prefix)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let parsed = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("log line is not JSON: {line}"));
            if tx.send(parsed).is_err() {
                return;
            }
        }
    });
    let listening = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .expect("log line");
        for key in ["timestamp", "level", "message", "target"] {
            assert!(line.get(key).is_some(), "{key} in {line}");
        }
        if line["message"] == "user service listening" {
            break line;
        }
    };
    let grpc = listening["grpc"].as_str().unwrap().to_owned();
    let http: std::net::SocketAddr = listening["http"].as_str().unwrap().parse().unwrap();
    assert_ne!(http.port(), 1, "environment beats the file");

    let mut client = UserServiceClient::new(admin_channel(grpc.parse().unwrap()).await);
    client
        .create_user(create_req("binary@example.com", "Binary"))
        .await
        .unwrap();
    // A/B assignments made by this process…
    let mut experiments = crate::experiments::admin_client(grpc.parse().unwrap()).await;
    let mut sticky = crate::experiments::experiment("binary-sticky", &[50, 30, 20]);
    sticky.traffic_percent = 60;
    crate::experiments::create_running(&mut experiments, sticky).await;
    let mut by_binary = Vec::new();
    for i in 0..50 {
        by_binary.push(
            crate::experiments::assignment(&mut experiments, "binary-sticky", &format!("u{i}"))
                .await,
        );
    }

    let (code, body) = http_get(http, "/health/ready").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("\"redis\":\"ok\"") && body.contains("\"database\":\"ok\""),
        "{body}"
    );

    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");

    // …are the ones another process gives after the first has stopped.
    let other = crate::helpers::TestApp::spawn(&database, RedisMode::InProcess).await;
    let mut experiments = crate::experiments::admin_client(other.grpc_addr).await;
    for (i, answer) in by_binary.iter().enumerate() {
        assert_eq!(
            &crate::experiments::assignment(&mut experiments, "binary-sticky", &format!("u{i}"))
                .await,
            answer,
            "u{i}"
        );
    }
    other.shutdown().await;
}
