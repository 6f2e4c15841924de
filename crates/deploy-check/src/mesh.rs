//! What the Istio objects do with the services: routes that reach pods,
//! retries only where a repeat is harmless, timeouts longer than the servers
//! wait, outlier detection that ejects broken pods only, the edge limited to
//! end-user RPCs, and end-user tokens verifiable by the sidecars.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml::Value;

use crate::{Facts, at, find, kind, name, number, seq, services, setting, str_at};

/// Retry conditions under which the call never reached a pod: safe for
/// any method. Everything else (`unavailable`, `cancelled`, `5xx`, `reset`,
/// …) may repeat work a pod did.
const SAFE_RETRY_ON: [&str; 3] = ["connect-failure", "refused-stream", "reset-before-request"];

/// What Istio does for a route without `retries` (its default retry
/// policy): two attempts on these conditions.
const ISTIO_DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// Envoy's drain of a classic sidecar when `terminationDrainDuration` is unset.
const ISTIO_DEFAULT_DRAIN_SECS: f64 = 5.0;

/// `10s`, `1.5s`, `500ms`, `2m`, `1h` → seconds.
pub(crate) fn duration_secs(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3600.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// `user-service.mercato.svc.cluster.local` → `user-service`.
fn short_host(host: &str) -> &str {
    host.split('.').next().unwrap_or(host)
}

/// The labels of the pods a Deployment runs.
fn pod_labels(deployment: &Value) -> Option<&serde_yaml::Mapping> {
    at(deployment, &["spec", "template", "metadata", "labels"])?.as_mapping()
}

fn labels_match(selector: Option<&Value>, labels: &serde_yaml::Mapping) -> bool {
    selector
        .and_then(Value::as_mapping)
        .is_some_and(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The gRPC paths one `match` entry of a route selects (None: a matcher this
/// check cannot evaluate, such as a regex).
fn matched_paths(matched: &Value, candidates: &BTreeSet<String>) -> Option<BTreeSet<String>> {
    let uri = matched.get("uri");
    let Some(uri) = uri else {
        return Some(candidates.clone());
    };
    if let Some(exact) = str_at(uri, &["exact"]) {
        return Some(candidates.iter().filter(|p| *p == exact).cloned().collect());
    }
    if let Some(prefix) = str_at(uri, &["prefix"]) {
        return Some(
            candidates
                .iter()
                .filter(|p| p.starts_with(prefix))
                .cloned()
                .collect(),
        );
    }
    None
}

/// The methods a route can carry: the served methods of its destinations'
/// services, narrowed by its matches. Err: a matcher the check cannot read.
fn route_methods(http: &Value, facts: &Facts) -> Result<BTreeSet<String>, String> {
    let mut served = BTreeSet::new();
    for route in seq(http, &["route"]) {
        let host = short_host(str_at(route, &["destination", "host"]).unwrap_or_default());
        for prefix in facts.served_by.get(host).into_iter().flatten() {
            served.extend(
                facts
                    .grpc_paths
                    .iter()
                    .filter(|p| p.starts_with(prefix.as_str()))
                    .cloned(),
            );
        }
    }
    let matches: Vec<&Value> = seq(http, &["match"]).collect();
    if matches.is_empty() {
        return Ok(served);
    }
    let mut methods = BTreeSet::new();
    for matched in matches {
        match matched_paths(matched, &served) {
            Some(paths) => methods.extend(paths),
            None => return Err(format!("a match this check cannot evaluate: {matched:?}")),
        }
    }
    Ok(methods)
}

fn route_name(route: &Value, http: &Value) -> String {
    format!(
        "VirtualService {} route {}",
        name(route),
        str_at(http, &["name"]).unwrap_or("(unnamed)")
    )
}

/// Every check of this module.
pub(crate) fn check(docs: &[Value], facts: &Facts, problems: &mut Vec<String>) {
    for route in docs.iter().filter(|d| kind(d) == "VirtualService") {
        let gateways: Vec<&str> = seq(route, &["spec", "gateways"])
            .filter_map(Value::as_str)
            .collect();
        let at_edge = gateways.iter().any(|g| *g != "mesh");
        let in_mesh = gateways.is_empty() || gateways.contains(&"mesh");
        for http in seq(route, &["spec", "http"]) {
            let what = route_name(route, http);
            check_destinations(docs, &what, http, problems);
            let methods = match route_methods(http, facts) {
                Ok(methods) => methods,
                Err(e) => {
                    problems.push(format!("{what}: {e}"));
                    continue;
                }
            };
            check_retries(&what, http, &methods, facts, problems);
            check_timeouts(docs, &what, http, &methods, in_mesh, facts, problems);
            if at_edge {
                for method in methods.difference(&facts.edge_paths) {
                    problems.push(format!(
                        "{what}: routes {method} at the edge, which is no end-user RPC"
                    ));
                }
            }
        }
    }
    check_outlier_detection(docs, problems);
    check_edge_authorization(docs, facts, problems);
    check_request_authentication(docs, problems);
    for deployment in services(docs) {
        check_sidecar_drain(docs, deployment, facts, problems);
    }
}

/// Every destination names a rendered Service and, with a subset, a
/// DestinationRule subset whose pods some Deployment runs — at weight 0 too,
/// since a rollout raises that weight without looking; and one route splits
/// one host's traffic (its subsets), never several hosts'.
fn check_destinations(docs: &[Value], what: &str, http: &Value, problems: &mut Vec<String>) {
    let hosts: BTreeSet<&str> = seq(http, &["route"])
        .filter_map(|r| str_at(r, &["destination", "host"]))
        .map(short_host)
        .collect();
    if hosts.len() > 1 {
        problems.push(format!(
            "{what}: splits traffic between hosts {} (a canary weight patched onto the wrong route?)",
            hosts.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    for destination in seq(http, &["route"]) {
        let host = short_host(str_at(destination, &["destination", "host"]).unwrap_or_default());
        let Some(service) = find(docs, "Service", host) else {
            problems.push(format!("{what}: host {host} is no rendered Service"));
            continue;
        };
        let selector = at(service, &["spec", "selector"]);
        let subset_labels = match str_at(destination, &["destination", "subset"]) {
            None => None,
            Some(subset) => {
                let rule = docs.iter().find(|d| {
                    kind(d) == "DestinationRule"
                        && short_host(str_at(d, &["spec", "host"]).unwrap_or_default()) == host
                });
                let labels = rule.and_then(|r| {
                    seq(r, &["spec", "subsets"])
                        .find(|s| str_at(s, &["name"]) == Some(subset))
                        .and_then(|s| s.get("labels"))
                });
                let Some(labels) = labels else {
                    problems.push(format!(
                        "{what}: subset {subset} of {host} is defined by no DestinationRule"
                    ));
                    continue;
                };
                Some((subset, labels))
            }
        };
        let has_pods = docs
            .iter()
            .filter(|d| kind(d) == "Deployment")
            .filter_map(pod_labels)
            .any(|labels| {
                labels_match(selector, labels)
                    && subset_labels.is_none_or(|(_, s)| labels_match(Some(s), labels))
            });
        if !has_pods {
            let subset = subset_labels.map_or(String::new(), |(s, _)| format!(" subset {s}"));
            let weight = number(destination.get("weight"))
                .map_or(String::new(), |w| format!(" (weight {w})"));
            problems.push(format!(
                "{what}: sends traffic to {host}{subset}{weight}, whose pods no rendered Deployment runs (503 no healthy upstream)"
            ));
        }
    }
}

/// `unavailable` and the like repeat a call a pod may have acted on: only
/// for methods the protos mark NO_SIDE_EFFECTS or IDEMPOTENT.
fn check_retries(
    what: &str,
    http: &Value,
    methods: &BTreeSet<String>,
    facts: &Facts,
    problems: &mut Vec<String>,
) {
    let (attempts, retry_on) = match http.get("retries") {
        None => (2.0, ISTIO_DEFAULT_RETRY_ON),
        Some(retries) => (
            number(retries.get("attempts")).unwrap_or(2.0),
            str_at(retries, &["retryOn"]).unwrap_or(ISTIO_DEFAULT_RETRY_ON),
        ),
    };
    if attempts == 0.0 {
        return;
    }
    let unsafe_on: Vec<&str> = retry_on
        .split(',')
        .map(str::trim)
        .filter(|c| !SAFE_RETRY_ON.contains(c))
        .collect();
    if unsafe_on.is_empty() {
        return;
    }
    for method in methods.difference(&facts.idempotent_paths) {
        problems.push(format!(
            "{what}: retries {method} on {} although its idempotency_level is neither NO_SIDE_EFFECTS nor IDEMPOTENT{}",
            unsafe_on.join(","),
            if http.get("retries").is_none() {
                " (Istio's default retry policy, as the route sets none)"
            } else {
                ""
            }
        ));
    }
}

/// Streams get no timeout; every other method's tries outlast what its
/// server may wait (order_wait_secs, the caller's peer_timeout_ms, …).
fn check_timeouts(
    docs: &[Value],
    what: &str,
    http: &Value,
    methods: &BTreeSet<String>,
    in_mesh: bool,
    facts: &Facts,
    problems: &mut Vec<String>,
) {
    let timeout = str_at(http, &["timeout"]).map(|t| (t, duration_secs(t)));
    let per_try = str_at(http, &["retries", "perTryTimeout"]).map(|t| (t, duration_secs(t)));
    for (field, value) in [("timeout", timeout), ("perTryTimeout", per_try)] {
        if let Some((text, None)) = value {
            problems.push(format!("{what}: {field} {text} is no duration"));
        }
    }
    let timeout = timeout.and_then(|(_, t)| t).filter(|t| *t > 0.0);
    let per_try = per_try.and_then(|(_, t)| t).filter(|t| *t > 0.0);
    for method in methods {
        if facts.streaming_paths.contains(method) {
            if let Some(t) = timeout {
                problems.push(format!(
                    "{what}: timeout {t} s cuts the stream {method} (use 0s)"
                ));
            }
            if let Some(t) = per_try {
                problems.push(format!(
                    "{what}: perTryTimeout {t} s cuts the stream {method}"
                ));
            }
            continue;
        }
        let waits_here = facts
            .waits
            .iter()
            .filter(|w| &w.path == method && (in_mesh || !w.in_mesh));
        for wait in waits_here {
            let Some(deployment) = find(docs, "Deployment", &wait.deployment) else {
                continue;
            };
            let waits =
                setting(docs, deployment, &wait.setting).unwrap_or(wait.default) * wait.scale;
            for (field, limit) in [("timeout", timeout), ("perTryTimeout", per_try)] {
                if let Some(limit) = limit
                    && limit <= waits
                {
                    problems.push(format!(
                        "{what}: {field} {limit} s is not longer than the {waits} s {} may wait on {method} ({})",
                        wait.deployment, wait.setting
                    ));
                }
            }
        }
    }
}

/// Outlier detection on connection failures only: a healthy pod answers
/// UNAVAILABLE or INTERNAL for its callers' reasons (a provider error, a
/// dependency readiness already reports).
fn check_outlier_detection(docs: &[Value], problems: &mut Vec<String>) {
    for rule in docs.iter().filter(|d| kind(d) == "DestinationRule") {
        let policies = std::iter::once(at(rule, &["spec", "trafficPolicy"]))
            .chain(seq(rule, &["spec", "subsets"]).map(|s| s.get("trafficPolicy")))
            .flatten();
        for detection in policies.filter_map(|p| p.get("outlierDetection")) {
            let what = format!("DestinationRule {}", name(rule));
            if detection
                .get("splitExternalLocalOriginErrors")
                .and_then(Value::as_bool)
                != Some(true)
            {
                problems.push(format!(
                    "{what}: outlier detection does not split local-origin from upstream errors (splitExternalLocalOriginErrors)"
                ));
            }
            // Istio counts 5 consecutive 5xx when the field is absent.
            if number(detection.get("consecutive5xxErrors")) != Some(0.0) {
                problems.push(format!(
                    "{what}: outlier detection counts 5xx answers (gRPC UNAVAILABLE/INTERNAL from healthy pods); set consecutive5xxErrors: 0"
                ));
            }
            if number(detection.get("consecutiveGatewayErrors")).is_some_and(|n| n > 0.0) {
                problems.push(format!(
                    "{what}: outlier detection counts gateway errors (gRPC UNAVAILABLE answers such as pm_error)"
                ));
            }
        }
    }
}

/// The ingress gateway's identity may call end-user RPCs only.
fn check_edge_authorization(docs: &[Value], facts: &Facts, problems: &mut Vec<String>) {
    for policy in docs.iter().filter(|d| kind(d) == "AuthorizationPolicy") {
        for rule in seq(policy, &["spec", "rules"]) {
            let from_edge = seq(rule, &["from"])
                .flat_map(|f| seq(f, &["source", "principals"]))
                .filter_map(Value::as_str)
                .any(|p| p.contains("ingressgateway"));
            if !from_edge {
                continue;
            }
            for path in seq(rule, &["to"])
                .flat_map(|t| seq(t, &["operation", "paths"]))
                .filter_map(Value::as_str)
            {
                let covered: Vec<&String> = match path.strip_suffix('*') {
                    Some(prefix) => facts
                        .grpc_paths
                        .iter()
                        .filter(|p| p.starts_with(prefix))
                        .collect(),
                    None => facts.grpc_paths.iter().filter(|p| *p == path).collect(),
                };
                for method in covered
                    .into_iter()
                    .filter(|m| !facts.edge_paths.contains(*m))
                {
                    problems.push(format!(
                        "AuthorizationPolicy {}: lets the ingress gateway call {method}, which is no end-user RPC",
                        name(policy)
                    ));
                }
            }
        }
    }
}

/// Hosts that cannot be fetched: documentation domains and reserved names.
fn placeholder_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    ["example.com", "example.org", "example.net"]
        .iter()
        .any(|d| host == *d || host.ends_with(&format!(".{d}")))
        || [".example", ".invalid", ".test", ".localhost"]
            .iter()
            .any(|t| host.ends_with(t))
        || host == "localhost"
}

/// A RequestAuthentication selects the mercato pods and has keys istiod can
/// use: inline `jwks` with keys, or a `jwksUri` on a real host. When the
/// render also holds the issuer's public key (the dev Secret), they agree.
fn check_request_authentication(docs: &[Value], problems: &mut Vec<String>) {
    for policy in docs.iter().filter(|d| kind(d) == "RequestAuthentication") {
        let what = format!("RequestAuthentication {}", name(policy));
        let selector = at(policy, &["spec", "selector", "matchLabels"]);
        if selector.is_none() {
            problems.push(format!(
                "{what}: no selector (it would apply to every workload of the namespace)"
            ));
        } else if !services(docs)
            .filter_map(pod_labels)
            .any(|labels| labels_match(selector, labels))
        {
            problems.push(format!("{what}: selects no mercato pod"));
        }
        for rule in seq(policy, &["spec", "jwtRules"]) {
            match (str_at(rule, &["jwks"]), str_at(rule, &["jwksUri"])) {
                (Some(jwks), _) => check_inline_jwks(docs, &what, jwks, problems),
                (None, Some(uri)) => {
                    let host = uri
                        .split("://")
                        .nth(1)
                        .unwrap_or(uri)
                        .split(['/', ':'])
                        .next()
                        .unwrap_or_default();
                    if placeholder_host(host) {
                        problems.push(format!(
                            "{what}: jwksUri {uri} is a placeholder host istiod cannot fetch (every Bearer token would be refused)"
                        ));
                    } else if host.ends_with(".svc.cluster.local")
                        && find(docs, "Service", short_host(host)).is_none()
                    {
                        problems.push(format!(
                            "{what}: jwksUri {uri} names a Service that is not rendered"
                        ));
                    }
                }
                (None, None) => problems.push(format!(
                    "{what}: neither jwks nor jwksUri (istiod would try OIDC discovery at the issuer)"
                )),
            }
        }
    }
}

fn check_inline_jwks(docs: &[Value], what: &str, jwks: &str, problems: &mut Vec<String>) {
    let parsed: Result<serde_json::Value, _> = serde_json::from_str(jwks);
    let keys: BTreeMap<String, String> = match &parsed {
        Ok(document) => document["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|k| {
                (
                    k["kid"].as_str().unwrap_or_default().to_owned(),
                    k["x"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        Err(e) => {
            problems.push(format!("{what}: jwks is not JSON: {e}"));
            return;
        }
    };
    if keys.is_empty() {
        problems.push(format!("{what}: jwks holds no key"));
        return;
    }
    // The issuer's public key as the services get it, where the render has it.
    let Some(secret) = find(docs, "Secret", "mercato-jwt-issuer") else {
        return;
    };
    for (file, pem) in at(secret, &["stringData"])
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
    {
        let (Some(file), Some(pem)) = (file.as_str(), pem.as_str()) else {
            continue;
        };
        let kid = file.strip_suffix(".pem").unwrap_or(file);
        let expected = mercato_auth::dev_keys::jwks(&[(kid, pem)]).ok();
        let x = expected
            .as_ref()
            .and_then(|d| d["keys"][0]["x"].as_str())
            .unwrap_or_default();
        if keys.get(kid).map(String::as_str) != Some(x) {
            problems.push(format!(
                "{what}: jwks has no key {kid} equal to Secret mercato-jwt-issuer's {file} (regenerate it with `mercato jwks`)"
            ));
        }
    }
}

/// The sidecar outlives the app's drain: native sidecars, or a classic
/// sidecar whose terminationDrainDuration covers preStop + delay + drain.
fn check_sidecar_drain(
    docs: &[Value],
    deployment: &Value,
    facts: &Facts,
    problems: &mut Vec<String>,
) {
    let annotations = at(deployment, &["spec", "template", "metadata", "annotations"]);
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).and_then(Value::as_str);
    if annotation("sidecar.istio.io/nativeSidecar") == Some("true") {
        return;
    }
    let drain_duration = annotation("proxy.istio.io/config")
        .and_then(|config| serde_yaml::from_str::<Value>(config).ok())
        .and_then(|config| str_at(&config, &["terminationDrainDuration"]).and_then(duration_secs))
        .unwrap_or(ISTIO_DEFAULT_DRAIN_SECS);
    let budget = crate::drain_budget(docs, deployment, facts);
    if drain_duration < budget {
        problems.push(format!(
            "{}: the classic sidecar stops {drain_duration} s into termination while the app drains for {budget} s (set sidecar.istio.io/nativeSidecar or terminationDrainDuration)",
            name(deployment)
        ));
    }
}
