//! What a Rollout (crates/rollout) needs to work, beyond its schema: the
//! Deployments and routes it names exist, each route splits one host
//! between its `stable` and `canary` subsets, it drives every route that
//! sends its host canary traffic, a Prometheus scrape sees the canary's
//! pods, its own queries name exported metrics, and the controller's Role
//! allows every call the controller makes for it.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use serde_yaml::Value;

use crate::{Facts, at, cluster::selects, find, kind, name, promql::metric_names, seq, str_at};

/// (apiGroup, resource, verb, resourceName or None for a collection call).
type Call<'a> = (&'a str, &'a str, &'a str, Option<&'a str>);

/// Whether a rule of `role` allows `call`.
fn allows(role: &Value, (group, resource, verb, object): Call<'_>) -> bool {
    let has = |rule: &Value, key: &str, wanted: &str| {
        seq(rule, &[key]).any(|v| v.as_str() == Some(wanted) || v.as_str() == Some("*"))
    };
    seq(role, &["rules"]).any(|rule| {
        let names: Vec<&str> = seq(rule, &["resourceNames"])
            .filter_map(Value::as_str)
            .collect();
        has(rule, "apiGroups", group)
            && has(rule, "resources", resource)
            && has(rule, "verbs", verb)
            && (names.is_empty() || object.is_some_and(|o| names.contains(&o)))
    })
}

/// The Roles bound to the controller's ServiceAccount (the one its
/// Deployment runs as).
fn controller_roles(docs: &[Value]) -> Vec<&Value> {
    let Some(controller) = find(docs, "Deployment", "mercato-rollout") else {
        return Vec::new();
    };
    let account = str_at(
        controller,
        &["spec", "template", "spec", "serviceAccountName"],
    )
    .unwrap_or("default");
    docs.iter()
        .filter(|d| kind(d) == "RoleBinding")
        .filter(|b| {
            seq(b, &["subjects"]).any(|s| {
                str_at(s, &["kind"]) == Some("ServiceAccount")
                    && str_at(s, &["name"]) == Some(account)
            })
        })
        .filter_map(|b| str_at(b, &["roleRef", "name"]))
        .filter_map(|role| find(docs, "Role", role))
        .collect()
}

fn subset_of(destination: &Value) -> Option<&str> {
    str_at(destination, &["destination", "subset"])
}

pub(crate) fn check(docs: &[Value], facts: &Facts, problems: &mut Vec<String>) {
    let rollouts: Vec<&Value> = docs.iter().filter(|d| kind(d) == "Rollout").collect();
    if rollouts.is_empty() {
        return;
    }
    let roles = controller_roles(docs);
    if find(docs, "Deployment", "mercato-rollout").is_none() {
        problems
            .push("Rollouts rendered without the controller's Deployment mercato-rollout".into());
    }
    // The leader election's Lease (the controller's LEADER_ELECTION_LEASE).
    let lease = find(docs, "Deployment", "mercato-rollout")
        .into_iter()
        .flat_map(|d| seq(d, &["spec", "template", "spec", "containers"]))
        .flat_map(|c| seq(c, &["env"]))
        .find(|e| str_at(e, &["name"]) == Some("LEADER_ELECTION_LEASE"))
        .and_then(|e| str_at(e, &["value"]))
        .unwrap_or("mercato-rollout");
    let mut calls: BTreeSet<Call<'_>> = BTreeSet::from([
        ("mercato.dev", "rollouts", "list", None),
        ("mercato.dev", "rollouts", "watch", None),
        ("events.k8s.io", "events", "create", None),
        ("events.k8s.io", "events", "patch", None),
        ("coordination.k8s.io", "leases", "create", None),
        ("apps", "deployments", "list", None),
        ("apps", "deployments", "watch", None),
        ("apps", "deployments", "create", None),
        ("networking.istio.io", "virtualservices", "list", None),
        ("networking.istio.io", "virtualservices", "watch", None),
    ]);
    if !lease.is_empty() {
        calls.insert(("coordination.k8s.io", "leases", "get", Some(lease)));
        calls.insert(("coordination.k8s.io", "leases", "patch", Some(lease)));
    }
    let empty = Value::Null;
    for rollout in rollouts {
        let what = format!("Rollout {}", name(rollout));
        let spec = at(rollout, &["spec"]).unwrap_or(&empty);
        calls.insert(("mercato.dev", "rollouts", "get", Some(name(rollout))));
        calls.insert(("mercato.dev", "rollouts", "patch", Some(name(rollout))));
        calls.insert((
            "mercato.dev",
            "rollouts/status",
            "patch",
            Some(name(rollout)),
        ));

        let mut host = None;
        for field in ["stableDeployment", "canaryDeployment"] {
            let deployment = str_at(spec, &[field]).unwrap_or_default();
            if find(docs, "Deployment", deployment).is_none() {
                problems.push(format!("{what}: {field} {deployment} is not rendered"));
            }
            calls.insert(("apps", "deployments", "get", Some(deployment)));
            calls.insert(("apps", "deployments", "patch", Some(deployment)));
        }
        let mut driven = BTreeSet::new();
        for route in seq(spec, &["routes"]) {
            let service = str_at(route, &["virtualService"]).unwrap_or_default();
            let route_name = str_at(route, &["route"]).unwrap_or_default();
            calls.insert((
                "networking.istio.io",
                "virtualservices",
                "get",
                Some(service),
            ));
            calls.insert((
                "networking.istio.io",
                "virtualservices",
                "patch",
                Some(service),
            ));
            driven.insert((service, route_name));
            let Some(vs) = find(docs, "VirtualService", service) else {
                problems.push(format!("{what}: VirtualService {service} is not rendered"));
                continue;
            };
            let Some(http) =
                seq(vs, &["spec", "http"]).find(|h| str_at(h, &["name"]) == Some(route_name))
            else {
                problems.push(format!(
                    "{what}: VirtualService {service} has no route named {route_name}"
                ));
                continue;
            };
            let destinations: Vec<&Value> = seq(http, &["route"]).collect();
            let subsets: Vec<Option<&str>> = destinations.iter().map(|d| subset_of(d)).collect();
            let hosts: BTreeSet<&str> = destinations
                .iter()
                .filter_map(|d| str_at(d, &["destination", "host"]))
                .collect();
            if destinations.len() != 2
                || !subsets.contains(&Some("stable"))
                || !subsets.contains(&Some("canary"))
                || hosts.len() != 1
            {
                problems.push(format!(
                    "{what}: route {route_name} of {service} does not split one host between subsets stable and canary (add deploy/components/canary)"
                ));
            }
            host = host.or(hosts.into_iter().next());
        }
        // Every route that can weight this host's canary is driven (pins,
        // with the canary alone, are not weighted).
        if let Some(host) = host {
            for vs in docs.iter().filter(|d| kind(d) == "VirtualService") {
                for http in seq(vs, &["spec", "http"]) {
                    let destinations: Vec<&Value> = seq(http, &["route"]).collect();
                    let splits_host = destinations.len() > 1
                        && destinations.iter().any(|d| {
                            subset_of(d) == Some("canary")
                                && str_at(d, &["destination", "host"]) == Some(host)
                        });
                    let route_name = str_at(http, &["name"]).unwrap_or("(unnamed)");
                    if splits_host && !driven.contains(&(name(vs), route_name)) {
                        problems.push(format!(
                            "{what}: route {route_name} of {} sends {host} canary traffic but is not driven: it stays at its weight while the rollout moves",
                            name(vs)
                        ));
                    }
                }
            }
        }
        // The analysis has data: a scraped Service selects the canary's pods.
        let canary = str_at(spec, &["canaryDeployment"]).and_then(|d| find(docs, "Deployment", d));
        let canary_pods = canary.and_then(|d| at(d, &["spec", "template", "metadata", "labels"]));
        let scraped = docs
            .iter()
            .filter(|d| kind(d) == "Service")
            .filter(|s| {
                let selector = at(s, &["spec", "selector"]).map(|m| {
                    let mut wrapped = serde_yaml::Mapping::new();
                    wrapped.insert("matchLabels".into(), m.clone());
                    Value::Mapping(wrapped)
                });
                selects(selector.as_ref(), canary_pods)
            })
            .any(|s| {
                docs.iter()
                    .filter(|d| kind(d) == "ServiceMonitor")
                    .any(|m| selects(at(m, &["spec", "selector"]), at(s, &["metadata", "labels"])))
            });
        if canary.is_some() && !scraped {
            problems.push(format!(
                "{what}: no ServiceMonitor scrapes a Service selecting the canary's pods: every analysis has no data and the canary is rolled back"
            ));
        }
        for check in seq(spec, &["analysis"]) {
            let Some(query) = str_at(check, &["query"]) else {
                continue;
            };
            for metric in metric_names(query) {
                if !facts.metrics.contains(&metric) && !facts.external_metrics.contains(&metric) {
                    problems.push(format!(
                        "{what}: check {}: metric {metric} is not exported",
                        str_at(check, &["name"]).unwrap_or_default()
                    ));
                }
            }
        }
    }
    for call in calls {
        if !roles.iter().any(|role| allows(role, call)) {
            let (group, resource, verb, object) = call;
            problems.push(format!(
                "the rollout controller may not {verb} {resource}.{group}{}",
                object.map(|o| format!(" {o}")).unwrap_or_default()
            ));
        }
    }
}

/// The render as the cluster runs it: with the rollout component the
/// stable Deployments are not in the manifests, the controller creates
/// each from its canary — by its own `mercato_rollout::template::stable_from`,
/// called here. The checks look at those.
pub(crate) fn as_deployed(docs: &[Value]) -> Vec<Value> {
    let mut deployed = docs.to_vec();
    for rollout in docs.iter().filter(|d| kind(d) == "Rollout") {
        let (Some(stable), Some(canary)) = (
            str_at(rollout, &["spec", "stableDeployment"]),
            str_at(rollout, &["spec", "canaryDeployment"]),
        ) else {
            continue;
        };
        if find(docs, "Deployment", stable).is_some() {
            continue;
        }
        let created = find(docs, "Deployment", canary)
            .and_then(|c| serde_yaml::from_value::<Deployment>(c.clone()).ok())
            .and_then(|c| mercato_rollout::template::stable_from(&c, stable).ok())
            .and_then(|d| serde_yaml::to_value(d).ok());
        if let Some(created) = created {
            deployed.push(created);
        }
    }
    deployed
}
