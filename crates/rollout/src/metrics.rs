//! What the controller tells Prometheus and the kubelet: `/metrics` (each
//! Rollout's phase, canary weight, failed analyses in a row, last progress,
//! every analysis' outcome by check, and whether this replica leads) and
//! the probes `/healthz` (the process answers) and `/readyz` (it has
//! reached the API server: it leads, or it knows who does).
//! deploy/components/rollout alerts on a failed or stuck rollout and on no
//! leader from these.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use k8s_openapi::chrono::DateTime;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{Phase, RolloutStatus, Verdict};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByRollout {
    rollout: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByPhase {
    rollout: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByCheck {
    rollout: String,
    check: String,
    outcome: String,
}

/// Every phase, for the one-hot `mercato_rollout_phase`.
const PHASES: [Phase; 7] = [
    Phase::Idle,
    Phase::Initializing,
    Phase::Progressing,
    Phase::Paused,
    Phase::Promoting,
    Phase::Succeeded,
    Phase::Failed,
];

/// The controller's metrics and readiness.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    phase: Family<ByPhase, Gauge>,
    weight: Family<ByRollout, Gauge>,
    failed_checks: Family<ByRollout, Gauge>,
    last_progress: Family<ByRollout, Gauge>,
    analyses: Family<ByCheck, Counter>,
    leader: Gauge,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let phase = Family::<ByPhase, Gauge>::default();
        registry.register(
            "mercato_rollout_phase",
            "1 for the phase each Rollout is in, 0 for the others",
            phase.clone(),
        );
        let weight = Family::<ByRollout, Gauge>::default();
        registry.register(
            "mercato_rollout_canary_weight",
            "Percent of the driven routes' traffic sent to the canary",
            weight.clone(),
        );
        let failed_checks = Family::<ByRollout, Gauge>::default();
        registry.register(
            "mercato_rollout_failed_checks",
            "Failed analyses in a row of the current rollout",
            failed_checks.clone(),
        );
        let last_progress = Family::<ByRollout, Gauge>::default();
        registry.register(
            "mercato_rollout_last_progress_timestamp_seconds",
            "When the Rollout last moved forward (a weight step, a promotion), Unix seconds",
            last_progress.clone(),
        );
        let analyses = Family::<ByCheck, Counter>::default();
        registry.register(
            "mercato_rollout_analyses",
            "Analysis verdicts by Rollout, check and outcome (passed, failed, no-verdict)",
            analyses.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "mercato_rollout_leader",
            "1 while this replica holds the controller's Lease and acts",
            leader.clone(),
        );
        Self {
            registry,
            phase,
            weight,
            failed_checks,
            last_progress,
            analyses,
            leader,
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// Records a Rollout's status as last written.
    pub fn record(&self, rollout: &str, status: &RolloutStatus) {
        for phase in PHASES {
            let labels = ByPhase {
                rollout: rollout.into(),
                phase: format!("{phase:?}"),
            };
            self.phase
                .get_or_create(&labels)
                .set(i64::from(status.phase == phase));
        }
        let by = ByRollout {
            rollout: rollout.into(),
        };
        self.weight
            .get_or_create(&by)
            .set(i64::from(crate::controller::traffic_weight(status)));
        self.failed_checks
            .get_or_create(&by)
            .set(i64::from(status.failed_checks));
        if let Some(at) = status
            .progressed_at
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        {
            self.last_progress.get_or_create(&by).set(at.timestamp());
        }
    }

    /// Counts an analysis' verdicts.
    pub fn analysed(&self, rollout: &str, verdicts: &[Verdict]) {
        for verdict in verdicts {
            self.analyses
                .get_or_create(&ByCheck {
                    rollout: rollout.into(),
                    check: verdict.check.clone(),
                    outcome: verdict.outcome.as_str().into(),
                })
                .inc();
        }
    }

    /// Whether this replica leads now; either answer means the API server
    /// was reached, so the replica is ready. A replica that stops leading forgets the Rollouts' state, so the
    /// alerts read the leader's alone, not a stale phase of its own.
    pub fn leading(&self, leads: bool) {
        if !leads {
            self.phase.clear();
            self.weight.clear();
            self.failed_checks.clear();
            self.last_progress.clear();
        }
        self.leader.set(i64::from(leads));
        self.ready.store(true, Ordering::Release);
    }

    /// The OpenMetrics text `/metrics` answers.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        match encode(&mut out, &self.registry) {
            Ok(()) => out,
            Err(e) => format!("# encoding failed: {e}\n"),
        }
    }
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

async fn ready(State(m): State<Arc<Metrics>>) -> StatusCode {
    if m.ready.load(Ordering::Acquire) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until
/// `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(self::metrics))
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route("/readyz", get(ready))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The address the controller serves on by default.
pub const ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 8080);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_that_stops_leading_exports_no_rollout_state() {
        let metrics = Metrics::default();
        metrics.leading(true);
        let status = RolloutStatus {
            phase: Phase::Failed,
            ..RolloutStatus::default()
        };
        metrics.record("order-service", &status);
        let leading = metrics.encode();
        assert!(
            leading.contains(r#"mercato_rollout_phase{rollout="order-service",phase="Failed"} 1"#)
        );
        metrics.leading(false);
        let standby = metrics.encode();
        assert!(!standby.contains("mercato_rollout_phase{"), "{standby}");
        assert!(standby.contains("mercato_rollout_leader 0"), "{standby}");
    }
}
