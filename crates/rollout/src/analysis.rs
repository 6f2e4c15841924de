//! The checks of an analysis: their PromQL and their verdicts.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{prometheus::QueryError, spec::RolloutSpec};

/// Server-side failures, as the alerts count them (client mistakes such as
/// INVALID_ARGUMENT or NOT_FOUND are not the canary's fault).
const ERROR_CODES: &str = "Unknown|DeadlineExceeded|Unimplemented|Internal|Unavailable|DataLoss";

/// One check of an analysis, as Flagger writes its metrics: a name, the
/// PromQL (generated for the built-in names), and the range the value must
/// stay in. Built-ins: `success-rate` (the canary's calls that did not fail
/// on the server side, percent: give `min`) and `latency-p99` (its unary
/// p99 in seconds: give `max`). Any other name needs a `query`.
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

/// Whether `name` is a built-in check (no query needed).
pub fn is_builtin(name: &str) -> bool {
    name == SUCCESS_RATE || name == LATENCY_P99
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
    /// `success-rate` of at least `min_percent`.
    pub fn success_rate(min_percent: f64) -> Self {
        Self {
            name: SUCCESS_RATE.into(),
            query: None,
            min: Some(min_percent),
            max: None,
        }
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

    /// The PromQL of the check for the canary of `spec` in `namespace`,
    /// over the analysis interval (one minute at least: rate() needs two
    /// scrapes); None for an unknown name without a query.
    pub fn promql(&self, spec: &RolloutSpec, namespace: &str) -> Option<String> {
        if let Some(query) = &self.query {
            return Some(query.clone());
        }
        let window = format!("{}s", spec.interval_seconds.max(60));
        // Pods of the canary Deployment: <deployment>-<replicaset hash>-<suffix>.
        let pods = format!(
            r#"namespace="{namespace}",pod=~"{}-[a-z0-9]+-[a-z0-9]+""#,
            spec.canary_deployment
        );
        match self.name.as_str() {
            SUCCESS_RATE => Some(format!(
                r#"100 * (1 - sum(rate(grpc_server_handled_total{{{pods},grpc_code=~"{ERROR_CODES}"}}[{window}])) / sum(rate(grpc_server_handled_total{{{pods}}}[{window}])))"#
            )),
            LATENCY_P99 => Some(format!(
                r#"histogram_quantile(0.99, sum by (le) (rate(grpc_server_handling_seconds_bucket{{{pods},grpc_type="unary"}}[{window}])))"#
            )),
            _ => None,
        }
    }

    /// The verdict on a query's answer: no data and errors fail.
    pub fn judge(&self, answer: Result<f64, QueryError>) -> Verdict {
        let verdict = |passed: bool, detail: String| Verdict {
            check: self.name.clone(),
            passed,
            detail,
        };
        let value = match answer {
            Ok(value) => value,
            Err(e) => return verdict(false, format!("no verdict: {e}")),
        };
        let low = self.min.is_some_and(|m| value < m);
        let high = self.max.is_some_and(|m| value > m);
        let bounds = match (self.min, self.max) {
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
            interval_seconds: 30,
            ..RolloutSpec::new("order-service")
        }
    }

    #[test]
    fn queries_select_the_canary_pods_over_the_interval() {
        let q = Check::success_rate(99.0)
            .promql(&spec(), "mercato")
            .unwrap_or_default();
        assert!(
            q.contains(r#"pod=~"order-service-canary-[a-z0-9]+-[a-z0-9]+""#),
            "{q}"
        );
        assert!(
            q.contains("[60s]") && q.contains("grpc_code=~\"Unknown|"),
            "{q}"
        );
        let q = Check::latency_p99(0.5)
            .promql(&spec(), "mercato")
            .unwrap_or_default();
        assert!(q.starts_with("histogram_quantile(0.99, sum by (le)"), "{q}");
    }

    #[test]
    fn verdicts_pass_only_within_bounds_and_with_data() {
        let rate = Check::success_rate(99.0);
        assert!(rate.judge(Ok(99.5)).passed);
        assert!(!rate.judge(Ok(98.0)).passed);
        assert!(!rate.judge(Err(QueryError::NoData)).passed);
        let p99 = Check::latency_p99(0.5);
        assert!(p99.judge(Ok(0.2)).passed && !p99.judge(Ok(0.7)).passed);
        let any = Check {
            name: "saturation".into(),
            query: Some("x".into()),
            min: Some(1.0),
            max: Some(2.0),
        };
        assert_eq!(any.promql(&spec(), "mercato").as_deref(), Some("x"));
        let unknown = Check {
            name: "typo".into(),
            query: None,
            min: None,
            max: None,
        };
        assert_eq!(unknown.promql(&spec(), "mercato"), None);
        assert!(
            any.judge(Ok(1.5)).passed && !any.judge(Ok(2.5)).passed && !any.judge(Ok(0.5)).passed
        );
    }
}
