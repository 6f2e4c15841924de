//! Deadline propagation: a server layer turns the incoming `grpc-timeout`
//! into a task-local deadline for the handler; clients call [`budget`] to
//! get their timeout — the time left minus a margin for the answer to travel
//! back, capped by their own default. Work without an incoming deadline
//! (background sagas) simply uses the default.

use std::{
    future::Future,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;
use tower::Layer;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Kept back from the remaining time so the answer reaches the caller in time.
pub const MARGIN: Duration = Duration::from_millis(20);

/// The deadline of the request being handled, if it set one.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// The timeout for an outgoing call: `default`, shortened to the incoming
/// deadline minus [`MARGIN`]. Zero means there is no time left.
pub fn budget(default: Duration) -> Duration {
    match current() {
        Some(deadline) => deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(MARGIN)
            .min(default),
        None => default,
    }
}

/// Runs `fut` with `deadline` as the current deadline.
pub async fn scope<F: Future>(deadline: Instant, fut: F) -> F::Output {
    DEADLINE.scope(deadline, fut).await
}

/// Parses a `grpc-timeout` header value such as `5S` or `250m`.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Parsed once (a lookup by `&str` parses the name on every call).
static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// Server layer: handlers run within the request's deadline.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService { inner }
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for DeadlineService<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let deadline = request
            .headers()
            .get(&GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|t| Instant::now() + t);
        let fut = self.inner.call(request);
        match deadline {
            Some(deadline) => DeadlineFuture::Scoped {
                fut: DEADLINE.scope(deadline, fut),
            },
            None => DeadlineFuture::Unbounded { fut },
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`DeadlineService`]: the handler's, within its
    /// deadline when the call set one (no allocation either way).
    #[project = DeadlineProjection]
    pub enum DeadlineFuture<F> {
        Scoped { #[pin] fut: tokio::task::futures::TaskLocalFuture<Instant, F> },
        Unbounded { #[pin] fut: F },
    }
}

impl<F: Future> Future for DeadlineFuture<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            DeadlineProjection::Scoped { fut } => fut.poll(cx),
            DeadlineProjection::Unbounded { fut } => fut.poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "S", "5x", "123456789S", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn budget_is_bounded_by_the_incoming_deadline() {
        assert_eq!(
            budget(Duration::from_secs(5)),
            Duration::from_secs(5),
            "no deadline: the default"
        );
        let deadline = Instant::now() + Duration::from_secs(2);
        scope(deadline, async {
            assert_eq!(
                budget(Duration::from_secs(5)),
                Duration::from_secs(2) - MARGIN
            );
            assert_eq!(budget(Duration::from_secs(1)), Duration::from_secs(1));
            tokio::time::advance(Duration::from_secs(3)).await;
            assert_eq!(budget(Duration::from_secs(5)), Duration::ZERO);
        })
        .await;
    }
}
