//! What the workloads ask of the cluster: autoscaled Deployments left to
//! their autoscaler, autoscaling on the app container, the metrics port
//! closed to the rest of the cluster, replicas spread in production, and
//! which CRDs a render needs.

use std::collections::BTreeSet;

use serde_yaml::Value;

use crate::{at, kind, name, number, seq, services, str_at};

/// API groups every Kubernetes cluster serves (no CRD needed).
const BUILT_IN_GROUPS: [&str; 9] = [
    "",
    "apps",
    "autoscaling",
    "policy",
    "batch",
    "networking.k8s.io",
    "rbac.authorization.k8s.io",
    "coordination.k8s.io",
    "apiextensions.k8s.io",
];

/// The API groups of a render that need a CRD (Istio's, the Prometheus
/// operator's, the VPA's): what a cluster must have for `kubectl apply -k`.
pub fn needed_api_groups(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .filter_map(|d| str_at(d, &["apiVersion"]))
        .map(|v| v.rsplit_once('/').map_or("", |(group, _)| group))
        .filter(|group| !BUILT_IN_GROUPS.contains(group))
        .map(str::to_owned)
        .collect()
}

pub(crate) fn selects(selector: Option<&Value>, labels: Option<&Value>) -> bool {
    let Some(selector) = selector else {
        return false;
    };
    let labels = labels.and_then(Value::as_mapping);
    let label = |key: &Value| labels.and_then(|l| l.get(key));
    let by_labels = selector
        .get("matchLabels")
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k) == Some(v));
    let by_expressions = seq(selector, &["matchExpressions"]).all(|e| {
        let value = e.get("key").and_then(label);
        let values: Vec<&Value> = seq(e, &["values"]).collect();
        match str_at(e, &["operator"]) {
            Some("In") => value.is_some_and(|v| values.contains(&v)),
            Some("NotIn") => value.is_none_or(|v| !values.contains(&v)),
            Some("Exists") => value.is_some(),
            Some("DoesNotExist") => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

pub(crate) fn check(docs: &[Value], problems: &mut Vec<String>) {
    for hpa in docs.iter().filter(|d| kind(d) == "HorizontalPodAutoscaler") {
        let target = str_at(hpa, &["spec", "scaleTargetRef", "name"]).unwrap_or_default();
        let managed = docs
            .iter()
            .find(|d| kind(d) == "Deployment" && name(d) == target);
        if let Some(replicas) = managed.and_then(|d| at(d, &["spec", "replicas"])) {
            problems.push(format!(
                "Deployment {target}: sets replicas {replicas:?} although HorizontalPodAutoscaler {} manages it (every apply resets a scaled-out workload)",
                name(hpa)
            ));
        }
        for metric in seq(hpa, &["spec", "metrics"]) {
            if str_at(metric, &["type"]) == Some("Resource") {
                problems.push(format!(
                    "HorizontalPodAutoscaler {}: a Resource metric averages the sidecar in; use ContainerResource for the app container",
                    name(hpa)
                ));
            }
        }
    }
    check_network_policies(docs, problems);
}

/// Each mercato pod is selected by an ingress NetworkPolicy, and no rule of
/// those admits the metrics port from everywhere.
fn check_network_policies(docs: &[Value], problems: &mut Vec<String>) {
    let policies: Vec<&Value> = docs
        .iter()
        .filter(|d| kind(d) == "NetworkPolicy")
        .filter(|p| {
            seq(p, &["spec", "policyTypes"]).any(|t| t.as_str() == Some("Ingress"))
                || at(p, &["spec", "ingress"]).is_some()
        })
        .collect();
    for deployment in services(docs) {
        let pod = at(deployment, &["spec", "template", "metadata", "labels"]);
        let metrics_port = seq(deployment, &["spec", "template", "spec", "containers"])
            .flat_map(|c| seq(c, &["ports"]))
            .find(|p| str_at(p, &["name"]) == Some("metrics"))
            .and_then(|p| number(p.get("containerPort")));
        let selecting: Vec<&&Value> = policies
            .iter()
            .filter(|p| selects(at(p, &["spec", "podSelector"]), pod))
            .collect();
        if selecting.is_empty() {
            problems.push(format!(
                "{}: no NetworkPolicy selects its pods: every port, metrics included, is open to the whole cluster",
                name(deployment)
            ));
        }
        for policy in selecting {
            for rule in seq(policy, &["spec", "ingress"]) {
                let ports: Vec<&Value> = seq(rule, &["ports"]).collect();
                let admits_metrics = ports.is_empty()
                    || ports.iter().any(|p| match p.get("port") {
                        Some(Value::String(port)) => port == "metrics",
                        port => number(port) == metrics_port,
                    });
                if !admits_metrics {
                    continue;
                }
                let peers: Vec<&Value> = seq(rule, &["from"]).collect();
                let anyone = peers.is_empty()
                    || peers.iter().any(|peer| {
                        peer.get("ipBlock").is_some()
                            || (peer.get("podSelector").is_none()
                                && peer
                                    .get("namespaceSelector")
                                    .and_then(Value::as_mapping)
                                    .is_some_and(serde_yaml::Mapping::is_empty))
                    });
                if anyone {
                    problems.push(format!(
                        "NetworkPolicy {}: admits the metrics port of {} from anywhere",
                        name(policy),
                        name(deployment)
                    ));
                }
            }
        }
    }
}

/// Production: each autoscaled workload spreads over zones and nodes (a
/// one-replica canary has nothing to spread).
pub fn check_production(docs: &[Value]) -> Vec<String> {
    let docs = &crate::rollout::as_deployed(docs);
    let mut problems = Vec::new();
    let scaled: BTreeSet<&str> = docs
        .iter()
        .filter(|d| kind(d) == "HorizontalPodAutoscaler")
        .filter_map(|h| str_at(h, &["spec", "scaleTargetRef", "name"]))
        .collect();
    for deployment in services(docs).filter(|d| scaled.contains(name(d))) {
        let pod = at(deployment, &["spec", "template", "metadata", "labels"]);
        let spreads: BTreeSet<&str> = seq(
            deployment,
            &["spec", "template", "spec", "topologySpreadConstraints"],
        )
        .filter(|c| selects(c.get("labelSelector"), pod))
        .filter_map(|c| str_at(c, &["topologyKey"]))
        .collect();
        for key in ["topology.kubernetes.io/zone", "kubernetes.io/hostname"] {
            if !spreads.contains(key) {
                problems.push(format!(
                    "{}: no topology spread over {key} that selects its own pods",
                    name(deployment)
                ));
            }
        }
    }
    problems
}
