//! What the orchestrator reports to Prometheus.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    saga: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    saga: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    saga: &'static str,
    step: &'static str,
    phase: &'static str,
    result: &'static str,
}

type StepHistogram = Family<StepLabels, Histogram, fn() -> Histogram>;

fn step_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// `sagas_total{saga,outcome}` (completed, compensated) and
/// `saga_step_duration_seconds{saga,step,phase,result}` (phase execute or
/// compensate; result ok, refused, failed, misconfigured — a peer refused
/// our credentials — or superseded — a newer claim fenced the run out),
/// and `sagas_stalled{saga}`: unfinished sagas whose record has not moved
/// for longer than a lease, as the last recovery pass counted them (a
/// runner wedged on its database, a step retrying against a peer that
/// stays down, recovery that cannot claim). Unregistered by default;
/// clones share the families.
#[derive(Debug, Clone)]
pub struct SagaMetrics {
    finished: Family<OutcomeLabels, Counter>,
    steps: StepHistogram,
    stalled: Family<KindLabels, Gauge>,
}

impl Default for SagaMetrics {
    fn default() -> Self {
        Self {
            finished: Family::default(),
            steps: StepHistogram::new_with_constructor(step_histogram),
            stalled: Family::default(),
        }
    }
}

impl SagaMetrics {
    /// Families registered in `registry` (once per registry, shared by every orchestrator).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "sagas",
            "Sagas finished by this process, by kind and outcome (completed, compensated)",
            metrics.finished.clone(),
        );
        registry.register(
            "saga_step_duration_seconds",
            "Duration of each saga step run, by phase (execute, compensate) and result (ok, refused, failed, misconfigured, superseded)",
            metrics.steps.clone(),
        );
        registry.register(
            "sagas_stalled",
            "Unfinished sagas of each kind whose record has not moved for longer than a lease, at the last recovery pass",
            metrics.stalled.clone(),
        );
        metrics
    }

    pub(crate) fn stalled(&self, saga: &'static str, count: u64) {
        self.stalled
            .get_or_create(&KindLabels { saga })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub(crate) fn finished(&self, saga: &'static str, outcome: &'static str) {
        self.finished
            .get_or_create(&OutcomeLabels { saga, outcome })
            .inc();
    }

    pub(crate) fn step(
        &self,
        saga: &'static str,
        step: &'static str,
        phase: &'static str,
        result: &'static str,
        seconds: f64,
    ) {
        self.steps
            .get_or_create(&StepLabels {
                saga,
                step,
                phase,
                result,
            })
            .observe(seconds);
    }
}
