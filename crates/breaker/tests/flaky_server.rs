//! The breaker in front of a real, deliberately flaky gRPC server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    net::SocketAddr,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use mercato_breaker::{BreakerConfig, CircuitBreaker, CircuitBreakerLayer, CircuitState};
use support::{Flaky, serve};
use tonic::{Code, Status, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tower::ServiceBuilder;

type Client = HealthClient<CircuitBreaker<Channel>>;

async fn client(addr: SocketAddr, layer: &CircuitBreakerLayer) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(ServiceBuilder::new().layer(layer.clone()).service(channel))
}

async fn call(client: &Client) -> (Result<(), Status>, Duration) {
    let started = Instant::now();
    let result = client
        .clone()
        .check(HealthCheckRequest::default())
        .await
        .map(drop);
    (result, started.elapsed())
}

fn config() -> BreakerConfig {
    BreakerConfig {
        failure_rate_threshold: 0.5,
        window_size: 10,
        minimum_calls: 10,
        open_duration: Duration::from_millis(300),
        half_open_permits: 2,
        ..BreakerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trips_fails_fast_probes_and_recovers() {
    let flaky = Flaky::default();
    flaky.code.store(Code::Unavailable as u32, Ordering::SeqCst);
    let addr = serve(flaky.clone()).await;
    let layer = CircuitBreakerLayer::new("flaky", config());
    let client = client(addr, &layer).await;

    // Below the minimum number of calls nothing trips; at the threshold it does.
    for i in 0..10 {
        assert_eq!(layer.state(), CircuitState::Closed, "call {i}");
        assert_eq!(call(&client).await.0.unwrap_err().code(), Code::Unavailable);
    }
    assert_eq!(layer.state(), CircuitState::Open);
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 10);

    // OPEN: the downstream sees nothing, the caller fails at once.
    let mut slowest = Duration::ZERO;
    for _ in 0..200 {
        let (result, took) = call(&client).await;
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().contains("circuit breaker 'flaky' is open"),
            "{status:?}"
        );
        slowest = slowest.max(took);
    }
    assert_eq!(
        flaky.calls.load(Ordering::SeqCst),
        10,
        "0 calls reached the downstream while open"
    );
    println!("fast-fail latency while OPEN: slowest of 200 calls {slowest:?}");
    assert!(
        slowest < Duration::from_millis(5),
        "fail fast took {slowest:?}"
    );

    // HALF_OPEN after the open duration: of a burst, only the permitted probes pass.
    flaky.code.store(0, Ordering::SeqCst);
    flaky.delay_ms.store(100, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(layer.state(), CircuitState::HalfOpen);
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { call(&c).await.0 })
        })
        .collect();
    let mut passed = 0;
    for b in burst {
        if b.await.unwrap().is_ok() {
            passed += 1;
        }
    }
    let probes = flaky.calls.load(Ordering::SeqCst) - 10;
    println!("HALF_OPEN burst of 20: {probes} probes reached the downstream, {passed} succeeded");
    assert_eq!(probes, 2, "no more than the permitted probes");
    assert_eq!(passed, 2);

    // Both probes succeeded: closed again, calls flow.
    assert_eq!(layer.state(), CircuitState::Closed);
    flaky.delay_ms.store(0, Ordering::SeqCst);
    for _ in 0..5 {
        call(&client).await.0.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_probe_reopens() {
    let flaky = Flaky::default();
    flaky.code.store(Code::Internal as u32, Ordering::SeqCst);
    let addr = serve(flaky.clone()).await;
    let layer = CircuitBreakerLayer::new("sick", config());
    let client = client(addr, &layer).await;
    for _ in 0..10 {
        let _ = call(&client).await;
    }
    assert_eq!(layer.state(), CircuitState::Open);
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..2 {
        assert_eq!(
            call(&client).await.0.unwrap_err().code(),
            Code::Internal,
            "probes reach the still-sick server"
        );
    }
    assert_eq!(layer.state(), CircuitState::Open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_errors_never_trip_it() {
    for code in [
        Code::InvalidArgument,
        Code::NotFound,
        Code::PermissionDenied,
        Code::AlreadyExists,
        Code::FailedPrecondition,
    ] {
        let flaky = Flaky::default();
        flaky.code.store(code as u32, Ordering::SeqCst);
        let addr = serve(flaky.clone()).await;
        let layer = CircuitBreakerLayer::new("healthy", config());
        let client = client(addr, &layer).await;
        for _ in 0..50 {
            assert_eq!(call(&client).await.0.unwrap_err().code(), code);
        }
        assert_eq!(
            layer.state(),
            CircuitState::Closed,
            "{code:?} proves the downstream healthy"
        );
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 50);
    }
}

/// UNAVAILABLE that says "my own dependency refused; nothing happened" is
/// an answer from a healthy downstream when the breaker is told so: it stays
/// closed; the same code without the reason trips it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_code_with_a_healthy_reason_does_not_trip_it() {
    for (healthy, expected) in [(true, CircuitState::Closed), (false, CircuitState::Open)] {
        let flaky = Flaky::default();
        flaky.code.store(Code::Unavailable as u32, Ordering::SeqCst);
        *flaky.reason.lock().unwrap() = Some("PROVIDER_UNAVAILABLE");
        let addr = serve(flaky.clone()).await;
        let reasons: &[&'static str] = if healthy {
            &["PROVIDER_UNAVAILABLE"]
        } else {
            &["OTHER"]
        };
        let layer = CircuitBreakerLayer::with_healthy_reasons(
            "payment",
            config(),
            prometheus_client::metrics::gauge::Gauge::default(),
            reasons,
        );
        let client = client(addr, &layer).await;
        for _ in 0..20 {
            let _ = call(&client).await;
        }
        assert_eq!(layer.state(), expected, "healthy reason listed: {healthy}");
    }
}
