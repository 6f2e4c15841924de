//! The Postgres connections a render may hold at once, against the budget
//! its environment states on the Namespace: every pod of every Deployment
//! that reads a database (an autoscaled one at its autoscaler's maximum,
//! plus a rolling update's surge; a Rollout's canary as the controller
//! scales it at `maxWeight`) and every such Job, each with its pool full.

use serde_yaml::Value;

use crate::{Facts, at, kind, name, number, seq, setting, str_at};

/// The Namespace annotation that states the budget.
pub(crate) const BUDGET_ANNOTATION: &str = "mercato.dev/postgres-connections";

pub(crate) fn check(docs: &[Value], facts: &Facts, problems: &mut Vec<String>) {
    let Some(namespace) = docs.iter().find(|d| kind(d) == "Namespace") else {
        return;
    };
    let Some(budget) = number(at(
        namespace,
        &["metadata", "annotations", BUDGET_ANNOTATION],
    )) else {
        problems.push(format!(
            "Namespace {}: no {BUDGET_ANNOTATION} annotation: the connections the pods may open are checked against nothing",
            name(namespace)
        ));
        return;
    };
    let mut total = 0.0;
    let mut parts = Vec::new();
    for workload in docs.iter().filter(|d| reads_database(d)) {
        let pods = match kind(workload) {
            "Job" => number(at(workload, &["spec", "parallelism"])).unwrap_or(1.0),
            _ => canary_pods(docs, workload).unwrap_or_else(|| most_pods(docs, workload)),
        };
        let pool = setting(docs, workload, "DATABASE_MAX_CONNECTIONS")
            .unwrap_or(facts.default_database_max_connections);
        total += pods * pool;
        parts.push(format!("{} {pods}×{pool}", name(workload)));
    }
    if total > budget {
        problems.push(format!(
            "up to {total} Postgres connections ({}) exceed the {budget} the namespace's {BUDGET_ANNOTATION} allows: lower DATABASE_MAX_CONNECTIONS or maxReplicas, or raise the budget (a larger server, a pooler; deploy/README.md)",
            parts.join(", ")
        ));
    }
}

/// A Deployment or Job whose container has DATABASE_URL.
fn reads_database(doc: &Value) -> bool {
    matches!(kind(doc), "Deployment" | "Job")
        && seq(doc, &["spec", "template", "spec", "containers"])
            .flat_map(|c| seq(c, &["env"]))
            .any(|e| str_at(e, &["name"]) == Some("DATABASE_URL"))
}

/// A Rollout's canary: the rollout controller scales it to carry its
/// weight at the stable's load per pod (`stable × w / (100 − w)`), so at
/// `maxWeight` at most that of the stable's autoscaler maximum (rounded
/// up), not what its manifest says.
fn canary_pods(docs: &[Value], canary: &Value) -> Option<f64> {
    let rollout = docs.iter().find(|d| {
        kind(d) == "Rollout" && str_at(d, &["spec", "canaryDeployment"]) == Some(name(canary))
    })?;
    let stable_name = str_at(rollout, &["spec", "stableDeployment"])?;
    let stable = docs
        .iter()
        .find(|d| kind(d) == "Deployment" && name(d) == stable_name)?;
    let max_weight = number(at(rollout, &["spec", "maxWeight"])).unwrap_or(50.0);
    let stable = wanted_pods(docs, stable);
    let pods = if max_weight >= 100.0 {
        stable
    } else {
        (stable * max_weight / (100.0 - max_weight)).ceil()
    };
    Some(pods.max(1.0))
}

/// What a Deployment's autoscaler may scale it to (else its replicas).
fn wanted_pods(docs: &[Value], deployment: &Value) -> f64 {
    let scaled = docs.iter().find(|d| {
        kind(d) == "HorizontalPodAutoscaler"
            && str_at(d, &["spec", "scaleTargetRef", "name"]) == Some(name(deployment))
    });
    scaled
        .and_then(|h| number(at(h, &["spec", "maxReplicas"])))
        .or_else(|| number(at(deployment, &["spec", "replicas"])))
        .unwrap_or(1.0)
}

/// The most pods a Deployment can have: its autoscaler's maximum (else its
/// replicas), plus what a rolling update adds on top.
fn most_pods(docs: &[Value], deployment: &Value) -> f64 {
    let wanted = wanted_pods(docs, deployment);
    let strategy = at(deployment, &["spec", "strategy"]);
    if strategy.and_then(|s| str_at(s, &["type"])) == Some("Recreate") {
        return wanted;
    }
    // Kubernetes' default surge is 25 %, rounded up.
    let surge = match strategy.and_then(|s| at(s, &["rollingUpdate", "maxSurge"])) {
        Some(Value::String(percent)) => percent
            .strip_suffix('%')
            .and_then(|p| p.parse::<f64>().ok())
            .map_or(1.0, |p| (wanted * p / 100.0).ceil()),
        Some(other) => number(Some(other)).unwrap_or(1.0),
        None => (wanted * 0.25).ceil(),
    };
    wanted + surge
}
