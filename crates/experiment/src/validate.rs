//! The rules an experiment keeps, checked before it is stored.

use std::collections::BTreeSet;

use crate::model::{Experiment, compare_versions, parse_version};

/// One broken rule: the field (as the API names it, `variants[1].weight`)
/// and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

fn violation(field: impl Into<String>, description: impl Into<String>) -> FieldViolation {
    FieldViolation {
        field: field.into(),
        description: description.into(),
    }
}

/// Keys (of experiments and variants): what fits a metric label and a header.
/// 1–64 of `a-z`, `0-9`, `-` and `_`: what a key, a variant or an event
/// name may hold wherever it travels (the `x-ab-variant` header, requests).
pub fn is_key_text(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// A stored key also starts with a letter or digit.
fn valid_key(key: &str) -> bool {
    is_key_text(key) && key.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
}

const KEY_RULE: &str =
    "1–64 characters: lower-case letters, digits, '-' and '_', starting with a letter or digit";

/// Every violation, empty when the experiment is valid.
pub fn validate(experiment: &Experiment) -> Vec<FieldViolation> {
    let mut problems = Vec::new();
    if !valid_key(&experiment.key) {
        problems.push(violation("key", KEY_RULE));
    }
    if experiment.name.trim().is_empty() || experiment.name.len() > 200 {
        problems.push(violation("name", "required, at most 200 characters"));
    }
    if experiment.description.len() > 2000 {
        problems.push(violation("description", "at most 2000 characters"));
    }
    if experiment.variants.len() < 2 || experiment.variants.len() > 20 {
        problems.push(violation("variants", "between 2 and 20 variants"));
    }
    let mut keys = BTreeSet::new();
    for (i, variant) in experiment.variants.iter().enumerate() {
        if !valid_key(&variant.key) {
            problems.push(violation(format!("variants[{i}].key"), KEY_RULE));
        } else if !keys.insert(variant.key.as_str()) {
            problems.push(violation(
                format!("variants[{i}].key"),
                format!("duplicate variant key {:?}", variant.key),
            ));
        }
        if variant.weight > 100 {
            problems.push(violation(format!("variants[{i}].weight"), "0–100"));
        }
    }
    let total: u64 = experiment
        .variants
        .iter()
        .map(|v| u64::from(v.weight))
        .sum();
    if !experiment.variants.is_empty() && total != 100 {
        problems.push(violation(
            "variants",
            format!("the weights sum to {total}, not 100"),
        ));
    }
    if experiment.traffic_percent > 100 {
        problems.push(violation("traffic_percent", "0–100"));
    }
    if let (Some(start), Some(end)) = (experiment.start_time, experiment.end_time)
        && end <= start
    {
        problems.push(violation("end_time", "must be after start_time"));
    }
    if !keys.contains(experiment.control_variant.as_str()) {
        problems.push(violation(
            "control_variant",
            "must name one of the variants",
        ));
    }
    for (user, variant) in &experiment.forced_variants {
        if !keys.contains(variant.as_str()) {
            problems.push(violation(
                format!("forced_variants[{user}]"),
                format!("{variant:?} is not a variant of this experiment"),
            ));
        }
    }
    let targeting = &experiment.targeting;
    let version = |field: &str, text: &Option<String>, problems: &mut Vec<FieldViolation>| {
        let text = text.as_deref()?;
        let parsed = parse_version(text);
        if parsed.is_none() {
            problems.push(violation(
                format!("targeting.{field}"),
                "a dotted numeric version such as 2.10.1",
            ));
        }
        parsed
    };
    let min = version("min_app_version", &targeting.min_app_version, &mut problems);
    let max = version("max_app_version", &targeting.max_app_version, &mut problems);
    if let (Some(min), Some(max)) = (min, max)
        && compare_versions(&min, &max).is_gt()
    {
        problems.push(violation(
            "targeting.max_app_version",
            "must not be below min_app_version",
        ));
    }
    problems
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{Status, Targeting, Variant};

    pub(crate) fn experiment(weights: &[u32]) -> Experiment {
        Experiment {
            key: "checkout-fee".into(),
            name: "Checkout fee".into(),
            description: String::new(),
            variants: weights
                .iter()
                .enumerate()
                .map(|(i, w)| Variant {
                    key: if i == 0 {
                        "control".into()
                    } else {
                        format!("v{i}")
                    },
                    weight: *w,
                    config: serde_json::Map::new(),
                })
                .collect(),
            traffic_percent: 100,
            targeting: Targeting::default(),
            start_time: None,
            end_time: None,
            status: Status::Running,
            control_variant: "control".into(),
            salt: "s1".into(),
            forced_variants: Default::default(),
        }
    }

    fn fields(e: &Experiment) -> Vec<String> {
        validate(e).into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn a_valid_experiment_has_no_violation() {
        assert_eq!(validate(&experiment(&[50, 50])), vec![]);
    }

    #[test]
    fn each_rule_names_its_field() {
        assert_eq!(fields(&experiment(&[50, 40])), ["variants"]);
        let mut e = experiment(&[50, 50]);
        e.variants[1].key = "control".into();
        assert_eq!(fields(&e), ["variants[1].key"]);
        let mut e = experiment(&[50, 50]);
        e.traffic_percent = 101;
        assert_eq!(fields(&e), ["traffic_percent"]);
        let mut e = experiment(&[50, 50]);
        (e.start_time, e.end_time) = (Some(10), Some(10));
        assert_eq!(fields(&e), ["end_time"]);
        let mut e = experiment(&[50, 50]);
        e.key = "Bad Key".into();
        e.control_variant = "nope".into();
        assert_eq!(fields(&e), ["key", "control_variant"]);
        let mut e = experiment(&[50, 50]);
        e.targeting.min_app_version = Some("2.x".into());
        assert_eq!(fields(&e), ["targeting.min_app_version"]);
        let mut e = experiment(&[50, 50]);
        e.targeting.min_app_version = Some("3".into());
        e.targeting.max_app_version = Some("2.9".into());
        assert_eq!(fields(&e), ["targeting.max_app_version"]);
        let mut e = experiment(&[50, 50]);
        e.forced_variants.insert("u1".into(), "v9".into());
        assert_eq!(fields(&e), ["forced_variants[u1]"]);
        assert_eq!(fields(&experiment(&[100])), ["variants"]);
    }
}
