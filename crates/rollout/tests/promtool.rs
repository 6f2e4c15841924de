//! Every query the controller generates, evaluated by `promtool test rules`
//! (Debian's prometheus package) on synthetic series shaped as the services
//! export them and the Prometheus operator labels them: what each check
//! answers for a healthy canary (only `OK` series), an erroring one, one
//! that only fails, one that sheds calls, one without traffic, and beside a
//! failing stable Deployment and a failing previous canary ReplicaSet it
//! must not see.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use mercato_rollout::{
    Check, RolloutSpec,
    analysis::{Pods, mesh_traffic_promql, traffic_promql},
};
use mercato_testkit::processes::LogDir;
use serde_json::{Value, json};

const CANARY: &str =
    r#"namespace="mercato",pod="order-service-canary-5d4f8b7c9-abcde",grpc_method="PlaceOrder""#;
const STABLE: &str =
    r#"namespace="mercato",pod="order-service-7c9d6f5b4-xyz12",grpc_method="PlaceOrder""#;
/// A pod of the canary's previous ReplicaSet (the release before), whose
/// series stay in the window after it is gone.
const PREVIOUS_CANARY: &str =
    r#"namespace="mercato",pod="order-service-canary-77c6d8f9b-qwert",grpc_method="PlaceOrder""#;
/// The `pod-template-hash` of the canary's current ReplicaSet.
const HASH: &str = "5d4f8b7c9";

/// The shipped shape: one analysis a minute, over a minute.
fn spec() -> RolloutSpec {
    RolloutSpec {
        analysis: vec![Check::success_rate(99.0), Check::latency_p99(0.5)],
        ..RolloutSpec::new("order-service")
    }
}

/// A counter of `labels` growing by `per_scrape` every 15 s for 10 minutes.
fn counter(name: &str, labels: &str, per_scrape: f64) -> Value {
    json!({"series": format!("{name}{{{labels}}}"), "values": format!("0+{per_scrape}x40")})
}

fn handled(labels: &str, code: &str, per_scrape: f64) -> Value {
    counter(
        "grpc_server_handled_total",
        &format!(r#"{labels},grpc_code="{code}""#),
        per_scrape,
    )
}

/// `expr` at 5 minutes: one sample of `value` (to a thousandth: sums of
/// rates carry float noise, in an order that changes from run to run), or
/// none.
fn expect(expr: &str, value: Option<f64>) -> Value {
    let (expr, samples) = match value {
        Some(value) => (
            format!("round(1000 * ({expr}))"),
            json!([{"labels": "{}", "value": (value * 1000.0).round()}]),
        ),
        None => (expr.to_owned(), json!([])),
    };
    json!({"expr": expr, "eval_time": "5m", "exp_samples": samples})
}

/// Runs one promtool test group: `series` in, each query's expectation.
fn promtool(series: Vec<Value>, expectations: Vec<Value>) {
    let dir = LogDir::new("mercato-promtool-");
    let file = dir.path().join("analysis_test.yaml");
    let test = json!({
        "evaluation_interval": "1m",
        "tests": [{"interval": "15s", "input_series": series, "promql_expr_test": expectations}],
    });
    std::fs::write(&file, serde_yaml::to_string(&test).unwrap()).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (Debian: apt-get install -y prometheus; scripts/test.sh does)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn queries() -> (String, String, String) {
    let spec = spec();
    let pods = Pods {
        namespace: "mercato",
        template_hash: Some(HASH),
    };
    (
        traffic_promql(&spec, &pods),
        spec.analysis[0].promql(&spec, &pods).unwrap(),
        spec.analysis[1].promql(&spec, &pods).unwrap(),
    )
}

#[test]
fn a_canary_that_never_failed_scores_100_beside_a_failing_stable_and_previous_canary() {
    let (traffic, success, _) = queries();
    promtool(
        vec![
            // 2 calls/s, all OK: the canary has no error series at all.
            handled(CANARY, "OK", 30.0),
            // The stable Deployment's pods fail; they are not the canary.
            handled(STABLE, "OK", 15.0),
            handled(STABLE, "Internal", 15.0),
            // Nor is the previous canary release, rolled back for its errors.
            handled(PREVIOUS_CANARY, "Internal", 30.0),
        ],
        vec![expect(&traffic, Some(120.0)), expect(&success, Some(100.0))],
    );
}

#[test]
fn server_errors_and_shed_calls_count_against_the_canary_but_client_errors_do_not() {
    let (_, success, _) = queries();
    promtool(
        vec![
            handled(CANARY, "OK", 24.0),
            handled(CANARY, "Internal", 3.0),
            handled(CANARY, "ResourceExhausted", 3.0),
            // The callers' mistakes, not the canary's.
            handled(CANARY, "InvalidArgument", 30.0),
            handled(CANARY, "NotFound", 30.0),
        ],
        // (24 + 30 + 30) / 90 calls.
        vec![expect(&success, Some(100.0 * 84.0 / 90.0))],
    );
}

#[test]
fn a_canary_that_only_fails_scores_0_not_no_data() {
    let (_, success, _) = queries();
    promtool(
        vec![handled(CANARY, "Unavailable", 30.0)],
        vec![expect(&success, Some(0.0))],
    );
}

#[test]
fn a_canary_without_traffic_shows_none_to_the_traffic_gate() {
    let (traffic, success, p99) = queries();
    // Series exist (a scrape after start) but nothing is called.
    promtool(
        vec![handled(CANARY, "OK", 0.0)],
        vec![
            expect(&traffic, Some(0.0)),
            // 0/0: NaN, which the analysis takes as no verdict; the gate
            // (0 < minRequests) holds the weight before it is asked.
            // (NaN is the one value not equal to itself.)
            expect(&format!("({success}) != bool ({success})"), Some(1.0)),
            expect(&p99, None),
        ],
    );
    // No series at all (a canary never scraped): no data, as the gate reads it.
    promtool(
        vec![handled(STABLE, "OK", 30.0)],
        vec![expect(&traffic, None)],
    );
}

#[test]
fn latency_p99_is_read_from_the_canarys_unary_buckets() {
    let (_, _, p99) = queries();
    let bucket = |le: &str, per_scrape: f64| {
        counter(
            "grpc_server_handling_seconds_bucket",
            &format!(r#"{CANARY},grpc_type="unary",le="{le}""#),
            per_scrape,
        )
    };
    promtool(
        vec![
            // 100 calls a scrape: 90 under 0.1 s, 8 more under 0.25 s, 2 more under 0.5 s.
            bucket("0.1", 90.0),
            bucket("0.25", 98.0),
            bucket("0.5", 100.0),
            bucket("+Inf", 100.0),
            // A slow stream is not a unary call.
            counter(
                "grpc_server_handling_seconds_bucket",
                &format!(r#"{CANARY},grpc_type="server_stream",le="+Inf""#),
                100.0,
            ),
        ],
        // Rank 99 of 100 is halfway through the (0.25, 0.5] bucket.
        vec![expect(&p99, Some(0.375))],
    );
}

/// What the callers' sidecars report about the service (`reporter="source"`).
const MESH: &str = r#"reporter="source",destination_service_name="order-service",destination_service_namespace="mercato",source_workload="istio-ingressgateway""#;

fn mesh_queries() -> (String, String) {
    let spec = RolloutSpec {
        analysis: vec![Check::mesh_success_rate(99.0)],
        ..RolloutSpec::new("order-service")
    };
    let pods = Pods {
        namespace: "mercato",
        template_hash: Some(HASH),
    };
    (
        mesh_traffic_promql(&spec, &pods),
        spec.analysis[0].promql(&spec, &pods).unwrap(),
    )
}

fn requests(labels: &str, response: &str, grpc: Option<&str>, per_scrape: f64) -> Value {
    let grpc = grpc.map_or(String::new(), |g| format!(r#",grpc_response_status="{g}""#));
    counter(
        "istio_requests_total",
        &format!(r#"{labels},response_code="{response}"{grpc}"#),
        per_scrape,
    )
}

#[test]
fn the_mesh_check_counts_what_the_callers_sidecars_saw_fail() {
    let (traffic, success) = mesh_queries();
    // Healthy: every call OK (client mistakes such as NOT_FOUND are not the
    // service's); the destination's own sidecar reports too, not counted.
    promtool(
        vec![
            requests(MESH, "200", Some("0"), 27.0),
            requests(MESH, "200", Some("5"), 3.0),
            requests(
                r#"reporter="destination",destination_service_name="order-service",destination_service_namespace="mercato""#,
                "200",
                Some("14"),
                30.0,
            ),
        ],
        vec![expect(&traffic, Some(120.0)), expect(&success, Some(100.0))],
    );
    // A canary subset without a ready pod at 10 %: the sidecar answers
    // those calls itself, UNAVAILABLE in a gRPC answer (HTTP 200) — no
    // canary series sees them — and HTTP 503 for the plain-HTTP ones.
    promtool(
        vec![
            requests(MESH, "200", Some("0"), 27.0),
            requests(MESH, "200", Some("14"), 2.0),
            requests(MESH, "503", None, 1.0),
        ],
        vec![expect(&success, Some(90.0))],
    );
    // No calls at all: no data (the analysis' traffic gate gives no verdict).
    promtool(vec![], vec![expect(&traffic, None), expect(&success, None)]);
}
