//! Kubernetes probe endpoints on the HTTP port.
//!
//! - `/health/live`: 200 while the process can answer at all; never checks
//!   dependencies (a database outage must not restart every pod).
//! - `/health/startup`: 503 until the server has bound its ports and applied
//!   migrations, then 200.
//! - `/health/ready`: 503 while starting or draining, or when a *critical*
//!   check fails (the service cannot do its job); 200 otherwise. A failing
//!   non-critical check (e.g. Redis, which only speeds things up) keeps the
//!   pod ready but is reported as `"status": "degraded"`.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use futures_util::future::join_all;
use serde_json::{Map, Value, json};

/// How long one readiness check may take before it counts as failed (the
/// checks run side by side, so this bounds the whole answer; a readiness
/// probe's `timeoutSeconds` must be longer).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The boxed future a [`ReadinessCheck`] returns.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// A dependency the readiness probe asks about.
pub trait ReadinessCheck: Send + Sync + 'static {
    /// Short name shown in the probe's JSON body, e.g. `database`.
    fn name(&self) -> &'static str;
    /// Whether a failure makes the pod unready (true) or only degraded.
    fn critical(&self) -> bool;
    /// `Ok` when the dependency answers; `Err` says what went wrong.
    fn check(&self) -> CheckFuture<'_>;
}

/// A [`ReadinessCheck`] from a closure that asks the dependency.
pub struct Dependency<F> {
    name: &'static str,
    critical: bool,
    ask: F,
}

impl<F> std::fmt::Debug for Dependency<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dependency")
            .field("name", &self.name)
            .field("critical", &self.critical)
            .finish_non_exhaustive()
    }
}

impl<F> Dependency<F> {
    /// `name` in the probe's body; `critical`: a failure makes the pod unready.
    pub fn new(name: &'static str, critical: bool, ask: F) -> Box<Self> {
        Box::new(Self {
            name,
            critical,
            ask,
        })
    }
}

impl<F, Fut> ReadinessCheck for Dependency<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn critical(&self) -> bool {
        self.critical
    }

    fn check(&self) -> CheckFuture<'_> {
        Box::pin((self.ask)())
    }
}

/// Lifecycle flags the probes read; the server flips them.
#[derive(Debug, Default)]
pub(crate) struct Lifecycle {
    pub(crate) started: AtomicBool,
    pub(crate) draining: AtomicBool,
}

#[derive(Clone)]
struct ProbeState {
    lifecycle: Arc<Lifecycle>,
    checks: Arc<Vec<Box<dyn ReadinessCheck>>>,
}

pub(crate) fn router(lifecycle: Arc<Lifecycle>, checks: Vec<Box<dyn ReadinessCheck>>) -> Router {
    Router::new()
        .route("/health/live", get(|| async { "ok" }))
        .route("/health/startup", get(startup))
        .route("/health/ready", get(ready))
        .with_state(ProbeState {
            lifecycle,
            checks: Arc::new(checks),
        })
}

async fn startup(State(state): State<ProbeState>) -> (StatusCode, &'static str) {
    if state.lifecycle.started.load(Ordering::Acquire) {
        (StatusCode::OK, "started")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn ready(State(state): State<ProbeState>) -> (StatusCode, Json<Value>) {
    if state.lifecycle.draining.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        );
    }
    if !state.lifecycle.started.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "starting"})),
        );
    }
    let results = join_all(state.checks.iter().map(|c| async move {
        let outcome = match tokio::time::timeout(CHECK_TIMEOUT, c.check()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        };
        (c.name(), c.critical(), outcome)
    }))
    .await;

    let mut status = "ok";
    let mut code = StatusCode::OK;
    let mut checks = Map::new();
    for (name, critical, outcome) in results {
        let text = match outcome {
            Ok(()) => "ok".to_owned(),
            Err(e) if critical => {
                status = "unavailable";
                code = StatusCode::SERVICE_UNAVAILABLE;
                format!("unavailable: {e}")
            }
            Err(e) => {
                if code == StatusCode::OK {
                    status = "degraded";
                }
                format!("degraded: {e}")
            }
        };
        checks.insert(name.to_owned(), Value::String(text));
    }
    (code, Json(json!({"status": status, "checks": checks})))
}
