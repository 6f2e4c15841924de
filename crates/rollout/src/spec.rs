//! A rollout's desired course and its recorded progress.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::analysis::Check;

/// What a rollout of one service's canary asks for: the spec of the
/// `Rollout` custom resource (`rollouts.mercato.dev`, namespaced, with a
/// status subresource holding [`RolloutStatus`]).
// No short name: `ro` is Argo Rollouts', and a cluster may run both (whose
// kinds are both `Rollout`): docs name ours `rollouts.mercato.dev`.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "mercato.dev",
    version = "v1alpha1",
    kind = "Rollout",
    namespaced,
    status = "RolloutStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Weight","type":"integer","jsonPath":".status.canaryWeight"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.failedChecks"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// The service (`order-service`): the `service` label of its metrics.
    pub service: String,
    pub stable_deployment: String,
    pub canary_deployment: String,
    /// The VirtualService routes (by name) whose `stable` and `canary`
    /// subset destinations carry the weights; a VirtualService's other
    /// routes are left alone.
    pub routes: Vec<RouteRef>,
    /// Percent added per successful interval, and where promotion starts.
    pub step_weight: u32,
    pub max_weight: u32,
    /// Seconds between two analyses.
    pub interval_seconds: u64,
    /// Consecutive failed analyses that roll the canary back.
    pub failure_threshold: u32,
    /// Calls the canary must have answered over the metrics window for an
    /// analysis to count: with fewer (no traffic yet) the checks give no
    /// verdict and the weight is held — neither a pass nor a failure.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// The window the checks' rates are taken over, seconds; 0 (the
    /// default): the interval, and at least 60 s, since `rate()` needs two
    /// scrapes at Prometheus' usual 30 s. Lower it only with a shorter
    /// scrape interval.
    #[serde(default)]
    pub window_seconds: u64,
    /// Seconds a rollout may go without moving forward — a canary that
    /// never gets ready, analyses without a verdict (no traffic) — before
    /// it fails and is rolled back; 0: no deadline.
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline_seconds: u64,
    pub analysis: Vec<Check>,
}

fn default_progress_deadline() -> u64 {
    600
}

fn default_min_requests() -> u64 {
    20
}

impl RolloutSpec {
    /// A rollout of `service`'s canary with the usual shape: Deployments
    /// `<service>` and `<service>-canary` (as deploy/components/canary
    /// names them), the `<service>` VirtualService's `default` route (the
    /// mesh's calls; add the edge's routes in `mercato-public`), steps
    /// of 10 up to 50 %, one analysis a minute, rolled back after 3 failed
    /// analyses in a row; no checks yet (and without checks it never
    /// promotes).
    pub fn new(service: &str) -> Self {
        Self {
            service: service.to_owned(),
            stable_deployment: service.to_owned(),
            canary_deployment: format!("{service}-canary"),
            routes: vec![RouteRef {
                virtual_service: service.to_owned(),
                route: "default".to_owned(),
            }],
            step_weight: 10,
            max_weight: 50,
            interval_seconds: 60,
            failure_threshold: 3,
            min_requests: default_min_requests(),
            window_seconds: 0,
            progress_deadline_seconds: default_progress_deadline(),
            analysis: Vec::new(),
        }
    }

    /// The metrics window of the checks, seconds.
    pub fn window_seconds(&self) -> u64 {
        match self.window_seconds {
            0 => self.interval_seconds.max(60),
            window => window,
        }
    }
}

/// One route of a VirtualService.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteRef {
    pub virtual_service: String,
    /// The `name` of an entry of the VirtualService's `http` list.
    pub route: String,
}

impl RolloutSpec {
    /// What makes this spec impossible to run, in words for the status;
    /// empty when it can run. The controller touches no traffic for a spec
    /// with problems.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut problem = |text: String| problems.push(text);
        if self.stable_deployment == self.canary_deployment {
            problem("stableDeployment and canaryDeployment must differ".into());
        }
        if self.routes.is_empty() {
            problem("routes: name at least one VirtualService route".into());
        }
        if !(1..=100).contains(&self.max_weight) {
            problem(format!("maxWeight {} is not in 1..=100", self.max_weight));
        }
        if !(1..=100).contains(&self.step_weight) {
            problem(format!("stepWeight {} is not in 1..=100", self.step_weight));
        }
        if self.interval_seconds == 0 {
            problem("intervalSeconds must be at least 1".into());
        }
        if self.failure_threshold == 0 {
            problem("failureThreshold must be at least 1".into());
        }
        if self.analysis.is_empty() {
            problem(
                "analysis: give at least one check (without one nothing is ever promoted)".into(),
            );
        }
        for check in &self.analysis {
            if check.query.is_none() && !crate::analysis::is_builtin(&check.name) {
                problem(format!(
                    "analysis {:?}: not a built-in check (success-rate, latency-p99), so it needs a query",
                    check.name
                ));
            }
            if check.min.is_none() && check.max.is_none() {
                problem(format!("analysis {:?}: give min or max", check.name));
            }
        }
        problems
    }
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// The canary runs what the stable runs: nothing to roll out.
    Idle,
    /// A new canary revision, not yet given traffic.
    #[default]
    Initializing,
    /// Weight being stepped up by analysis.
    Progressing,
    /// Held by annotation: no analysis, no weight change.
    Paused,
    /// The stable Deployment takes the canary's pod template, then weight 0.
    Promoting,
    Succeeded,
    /// Rolled back: weight 0.
    Failed,
}

/// What the controller records in the status subresource (and resumes
/// from after a restart).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct RolloutStatus {
    pub phase: Phase,
    /// The canary's current weight, percent.
    pub canary_weight: u32,
    /// Consecutive failed analyses.
    pub failed_checks: u32,
    /// A line per check of the last analysis.
    pub last_analysis: Vec<String>,
    /// The canary's release this rollout is about: its images
    /// (`container=image`, comma separated) and a hash of its whole pod
    /// template (`#1a2b3c4d`); a new value starts a new rollout.
    pub canary_revision: String,
    /// The stable Deployment's pod spec (JSON) when this rollout started:
    /// what an abort or a failed promotion puts back.
    pub stable_template: Option<String>,
    /// Set when a rollout failed while the stable Deployment was taking the
    /// canary's template: it is being given `stableTemplate` back.
    pub restoring_stable: bool,
    /// The canary Deployment's `metadata.generation` this status has seen:
    /// a release applied after it is not judged yet (what a deploy job
    /// waits for before it reads the phase).
    pub canary_generation: Option<i64>,
    /// When the weight last changed or an analysis last ran (RFC 3339): the
    /// next analysis is due one interval after it, also after a restart.
    pub last_step_time: Option<String>,
    /// When the rollout last moved forward (started, a weight step, a
    /// promotion), for `progressDeadlineSeconds`.
    pub progressed_at: Option<String>,
    /// Why the controller cannot go on (a spec problem, a missing route).
    pub message: Option<String>,
}
