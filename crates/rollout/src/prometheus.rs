//! Prometheus' HTTP API: one instant query, one number.

use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

/// Why a query has no usable number. Every one of these fails its check.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    #[error("Prometheus unreachable: {0}")]
    Unreachable(String),
    #[error("Prometheus answered HTTP {0}")]
    Http(u16),
    #[error("Prometheus refused the query: {0}")]
    Refused(String),
    #[error("the query returned no data")]
    NoData,
    #[error("the query returned {0} series, not one")]
    Ambiguous(usize),
    #[error("the value {0:?} is not a finite number")]
    NotANumber(String),
    #[error("unreadable answer: {0}")]
    Unreadable(String),
}

/// A Prometheus server.
#[derive(Debug, Clone)]
pub struct Prometheus {
    query_url: Url,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum Data {
    Vector(Vec<Sample>),
    Scalar((f64, String)),
    /// Range vectors and strings: no number for a check.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct Sample {
    value: (f64, String),
}

fn number(text: &str) -> Result<f64, QueryError> {
    text.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| QueryError::NotANumber(text.to_owned()))
}

impl Prometheus {
    /// The server at `base` (`http://prometheus.monitoring:9090`); each
    /// query may take `timeout`.
    pub fn new(base: &str, timeout: Duration) -> Result<Self, QueryError> {
        let query_url = Url::parse(base)
            .and_then(|b| b.join("api/v1/query"))
            .map_err(|e| QueryError::Unreachable(format!("{base}: {e}")))?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| QueryError::Unreachable(e.to_string()))?;
        Ok(Self { query_url, client })
    }

    /// The one number `query` evaluates to now.
    pub async fn query(&self, query: &str) -> Result<f64, QueryError> {
        let mut url = self.query_url.clone();
        url.query_pairs_mut().append_pair("query", query);
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| QueryError::Unreachable(e.to_string()))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| QueryError::Unreachable(e.to_string()))?;
        // Prometheus answers 400/422 with a JSON error worth reporting.
        let answer: Answer = match serde_json::from_str(&body) {
            Ok(answer) => answer,
            Err(_) if !status.is_success() => return Err(QueryError::Http(status.as_u16())),
            Err(e) => return Err(QueryError::Unreadable(e.to_string())),
        };
        if answer.status != "success" {
            return Err(QueryError::Refused(answer.error.unwrap_or(answer.status)));
        }
        match answer.data {
            Some(Data::Vector(samples)) => match samples.as_slice() {
                [] => Err(QueryError::NoData),
                [one] => number(&one.value.1),
                many => Err(QueryError::Ambiguous(many.len())),
            },
            Some(Data::Scalar((_, value))) => number(&value),
            Some(Data::Other) | None => Err(QueryError::Unreadable(
                "not an instant vector or scalar".into(),
            )),
        }
    }
}
