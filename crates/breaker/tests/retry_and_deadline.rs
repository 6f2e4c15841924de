//! Retry amplification and throttling, and deadline propagation across hops,
//! against real gRPC servers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    pin::Pin,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use mercato_breaker::{
    BreakerConfig, CircuitBreaker, CircuitBreakerLayer,
    deadline::{self, DeadlineLayer},
    retry::{Idempotency, RetryConfig, RetryPolicy},
};
use support::{Flaky, serve};
use tonic::{Code, Request, Response, Status, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse,
    health_client::HealthClient,
    health_server::{Health, HealthServer},
};
use tower::ServiceBuilder;

async fn client(flaky: &Flaky) -> HealthClient<Channel> {
    let addr = serve(flaky.clone()).await;
    HealthClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

/// Offers `n` calls through `policy`; returns how many failed.
async fn offer(
    policy: &RetryPolicy,
    client: &HealthClient<Channel>,
    n: u32,
    idempotency: Idempotency,
) -> u32 {
    let mut failed = 0;
    for _ in 0..n {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let result = policy
            .call(idempotency, deadline, |left| {
                let mut client = client.clone();
                async move {
                    let mut request = Request::new(HealthCheckRequest::default());
                    request.set_timeout(left);
                    client.check(request).await
                }
            })
            .await;
        failed += u32::from(result.is_err());
    }
    failed
}

fn quick_retries() -> RetryConfig {
    RetryConfig {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        ..RetryConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_budget_and_stop_when_everything_fails() {
    let flaky = Flaky::default();
    flaky.code.store(Code::Unavailable as u32, Ordering::SeqCst);
    flaky.fail_percent.store(30, Ordering::SeqCst);
    let client = client(&flaky).await;
    let policy = RetryPolicy::new(quick_retries());
    let offered = 1000;
    offer(&policy, &client, offered, Idempotency::Safe).await;
    let seen = flaky.calls.load(Ordering::SeqCst);
    let amplification = f64::from(seen) / f64::from(offered);
    println!(
        "30 % UNAVAILABLE: {offered} offered calls, {seen} reached the downstream ({amplification:.3}x)"
    );
    assert!(amplification <= 1.1, "{amplification}");

    let flaky = Flaky::default();
    flaky.code.store(Code::Unavailable as u32, Ordering::SeqCst);
    let client = self::client(&flaky).await;
    let policy = RetryPolicy::new(quick_retries());
    let failed = offer(&policy, &client, 200, Idempotency::Safe).await;
    let seen = flaky.calls.load(Ordering::SeqCst);
    println!(
        "100 % UNAVAILABLE: 200 offered calls, {seen} reached the downstream, {failed} failed"
    );
    assert_eq!(failed, 200);
    assert!(
        seen <= 205,
        "retries stop once the bucket is half empty: {seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retryable_codes_and_unsafe_calls_are_never_retried() {
    let flaky = Flaky::default();
    flaky
        .code
        .store(Code::InvalidArgument as u32, Ordering::SeqCst);
    let client = client(&flaky).await;
    let policy = RetryPolicy::new(quick_retries());
    assert_eq!(offer(&policy, &client, 50, Idempotency::Safe).await, 50);
    assert_eq!(
        flaky.calls.load(Ordering::SeqCst),
        50,
        "INVALID_ARGUMENT is not retried"
    );

    let flaky = Flaky::default();
    flaky.code.store(Code::Unavailable as u32, Ordering::SeqCst);
    let client = self::client(&flaky).await;
    assert_eq!(offer(&policy, &client, 5, Idempotency::Unsafe).await, 5);
    assert_eq!(
        flaky.calls.load(Ordering::SeqCst),
        5,
        "a write without a key is not retried"
    );

    // A retryable failure is retried up to the attempt limit when the bucket allows.
    let flaky = Flaky::default();
    flaky.code.store(Code::Unavailable as u32, Ordering::SeqCst);
    let client = self::client(&flaky).await;
    assert_eq!(
        offer(
            &RetryPolicy::new(quick_retries()),
            &client,
            1,
            Idempotency::Safe
        )
        .await,
        1
    );
    assert_eq!(
        flaky.calls.load(Ordering::SeqCst),
        5,
        "5 attempts, the first included"
    );
}

/// Calls the next hop with a timeout from the propagated deadline, through
/// the breaker layer as the services' clients do.
#[derive(Clone)]
struct Relay {
    next: HealthClient<CircuitBreaker<Channel>>,
}

#[tonic::async_trait]
impl Health for Relay {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let mut onward = Request::new(request.into_inner());
        onward.set_timeout(deadline::budget(Duration::from_secs(30)));
        self.next.clone().check(onward).await
    }

    type WatchStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_deadline_cancels_every_hop() {
    // client --2 s--> relay A --> relay B --> downstream that takes 5 s
    let slow = Flaky::default();
    slow.delay_ms.store(5000, Ordering::SeqCst);
    let layered = |channel: Channel| {
        HealthClient::new(
            ServiceBuilder::new()
                .layer(CircuitBreakerLayer::new("next", BreakerConfig::default()))
                .service(channel),
        )
    };
    let slow_addr = serve(slow.clone()).await;
    let mut next = layered(
        Channel::from_shared(format!("http://{slow_addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .layer(DeadlineLayer)
                .add_service(HealthServer::new(Relay { next }))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        next = layered(
            Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let started = Instant::now();
    let mut request = Request::new(HealthCheckRequest::default());
    request.set_timeout(Duration::from_secs(2));
    let status = next.check(request).await.unwrap_err();
    let answered = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    // The downstream's handler is dropped (cancelled) when its caller gives up.
    let mut cancelled = None;
    for _ in 0..400 {
        cancelled = *slow.last_drop.lock().unwrap();
        if cancelled.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cancelled = cancelled.expect("downstream call cancelled") - started;
    println!(
        "2 s deadline over 3 hops: caller answered after {answered:?}, downstream cancelled after {cancelled:?}"
    );
    assert!(answered < Duration::from_millis(2100), "{answered:?}");
    assert!(cancelled < Duration::from_millis(2100), "{cancelled:?}");
    assert_eq!(slow.calls.load(Ordering::SeqCst), 1);
}
