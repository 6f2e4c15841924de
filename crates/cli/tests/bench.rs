//! `mercato bench` against a real `mercato up`: every scenario's calls
//! succeed, the report adds up, and the open loop keeps its schedule.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // each test binary uses part of it
mod support;

use std::process::Command;

use serde_json::Value;

fn bench(up: &support::Up, args: &[&str]) -> Value {
    let json = up
        .data
        .path()
        .join(format!("bench-{}.json", args.join("-")));
    let status = Command::new(env!("CARGO_BIN_EXE_mercato"))
        .arg("bench")
        .args([
            "--user-addr",
            &up.grpc,
            "--order-addr",
            &up.grpc,
            "--token",
            &up.token,
        ])
        .args(["--connections", "2", "--warmup", "0.3", "--duration", "1"])
        .args(args)
        .arg("--json")
        .arg(&json)
        .status()
        .unwrap();
    assert!(status.success(), "mercato bench {args:?} failed");
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_every_scenario_and_keeps_the_open_loop_schedule() {
    let mut up = support::up().await;
    for scenario in [
        "health",
        "get-user",
        "create-user",
        "list-orders",
        "create-order",
        "mixed",
    ] {
        let report = bench(&up, &["--scenario", scenario, "--concurrency", "8"]);
        let calls = report["calls"].as_u64().unwrap();
        assert!(calls > 0, "{scenario}: {report}");
        assert_eq!(
            report["errors"],
            serde_json::json!({}),
            "{scenario}: {report}"
        );
        let l = &report["latency_us"];
        let (p50, p99, max) = (
            l["p50"].as_u64().unwrap(),
            l["p99"].as_u64().unwrap(),
            l["max"].as_u64().unwrap(),
        );
        assert!(0 < p50 && p50 <= p99 && p99 <= max, "{scenario}: {report}");
        let rate = report["calls_per_sec"].as_f64().unwrap();
        assert!(
            (rate - calls as f64).abs() < 1.0,
            "1 s measured: calls/s = calls ({report})"
        );
    }

    // Open loop: the calls made are the calls scheduled, whatever the latency.
    let report = bench(
        &up,
        &[
            "--scenario",
            "health",
            "--rate",
            "300",
            "--concurrency",
            "50",
        ],
    );
    let calls = report["calls"].as_u64().unwrap();
    assert!(
        (270..=330).contains(&calls),
        "300/s for 1 s made {calls} calls: {report}"
    );
    assert_eq!(report["mode"], "open loop at 300/s");

    up.child.kill().unwrap();
    up.child.wait().unwrap();
}
