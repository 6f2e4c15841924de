//! The checks of an analysis: their PromQL and their verdicts.

use serde::{Deserialize, Serialize};

use crate::{prometheus::QueryError, spec::RolloutSpec};

/// Server-side failures, as the alerts count them (client mistakes such as
/// INVALID_ARGUMENT or NOT_FOUND are not the canary's fault).
const ERROR_CODES: &str = "Unknown|DeadlineExceeded|Unimplemented|Internal|Unavailable|DataLoss";

/// One check of an analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Check {
    /// The canary's calls that did not fail on the server side, in percent
    /// of all its calls over the interval, at least `min_percent`.
    #[serde(rename_all = "camelCase")]
    SuccessRate { min_percent: f64 },
    /// The canary's unary p99 over the interval, at most `max_seconds`.
    #[serde(rename_all = "camelCase")]
    LatencyP99 { max_seconds: f64 },
    /// Any PromQL giving one number, within the bounds given.
    #[serde(rename_all = "camelCase")]
    Query {
        name: String,
        query: String,
        min: Option<f64>,
        max: Option<f64>,
    },
}

/// A check's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub check: String,
    pub passed: bool,
    /// For the status: the value against its bound, or why there is none.
    pub detail: String,
}

impl Check {
    pub fn name(&self) -> &str {
        match self {
            Check::SuccessRate { .. } => "success-rate",
            Check::LatencyP99 { .. } => "latency-p99",
            Check::Query { name, .. } => name,
        }
    }

    /// The PromQL of the check for the canary of `spec` in `namespace`,
    /// over the analysis interval (one minute at least: rate() needs two
    /// scrapes).
    pub fn query(&self, spec: &RolloutSpec, namespace: &str) -> String {
        let window = format!("{}s", spec.interval_seconds.max(60));
        // Pods of the canary Deployment: <deployment>-<replicaset hash>-<suffix>.
        let pods = format!(
            r#"namespace="{namespace}",pod=~"{}-[a-z0-9]+-[a-z0-9]+""#,
            spec.canary_deployment
        );
        match self {
            Check::SuccessRate { .. } => format!(
                r#"100 * (1 - sum(rate(grpc_server_handled_total{{{pods},grpc_code=~"{ERROR_CODES}"}}[{window}])) / sum(rate(grpc_server_handled_total{{{pods}}}[{window}])))"#
            ),
            Check::LatencyP99 { .. } => format!(
                r#"histogram_quantile(0.99, sum by (le) (rate(grpc_server_handling_seconds_bucket{{{pods},grpc_type="unary"}}[{window}])))"#
            ),
            Check::Query { query, .. } => query.clone(),
        }
    }

    /// The verdict on a query's answer: no data and errors fail.
    pub fn judge(&self, answer: Result<f64, QueryError>) -> Verdict {
        let verdict = |passed: bool, detail: String| Verdict {
            check: self.name().to_owned(),
            passed,
            detail,
        };
        let value = match answer {
            Ok(value) => value,
            Err(e) => return verdict(false, format!("no verdict: {e}")),
        };
        let (min, max) = match self {
            Check::SuccessRate { min_percent } => (Some(*min_percent), None),
            Check::LatencyP99 { max_seconds } => (None, Some(*max_seconds)),
            Check::Query { min, max, .. } => (*min, *max),
        };
        let low = min.is_some_and(|m| value < m);
        let high = max.is_some_and(|m| value > m);
        let bounds = match (min, max) {
            (Some(min), Some(max)) => format!("in [{min}, {max}]"),
            (Some(min), None) => format!("≥ {min}"),
            (None, Some(max)) => format!("≤ {max}"),
            (None, None) => "any value".to_owned(),
        };
        verdict(!low && !high, format!("{value} (wanted {bounds})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RolloutSpec {
        RolloutSpec {
            service: "order-service".into(),
            stable_deployment: "order-service".into(),
            canary_deployment: "order-service-canary".into(),
            virtual_service: "order-service".into(),
            routes: vec!["default".into()],
            step_weight: 10,
            max_weight: 50,
            interval_seconds: 30,
            failure_threshold: 2,
            analysis: vec![],
        }
    }

    #[test]
    fn queries_select_the_canary_pods_over_the_interval() {
        let q = Check::SuccessRate { min_percent: 99.0 }.query(&spec(), "mercato");
        assert!(
            q.contains(r#"pod=~"order-service-canary-[a-z0-9]+-[a-z0-9]+""#),
            "{q}"
        );
        assert!(
            q.contains("[60s]") && q.contains("grpc_code=~\"Unknown|"),
            "{q}"
        );
        let q = Check::LatencyP99 { max_seconds: 0.5 }.query(&spec(), "mercato");
        assert!(q.starts_with("histogram_quantile(0.99, sum by (le)"), "{q}");
    }

    #[test]
    fn verdicts_pass_only_within_bounds_and_with_data() {
        let rate = Check::SuccessRate { min_percent: 99.0 };
        assert!(rate.judge(Ok(99.5)).passed);
        assert!(!rate.judge(Ok(98.0)).passed);
        assert!(!rate.judge(Err(QueryError::NoData)).passed);
        let p99 = Check::LatencyP99 { max_seconds: 0.5 };
        assert!(p99.judge(Ok(0.2)).passed && !p99.judge(Ok(0.7)).passed);
        let any = Check::Query {
            name: "saturation".into(),
            query: "x".into(),
            min: Some(1.0),
            max: Some(2.0),
        };
        assert!(
            any.judge(Ok(1.5)).passed && !any.judge(Ok(2.5)).passed && !any.judge(Ok(0.5)).passed
        );
    }
}
