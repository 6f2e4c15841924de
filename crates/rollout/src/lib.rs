//! Progressive delivery for the mercato services, learning from Flagger and
//! Argo Rollouts: every interval, query Prometheus about the canary, then
//! advance its weight, hold it, or roll back; at the maximum weight,
//! promote.
//!
//! - [`spec`]: what a rollout asks for ([`RolloutSpec`]: steps, analysis,
//!   failure threshold) and where it stands ([`RolloutStatus`]);
//! - [`analysis`]: the checks — `success-rate` from
//!   `grpc_server_handled_total` by `grpc_code`, `latency-p99` from
//!   `grpc_server_handling_seconds_bucket`, or any PromQL — with the range
//!   the value must stay in, as queries and verdicts, behind a traffic gate
//!   (fewer than `minRequests` calls in the window: no verdict, the weight
//!   held, no failure counted);
//! - [`prometheus`]: the HTTP API client (`/api/v1/query`). With traffic,
//!   no data and any error are failed checks, never passes (the article's
//!   stub returned 0.01 and promoted everything);
//! - [`decide`]: the step, a pure function of spec, status and the
//!   analysis' verdicts.
//!
//! - [`controller`]: the kube-rs controller that watches `Rollout`s,
//!   records each step in the status subresource, then patches the
//!   VirtualServices' weights and, to promote, the stable Deployment;
//! - [`leader`]: leader election on a Lease, so one replica acts;
//! - [`metrics`]: `/metrics` and the probes;
//! - [`template`]: a Deployment's release (its whole pod template), as
//!   compared, named, promoted and restored.

pub mod analysis;
pub mod controller;
pub mod decide;
pub mod leader;
pub mod metrics;
pub mod prometheus;
pub mod spec;
pub mod template;

pub use analysis::{Check, Verdict};
pub use decide::{Action, decide};
pub use spec::{Phase, Rollout, RolloutSpec, RolloutStatus};

/// The `Rollout` CustomResourceDefinition as YAML, generated from the Rust
/// type (deploy/crds/rollouts.mercato.dev.yaml is this text; a test checks).
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&Rollout::crd())
}
