//! The experiment as stored and served.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where an experiment is in its life. Legal moves: DRAFT → RUNNING,
/// RUNNING ⇄ PAUSED, DRAFT | RUNNING | PAUSED → ENDED; ENDED is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Draft,
    Running,
    Paused,
    Ended,
}

/// A status change the life cycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an experiment cannot go from {from:?} to {to:?}")]
pub struct TransitionError {
    pub from: Status,
    pub to: Status,
}

impl Status {
    /// The status after a move to `to`; moving to where it is already is a
    /// no-op that succeeds (so a retried call does no harm).
    pub fn transition(self, to: Status) -> Result<Status, TransitionError> {
        use Status::{Draft, Ended, Paused, Running};
        match (self, to) {
            (from, to) if from == to => Ok(to),
            (Draft, Running) | (Running, Paused) | (Paused, Running) => Ok(to),
            (Draft | Running | Paused, Ended) => Ok(to),
            (from, to) => Err(TransitionError { from, to }),
        }
    }
}

/// One arm of an experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// Unique within the experiment; what callers see (`x-ab-variant`).
    pub key: String,
    /// Share of the enrolled users, in percent; the weights sum to 100.
    pub weight: u32,
    /// What the variant changes, read by the code that acts on it.
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// Who is eligible; an empty list or an absent bound does not restrict.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Targeting {
    /// The user must be in at least one of these.
    pub segments: Vec<String>,
    /// ISO 3166-1 alpha-2 codes, compared case-insensitively.
    pub countries: Vec<String>,
    /// `ios`, `android`, `web`, … compared case-insensitively.
    pub device_types: Vec<String>,
    /// Dotted numeric versions (`2.10.1`), both bounds inclusive.
    pub min_app_version: Option<String>,
    pub max_app_version: Option<String>,
}

/// An experiment. Times are Unix epoch microseconds, as elsewhere in the suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    /// Unique, stable: part of every user's hash.
    pub key: String,
    pub name: String,
    pub description: String,
    /// In the order declared: the order in which buckets are handed out.
    pub variants: Vec<Variant>,
    /// Share of the eligible users enrolled, 0–100.
    pub traffic_percent: u32,
    pub targeting: Targeting,
    /// Enrolment only inside [start, end); absent: unbounded.
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub status: Status,
    /// The variant the others are compared with.
    pub control_variant: String,
    /// Mixed into the hash: a new salt reshuffles everyone (a re-run of the
    /// experiment without carry-over from the last one).
    pub salt: String,
    /// QA overrides: user id → variant key, whatever the traffic and targeting.
    pub forced_variants: BTreeMap<String, String>,
}

/// What the caller says about the user being assigned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub country: String,
    pub device_type: String,
    pub app_version: String,
    pub segments: Vec<String>,
}

/// `2.10.1` → [2, 10, 1]; None if any part is not a number.
pub(crate) fn parse_version(text: &str) -> Option<Vec<u64>> {
    text.trim()
        .split('.')
        .map(|part| part.parse().ok())
        .collect::<Option<Vec<u64>>>()
        .filter(|parts| !parts.is_empty())
}

/// Compares dotted versions with missing parts as 0 (`2.1` = `2.1.0`).
pub(crate) fn compare_versions(a: &[u64], b: &[u64]) -> std::cmp::Ordering {
    let len = a.len().max(b.len());
    (0..len)
        .map(|i| {
            a.get(i)
                .copied()
                .unwrap_or(0)
                .cmp(&b.get(i).copied().unwrap_or(0))
        })
        .find(|o| o.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal)
}

#[cfg(test)]
mod tests {
    use super::{Status::*, *};

    #[test]
    fn only_legal_transitions() {
        let all = [Draft, Running, Paused, Ended];
        let legal = [
            (Draft, Running),
            (Running, Paused),
            (Paused, Running),
            (Draft, Ended),
            (Running, Ended),
            (Paused, Ended),
        ];
        for from in all {
            for to in all {
                let allowed = from == to || legal.contains(&(from, to));
                assert_eq!(from.transition(to).is_ok(), allowed, "{from:?} → {to:?}");
            }
        }
    }

    #[test]
    fn versions_compare_by_number() {
        let v = |s| parse_version(s).expect("a version");
        assert!(compare_versions(&v("2.10"), &v("2.9.9")).is_gt());
        assert!(compare_versions(&v("2.1"), &v("2.1.0")).is_eq());
        assert_eq!(parse_version("2.x"), None);
        assert_eq!(parse_version(""), None);
    }
}
