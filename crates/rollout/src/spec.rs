//! A rollout's desired course and its recorded progress.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::analysis::Check;

/// What a rollout of one service's canary asks for: the spec of the
/// `Rollout` custom resource (`rollouts.mercato.dev`, namespaced, with a
/// status subresource holding [`RolloutStatus`]).
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "mercato.dev",
    version = "v1alpha1",
    kind = "Rollout",
    namespaced,
    status = "RolloutStatus",
    shortname = "ro",
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
    /// The VirtualService whose routes carry the weights, and which of its
    /// routes (by name) to drive; the others are left alone.
    pub virtual_service: String,
    pub routes: Vec<String>,
    /// Percent added per successful interval, and where promotion starts.
    pub step_weight: u32,
    pub max_weight: u32,
    /// Seconds between two analyses.
    pub interval_seconds: u64,
    /// Consecutive failed analyses that roll the canary back.
    pub failure_threshold: u32,
    pub analysis: Vec<Check>,
}

impl RolloutSpec {
    /// A rollout of `service`'s canary with the usual shape: Deployments
    /// `<service>` and `<service>-canary` (as deploy/components/canary
    /// names them), the `<service>` VirtualService's `default` route, steps
    /// of 10 up to 50 %, one analysis a minute, rolled back after 3 failed
    /// analyses in a row; no checks yet (and without checks it never
    /// promotes).
    pub fn new(service: &str) -> Self {
        Self {
            service: service.to_owned(),
            stable_deployment: service.to_owned(),
            canary_deployment: format!("{service}-canary"),
            virtual_service: service.to_owned(),
            routes: vec!["default".to_owned()],
            step_weight: 10,
            max_weight: 50,
            interval_seconds: 60,
            failure_threshold: 3,
            analysis: Vec::new(),
        }
    }
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Not started: the canary has weight 0.
    #[default]
    Initializing,
    /// Weight being stepped up by analysis.
    Progressing,
    /// Held by annotation: no analysis, no weight change.
    Paused,
    /// The stable Deployment takes the canary's image, then weight 0.
    Promoting,
    Succeeded,
    /// Rolled back: weight 0.
    Failed,
}

/// What the controller records in the status subresource (and resumes
/// from after a restart).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    pub phase: Phase,
    /// The canary's current weight, percent.
    pub canary_weight: u32,
    /// Consecutive failed analyses.
    pub failed_checks: u32,
    /// A line per check of the last analysis.
    pub last_analysis: Vec<String>,
}
