//! The checks of an analysis: their PromQL, the traffic they need, and
//! their verdicts.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    prometheus::{Prometheus, QueryError},
    spec::RolloutSpec,
};

/// Server-side failures, as the alerts count them (client mistakes such as
/// INVALID_ARGUMENT or NOT_FOUND are not the canary's fault), and overload:
/// a canary shedding calls (RESOURCE_EXHAUSTED) fails its callers too.
const ERROR_CODES: &str =
    "Unknown|DeadlineExceeded|Unimplemented|Internal|Unavailable|DataLoss|ResourceExhausted";

/// The same codes as numbers, as Istio's `grpc_response_status` label has
/// them (2 Unknown, 4 DeadlineExceeded, 8 ResourceExhausted, 12
/// Unimplemented, 13 Internal, 14 Unavailable, 15 DataLoss).
const MESH_ERROR_CODES: &str = "2|4|8|12|13|14|15";

/// One check of an analysis, as Flagger writes its metrics: a name, the
/// PromQL (generated for the built-in names), and the range the value must
/// stay in. Built-ins: `success-rate` (the canary's calls that did not fail
/// on the server side, percent: give `min`), `latency-p99` (its unary p99
/// in seconds: give `max`) and `mesh-success-rate` (the calls to the
/// service that its callers' sidecars saw succeed, percent: give `min`).
/// Any other name needs a `query`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub name: String,
    /// PromQL returning one number; required for other than the built-ins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// The built-in checks' names.
pub const SUCCESS_RATE: &str = "success-rate";
pub const LATENCY_P99: &str = "latency-p99";
/// Istio's `istio_requests_total` as the callers' sidecars report it
/// (`reporter="source"`), over the whole service: what the canary's own
/// metrics cannot show — the UNAVAILABLE (or HTTP 503) a sidecar answers
/// itself when the canary subset has no ready pod, which no canary series
/// records (nothing reached it) and no canary label marks (the sidecar
/// knew no destination pod). Stable and canary together, so a healthy
/// stable dilutes it by its share: give `min` with that in mind. Envoy
/// creates an error code's series at its first occurrence, so `rate()`
/// misses that first one (the services' own series exist at 0 from the
/// start; Envoy's cannot be made to): a backstop for gross failure, next
/// to `success-rate`.
pub const MESH_SUCCESS_RATE: &str = "mesh-success-rate";

/// Whether `name` is a built-in check (no query needed).
pub fn is_builtin(name: &str) -> bool {
    name == SUCCESS_RATE || name == LATENCY_P99 || name == MESH_SUCCESS_RATE
}

/// What a check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    /// Not enough evidence either way (too few calls in the window, or a
    /// quantile of no observations): neither a pass nor a failure.
    NoVerdict,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::NoVerdict => "no verdict",
        }
    }
}

/// A check's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub check: String,
    pub outcome: Outcome,
    /// For the status: the value against its bound, or why there is none.
    pub detail: String,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Passed
    }
}

/// Which pods an analysis scores: the canary Deployment's in `namespace`,
/// of its current ReplicaSet when its `pod-template-hash` is known — a
/// previous canary's pods, gone or going, keep their series in the window
/// and must not be scored for this one.
#[derive(Debug, Clone, Copy)]
pub struct Pods<'a> {
    pub namespace: &'a str,
    pub template_hash: Option<&'a str>,
}

impl<'a> Pods<'a> {
    /// The canary's pods of any ReplicaSet (its current one unknown).
    pub fn any_revision(namespace: &'a str) -> Self {
        Self {
            namespace,
            template_hash: None,
        }
    }

    /// The label matchers: `pod` is `<deployment>-<replicaset hash>-<suffix>`.
    fn matchers(&self, spec: &RolloutSpec) -> String {
        let hash = self.template_hash.unwrap_or("[a-z0-9]+");
        format!(
            r#"namespace="{}",pod=~"{}-{hash}-[a-z0-9]+""#,
            self.namespace, spec.canary_deployment
        )
    }
}

/// The PromQL of the calls the canary answered over the window: the
/// evidence every check needs.
pub fn traffic_promql(spec: &RolloutSpec, pods: &Pods<'_>) -> String {
    format!(
        "sum(increase(grpc_server_handled_total{{{}}}[{}s]))",
        pods.matchers(spec),
        spec.window_seconds()
    )
}

/// The PromQL of the calls the callers' sidecars sent the service over the
/// window: the evidence `mesh-success-rate` needs.
pub fn mesh_traffic_promql(spec: &RolloutSpec, pods: &Pods<'_>) -> String {
    format!(
        "sum(increase(istio_requests_total{{{}}}[{}s]))",
        mesh_matchers(spec, pods),
        spec.window_seconds()
    )
}

fn mesh_matchers(spec: &RolloutSpec, pods: &Pods<'_>) -> String {
    format!(
        r#"reporter="source",destination_service_name="{}",destination_service_namespace="{}""#,
        spec.service, pods.namespace
    )
}

/// One analysis of the canary of `spec` (its `pods`): for each check,
/// first its evidence over the window — the calls the canary answered
/// (for `mesh-success-rate`, the calls the sidecars sent the service) —
/// fewer than `minRequests` calls (no traffic yet) give no verdict, neither
/// pass nor failure; then the check. Prometheus unreachable or refusing
/// fails the check.
pub async fn analyse(prometheus: &Prometheus, spec: &RolloutSpec, pods: &Pods<'_>) -> Vec<Verdict> {
    let calls = |query: String| async move {
        match prometheus.query(&query).await {
            Ok(calls) => Ok(calls),
            Err(QueryError::NoData) => Ok(0.0),
            Err(e) => Err(format!("no verdict: {e}")),
        }
    };
    let canary = calls(traffic_promql(spec, pods)).await;
    let mesh = match spec.analysis.iter().any(Check::is_mesh) {
        true => Some(calls(mesh_traffic_promql(spec, pods)).await),
        false => None,
    };
    let mut verdicts = Vec::with_capacity(spec.analysis.len());
    for check in &spec.analysis {
        let evidence = match (check.is_mesh(), &mesh) {
            (true, Some(mesh)) => mesh,
            _ => &canary,
        };
        let verdict = |outcome, detail| Verdict {
            check: check.name.clone(),
            outcome,
            detail,
        };
        match evidence {
            Err(e) => verdicts.push(verdict(Outcome::Failed, e.clone())),
            Ok(calls) if *calls < spec.min_requests as f64 => verdicts.push(verdict(
                Outcome::NoVerdict,
                format!(
                    "{calls:.0} calls in the last {}s, fewer than minRequests ({})",
                    spec.window_seconds(),
                    spec.min_requests
                ),
            )),
            Ok(_) => {
                let answer = match check.promql(spec, pods) {
                    Some(query) => prometheus.query(&query).await,
                    None => Err(QueryError::Refused("no query for this check".into())),
                };
                verdicts.push(check.judge(answer));
            }
        }
    }
    verdicts
}

impl Check {
    /// `success-rate` of at least `min_percent`.
    pub fn success_rate(min_percent: f64) -> Self {
        Self {
            name: SUCCESS_RATE.into(),
            query: None,
            min: Some(min_percent),
            max: None,
        }
    }

    /// `mesh-success-rate` of at least `min_percent`.
    pub fn mesh_success_rate(min_percent: f64) -> Self {
        Self {
            name: MESH_SUCCESS_RATE.into(),
            query: None,
            min: Some(min_percent),
            max: None,
        }
    }

    /// Whether this is the built-in `mesh-success-rate` (its evidence is
    /// the mesh's traffic, not the canary's).
    pub fn is_mesh(&self) -> bool {
        self.name == MESH_SUCCESS_RATE && self.query.is_none()
    }

    /// `latency-p99` of at most `max_seconds`.
    pub fn latency_p99(max_seconds: f64) -> Self {
        Self {
            name: LATENCY_P99.into(),
            query: None,
            min: None,
            max: Some(max_seconds),
        }
    }

    /// The PromQL of the check for the canary of `spec` (its `pods`),
    /// over the metrics window; None for an unknown name without a query.
    /// `success-rate` is the calls that did not fail over all calls, so a
    /// canary that never failed (no error series at all) has 100, and one
    /// that only failed (no other series) has 0.
    pub fn promql(&self, spec: &RolloutSpec, pods: &Pods<'_>) -> Option<String> {
        if let Some(query) = &self.query {
            return Some(query.clone());
        }
        let window = format!("{}s", spec.window_seconds());
        let mesh = mesh_matchers(spec, pods);
        let pods = pods.matchers(spec);
        match self.name.as_str() {
            SUCCESS_RATE => Some(format!(
                r#"100 * (sum(rate(grpc_server_handled_total{{{pods},grpc_code!~"{ERROR_CODES}"}}[{window}])) or vector(0)) / sum(rate(grpc_server_handled_total{{{pods}}}[{window}]))"#
            )),
            MESH_SUCCESS_RATE => Some(format!(
                r#"100 * (sum(rate(istio_requests_total{{{mesh},response_code!~"5..",grpc_response_status!~"{MESH_ERROR_CODES}"}}[{window}])) or vector(0)) / sum(rate(istio_requests_total{{{mesh}}}[{window}]))"#
            )),
            LATENCY_P99 => Some(format!(
                r#"histogram_quantile(0.99, sum by (le) (rate(grpc_server_handling_seconds_bucket{{{pods},grpc_type="unary"}}[{window}])))"#
            )),
            _ => None,
        }
    }

    /// The verdict on a query's answer: no data and errors fail; NaN (a
    /// ratio or quantile of no observations) gives no verdict.
    pub fn judge(&self, answer: Result<f64, QueryError>) -> Verdict {
        let verdict = |outcome: Outcome, detail: String| Verdict {
            check: self.name.clone(),
            outcome,
            detail,
        };
        let value = match answer {
            Ok(value) => value,
            Err(QueryError::NotANumber(text)) if text.eq_ignore_ascii_case("nan") => {
                return verdict(
                    Outcome::NoVerdict,
                    "NaN: nothing of this kind observed in the window".into(),
                );
            }
            Err(e) => return verdict(Outcome::Failed, format!("no verdict: {e}")),
        };
        let low = self.min.is_some_and(|m| value < m);
        let high = self.max.is_some_and(|m| value > m);
        let bounds = match (self.min, self.max) {
            (Some(min), Some(max)) => format!("in [{min}, {max}]"),
            (Some(min), None) => format!("≥ {min}"),
            (None, Some(max)) => format!("≤ {max}"),
            (None, None) => "any value".to_owned(),
        };
        let outcome = if low || high {
            Outcome::Failed
        } else {
            Outcome::Passed
        };
        verdict(outcome, format!("{value} (wanted {bounds})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RolloutSpec {
        RolloutSpec {
            interval_seconds: 30,
            ..RolloutSpec::new("order-service")
        }
    }

    #[test]
    fn queries_select_the_canary_pods_over_the_interval() {
        let q = Check::success_rate(99.0)
            .promql(&spec(), &Pods::any_revision("mercato"))
            .unwrap_or_default();
        assert!(
            q.contains(r#"pod=~"order-service-canary-[a-z0-9]+-[a-z0-9]+""#),
            "{q}"
        );
        assert!(
            q.contains("[60s]")
                && q.contains("grpc_code!~\"Unknown|")
                && q.contains("ResourceExhausted"),
            "{q}"
        );
        let q = Check::latency_p99(0.5)
            .promql(&spec(), &Pods::any_revision("mercato"))
            .unwrap_or_default();
        assert!(q.starts_with("histogram_quantile(0.99, sum by (le)"), "{q}");
    }

    #[test]
    fn verdicts_pass_only_within_bounds_and_with_data() {
        let rate = Check::success_rate(99.0);
        assert!(rate.judge(Ok(99.5)).passed());
        assert_eq!(rate.judge(Ok(98.0)).outcome, Outcome::Failed);
        assert_eq!(rate.judge(Err(QueryError::NoData)).outcome, Outcome::Failed);
        let p99 = Check::latency_p99(0.5);
        assert!(p99.judge(Ok(0.2)).passed() && !p99.judge(Ok(0.7)).passed());
        assert_eq!(
            p99.judge(Err(QueryError::NotANumber("NaN".into()))).outcome,
            Outcome::NoVerdict
        );
        let any = Check {
            name: "saturation".into(),
            query: Some("x".into()),
            min: Some(1.0),
            max: Some(2.0),
        };
        assert_eq!(
            any.promql(&spec(), &Pods::any_revision("mercato"))
                .as_deref(),
            Some("x")
        );
        let unknown = Check {
            name: "typo".into(),
            query: None,
            min: None,
            max: None,
        };
        assert_eq!(
            unknown.promql(&spec(), &Pods::any_revision("mercato")),
            None
        );
        assert!(
            any.judge(Ok(1.5)).passed()
                && !any.judge(Ok(2.5)).passed()
                && !any.judge(Ok(0.5)).passed()
        );
    }
}
