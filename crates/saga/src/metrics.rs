//! What the orchestrator reports to Prometheus.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    saga: &'static str,
    outcome: &'static str,
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
/// our credentials — or superseded — a newer claim fenced the run out). Unregistered by default;
/// clones share the families.
#[derive(Debug, Clone)]
pub struct SagaMetrics {
    finished: Family<OutcomeLabels, Counter>,
    steps: StepHistogram,
}

impl Default for SagaMetrics {
    fn default() -> Self {
        Self {
            finished: Family::default(),
            steps: StepHistogram::new_with_constructor(step_histogram),
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
        metrics
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
