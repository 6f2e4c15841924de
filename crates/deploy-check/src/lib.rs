//! Test-only: does `deploy/` agree with the code?
//!
//! One job: turn "the manifests say X, the binaries do Y" into a list of
//! problems. The facts about the code ([`Facts`]) are gathered by the test
//! from real servers, and the manifests are rendered by `kubectl kustomize`
//! ([`render`]), so [`check`] can also be run on deliberately broken
//! manifests to show that it catches them.

mod canary;
mod cluster;
mod connections;
mod mesh;
pub mod migrations;
mod pipeline;
mod promql;
mod rollout;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
};

pub use cluster::{check_production, needed_api_groups};
pub use pipeline::{check_dev_images, check_pipeline};
pub use promql::metric_names;
use serde_yaml::Value;

/// What the code does, as observed by the test.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The binaries' default ports.
    pub grpc_port: u16,
    pub http_port: u16,
    pub metrics_port: u16,
    /// HTTP paths the probe port answers (anything but 404).
    pub served_paths: BTreeSet<String>,
    /// Environment variable names each service's settings read, by
    /// Deployment name (`user-service`), and the settings' defaults of
    /// `shutdown_delay_secs` and `drain_timeout_secs`.
    pub settings: BTreeMap<String, BTreeSet<String>>,
    pub default_shutdown_delay_secs: f64,
    pub default_drain_timeout_secs: f64,
    /// The services' default database pool size (`DATABASE_MAX_CONNECTIONS`).
    pub default_database_max_connections: f64,
    /// Variables read outside the settings (`RUST_LOG`, `POD_NAME`, …) and
    /// prefixes read as a family (`OTEL_`).
    pub environment: BTreeSet<String>,
    pub environment_prefixes: Vec<String>,
    /// Metric names the services exported (sample names: `x_total`, `y_bucket`, …).
    pub metrics: BTreeSet<String>,
    /// Metrics that come from elsewhere (`up`, kube-state-metrics).
    pub external_metrics: BTreeSet<String>,
    /// Every gRPC path served: `/user.v1.UserService/GetUser`.
    pub grpc_paths: BTreeSet<String>,
    /// Server-streaming (or any streaming) methods among them.
    pub streaming_paths: BTreeSet<String>,
    /// Methods whose proto `idempotency_level` is NO_SIDE_EFFECTS or IDEMPOTENT.
    pub idempotent_paths: BTreeSet<String>,
    /// Methods an end user calls (the `user` and `guest` roles' permissions).
    pub edge_paths: BTreeSet<String>,
    /// How long the readiness endpoint's dependency checks may take.
    pub readiness_check_timeout_secs: f64,
    /// How long a server (or its caller) may wait on a method, by setting.
    pub waits: Vec<Wait>,
    /// Which gRPC paths each Deployment serves, by path prefixes
    /// (`user-service` → `/user.v1.`, `/experiment.v1.`).
    pub served_by: BTreeMap<String, Vec<String>>,
}

/// "`deployment` may wait `setting` × `scale` seconds (default `default`)
/// on `path`": CreateOrder waits ORDER_WAIT_SECS for its saga (on every
/// hop); the order service waits PEER_TIMEOUT_MS on its calls to user and
/// payment (`in_mesh`: only on the routes of calls from inside the mesh).
#[derive(Debug, Clone)]
pub struct Wait {
    pub path: String,
    pub deployment: String,
    pub setting: String,
    pub default: f64,
    pub scale: f64,
    pub in_mesh: bool,
}

/// The repository root (this crate is `crates/deploy-check`), or the
/// checkout named by `MERCATO_DEPLOY_ROOT` (to check another revision's
/// deploy/, README, pipeline and Dockerfile with these checks).
pub fn repo_root() -> PathBuf {
    std::env::var_os("MERCATO_DEPLOY_ROOT").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."),
        PathBuf::from,
    )
}

/// `kubectl kustomize deploy/overlays/<overlay>`, parsed.
pub fn render(overlay: &str) -> Result<Vec<Value>, String> {
    render_dir(&repo_root().join("deploy/overlays").join(overlay))
}

/// An overlay with components added (`production` + `canary`) the one
/// documented way (deploy/README.md): listed first in the overlay's own
/// `components:` (so the canary's Deployments exist before the overlay's
/// components patch them), with `environment` staying last. Rendered from
/// a copy of deploy/ under target/deploy-check/.
pub fn render_with(overlay: &str, components: &[&str]) -> Result<Vec<Value>, String> {
    let copy = repo_root()
        .join("target/deploy-check")
        .join(format!("{overlay}+{}", components.join("+")))
        .join("deploy");
    let _ = std::fs::remove_dir_all(&copy);
    copy_dir(&repo_root().join("deploy"), &copy)?;
    let file = copy
        .join("overlays")
        .join(overlay)
        .join("kustomization.yaml");
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut kustomization: Value = serde_yaml::from_str(&text).map_err(|e| e.to_string())?;
    let listed = kustomization
        .get_mut("components")
        .and_then(Value::as_sequence_mut)
        .ok_or_else(|| format!("{}: no components list", file.display()))?;
    for (at, component) in components.iter().enumerate() {
        listed.insert(at, format!("../../components/{component}").into());
    }
    let text = serde_yaml::to_string(&kustomization).map_err(|e| e.to_string())?;
    std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
    render_dir(&copy.join("overlays").join(overlay))
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> Result<(), String> {
    let failed = |e: std::io::Error| format!("copying {} to {}: {e}", from.display(), to.display());
    std::fs::create_dir_all(to).map_err(failed)?;
    for entry in std::fs::read_dir(from).map_err(failed)? {
        let entry = entry.map_err(failed)?;
        let target = to.join(entry.file_name());
        if entry.file_type().map_err(failed)?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).map_err(failed)?;
        }
    }
    Ok(())
}

/// `kubectl kustomize <dir>`, parsed.
pub fn render_dir(dir: &std::path::Path) -> Result<Vec<Value>, String> {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run kubectl (needed to render deploy/): {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "kubectl kustomize {}: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    parse_documents(&String::from_utf8_lossy(&output.stdout))
}

/// Every non-empty document of a multi-document YAML text.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| serde::Deserialize::deserialize(doc).map_err(|e| e.to_string()))
        .filter(|doc| !matches!(doc, Ok(Value::Null)))
        .collect()
}

pub(crate) fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path)?.as_str()
}

pub(crate) fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

pub(crate) fn seq<'a>(value: &'a Value, path: &[&str]) -> impl Iterator<Item = &'a Value> {
    at(value, path)
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
}

pub(crate) fn kind(doc: &Value) -> &str {
    str_at(doc, &["kind"]).unwrap_or_default()
}

pub(crate) fn name(doc: &Value) -> &str {
    str_at(doc, &["metadata", "name"]).unwrap_or_default()
}

pub(crate) fn number(value: Option<&Value>) -> Option<f64> {
    match value? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The Deployments of the suite (label `app.kubernetes.io/part-of: mercato`).
pub(crate) fn services(docs: &[Value]) -> impl Iterator<Item = &Value> {
    docs.iter().filter(|d| {
        kind(d) == "Deployment"
            && str_at(d, &["metadata", "labels", "app.kubernetes.io/part-of"]) == Some("mercato")
    })
}

pub(crate) fn find<'a>(docs: &'a [Value], kind_: &str, name_: &str) -> Option<&'a Value> {
    docs.iter().find(|d| kind(d) == kind_ && name(d) == name_)
}

/// Runs every check; an empty list means deploy/ and the code agree.
pub fn check(docs: &[Value], facts: &Facts) -> Vec<String> {
    let docs = &rollout::as_deployed(docs);
    let mut problems = Vec::new();
    if services(docs).count() == 0 {
        problems.push("no mercato Deployment rendered".to_owned());
    }
    for deployment in services(docs) {
        check_deployment(docs, deployment, facts, &mut problems);
    }
    check_references(docs, &mut problems);
    check_metrics(docs, facts, &mut problems);
    check_grpc_paths(docs, facts, &mut problems);
    mesh::check(docs, facts, &mut problems);
    cluster::check(docs, &mut problems);
    connections::check(docs, facts, &mut problems);
    canary::check(docs, facts, &mut problems);
    rollout::check(docs, facts, &mut problems);
    problems
}

/// A numeric setting of a Deployment as its binary sees it: set directly in
/// the container's env, else in its config file; None: the binary's default.
pub(crate) fn setting(docs: &[Value], deployment: &Value, var: &str) -> Option<f64> {
    let pod = at(deployment, &["spec", "template", "spec"])?;
    let container = seq(pod, &["containers"]).next()?;
    let from_env = seq(container, &["env"])
        .find(|v| str_at(v, &["name"]) == Some(var))
        .and_then(|v| str_at(v, &["value"]))
        .and_then(|v| v.parse().ok());
    from_env.or_else(|| {
        let Some(Ok(config)) = config_file(docs, pod, container) else {
            return None;
        };
        let mut keys = BTreeMap::new();
        flatten(&config, "", &mut keys);
        number(keys.get(var))
    })
}

/// preStop sleep + shutdown delay + drain: how long a pod's app keeps
/// serving after its termination starts.
pub(crate) fn drain_budget(docs: &[Value], deployment: &Value, facts: &Facts) -> f64 {
    let container = at(deployment, &["spec", "template", "spec", "containers"])
        .and_then(|c| c.get(0))
        .cloned()
        .unwrap_or_default();
    let pre_stop = number(at(
        &container,
        &["lifecycle", "preStop", "sleep", "seconds"],
    ))
    .unwrap_or(0.0);
    pre_stop
        + setting(docs, deployment, "SHUTDOWN_DELAY_SECS")
            .unwrap_or(facts.default_shutdown_delay_secs)
        + setting(docs, deployment, "DRAIN_TIMEOUT_SECS")
            .unwrap_or(facts.default_drain_timeout_secs)
}

fn check_deployment(docs: &[Value], deployment: &Value, facts: &Facts, problems: &mut Vec<String>) {
    let service = name(deployment);
    let pod = at(deployment, &["spec", "template", "spec"])
        .cloned()
        .unwrap_or_default();
    let Some(container) = seq(&pod, &["containers"]).next() else {
        problems.push(format!("{service}: no container"));
        return;
    };
    let ports = check_ports(service, container, facts, problems);
    check_probes(service, container, &ports, facts, problems);
    check_hardening(service, &pod, container, problems);
    // By the app it runs (`user-service-canary` runs user-service).
    let app = str_at(
        deployment,
        &[
            "spec",
            "template",
            "metadata",
            "labels",
            "app.kubernetes.io/name",
        ],
    )
    .unwrap_or(service);
    let Some(known) = facts.settings.get(app) else {
        problems.push(format!("{service}: no settings known for this Deployment"));
        return;
    };
    check_environment(docs, service, container, known, facts, problems);
    check_config_and_drain(docs, deployment, known, facts, problems);
}

/// The container's named ports, each checked against the binary's.
fn check_ports<'a>(
    service: &str,
    container: &'a Value,
    facts: &Facts,
    problems: &mut Vec<String>,
) -> BTreeMap<&'a str, u64> {
    let ports: BTreeMap<&str, u64> = seq(container, &["ports"])
        .filter_map(|p| Some((str_at(p, &["name"])?, at(p, &["containerPort"])?.as_u64()?)))
        .collect();
    for (port_name, want) in [
        ("grpc", facts.grpc_port),
        ("http", facts.http_port),
        ("metrics", facts.metrics_port),
    ] {
        match ports.get(port_name) {
            Some(&port) if port == u64::from(want) => {}
            Some(&port) => problems.push(format!(
                "{service}: container port {port_name} is {port}, the binary listens on {want}"
            )),
            None => problems.push(format!("{service}: no container port named {port_name}")),
        }
    }
    ports
}

/// Every probe asks a path the binary serves, on the right port.
fn check_probes(
    service: &str,
    container: &Value,
    ports: &BTreeMap<&str, u64>,
    facts: &Facts,
    problems: &mut Vec<String>,
) {
    let resolve = |port: &Value| match port {
        Value::String(named) => ports.get(named.as_str()).copied(),
        other => other.as_u64(),
    };

    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let Some(spec) = container.get(probe) else {
            problems.push(format!("{service}: no {probe}"));
            continue;
        };
        if let Some(get) = spec.get("httpGet") {
            let path = str_at(get, &["path"]).unwrap_or("/");
            if !facts.served_paths.contains(path) {
                problems.push(format!(
                    "{service}: {probe} path {path} is not served by the binary"
                ));
            }
            let port = get.get("port").and_then(resolve);
            if port != Some(u64::from(facts.http_port)) {
                problems.push(format!(
                    "{service}: {probe} port {port:?} is not the probe port {}",
                    facts.http_port
                ));
            }
        } else if let Some(grpc) = spec.get("grpc") {
            if number(grpc.get("port")) != Some(f64::from(facts.grpc_port)) {
                problems.push(format!(
                    "{service}: {probe} grpc port is not {}",
                    facts.grpc_port
                ));
            }
        } else {
            problems.push(format!("{service}: {probe} is neither httpGet nor grpc"));
        }
        if probe == "readinessProbe" {
            // Kubernetes' defaults: 1 s, 3 failures.
            let timeout = number(spec.get("timeoutSeconds")).unwrap_or(1.0);
            if timeout <= facts.readiness_check_timeout_secs {
                problems.push(format!(
                    "{service}: readinessProbe timeoutSeconds {timeout} is not longer than the readiness checks' own {} s (a slow check becomes a probe failure)",
                    facts.readiness_check_timeout_secs
                ));
            }
            let failures = number(spec.get("failureThreshold")).unwrap_or(3.0);
            if failures < 2.0 {
                problems.push(format!(
                    "{service}: readinessProbe failureThreshold {failures}: one slow answer takes the pod out of its Service"
                ));
            }
        }
    }
}

/// Hardening every service must keep.
fn check_hardening(service: &str, pod: &Value, container: &Value, problems: &mut Vec<String>) {
    let hardened = [
        (
            "runAsNonRoot",
            at(pod, &["securityContext", "runAsNonRoot"])
                .or(at(container, &["securityContext", "runAsNonRoot"]))
                .and_then(Value::as_bool)
                == Some(true),
        ),
        (
            "readOnlyRootFilesystem",
            at(container, &["securityContext", "readOnlyRootFilesystem"]).and_then(Value::as_bool)
                == Some(true),
        ),
        (
            "allowPrivilegeEscalation: false",
            at(container, &["securityContext", "allowPrivilegeEscalation"])
                .and_then(Value::as_bool)
                == Some(false),
        ),
        (
            "capabilities drop ALL",
            seq(container, &["securityContext", "capabilities", "drop"])
                .any(|c| c.as_str() == Some("ALL")),
        ),
        (
            "seccomp RuntimeDefault",
            str_at(pod, &["securityContext", "seccompProfile", "type"]) == Some("RuntimeDefault"),
        ),
        (
            "memory limit",
            at(container, &["resources", "limits", "memory"]).is_some(),
        ),
        (
            "cpu request",
            at(container, &["resources", "requests", "cpu"]).is_some(),
        ),
    ];
    for (what, ok) in hardened {
        if !ok {
            problems.push(format!("{service}: missing {what}"));
        }
    }
}

/// Every variable set (directly or from a ConfigMap) is one the binary reads.
fn check_environment(
    docs: &[Value],
    service: &str,
    container: &Value,
    known: &BTreeSet<String>,
    facts: &Facts,
    problems: &mut Vec<String>,
) {
    let read = |var: &str| {
        known.contains(var)
            || facts.environment.contains(var)
            || facts
                .environment_prefixes
                .iter()
                .any(|p| var.starts_with(p.as_str()))
    };
    for var in seq(container, &["env"]) {
        let var_name = str_at(var, &["name"]).unwrap_or_default();
        if !read(var_name) {
            problems.push(format!(
                "{service}: env {var_name} is not a setting the binary reads"
            ));
        }
    }
    for source in seq(container, &["envFrom"]) {
        let Some(map) = str_at(source, &["configMapRef", "name"]) else {
            continue;
        };
        if let Some(config_map) = find(docs, "ConfigMap", map) {
            for key in at(config_map, &["data"])
                .and_then(Value::as_mapping)
                .into_iter()
                .flatten()
            {
                let key = key.0.as_str().unwrap_or_default();
                if !read(key) {
                    problems.push(format!(
                        "{service}: ConfigMap {map} sets {key}, which the binary does not read"
                    ));
                }
            }
        } else if !source["configMapRef"]["optional"]
            .as_bool()
            .unwrap_or(false)
        {
            problems.push(format!(
                "{service}: envFrom ConfigMap {map} is not rendered"
            ));
        }
    }
}

/// The config file: every key a setting, and the drain inside the grace period.
fn check_config_and_drain(
    docs: &[Value],
    deployment: &Value,
    known: &BTreeSet<String>,
    facts: &Facts,
    problems: &mut Vec<String>,
) {
    let service = name(deployment);
    let pod = at(deployment, &["spec", "template", "spec"])
        .cloned()
        .unwrap_or_default();
    let container = seq(&pod, &["containers"])
        .next()
        .cloned()
        .unwrap_or_default();
    let mut file_keys = BTreeMap::new();
    match config_file(docs, &pod, &container) {
        Some(Ok(config)) => flatten(&config, "", &mut file_keys),
        Some(Err(e)) => problems.push(format!("{service}: config.yaml does not parse: {e}")),
        None => {}
    }
    for key in file_keys.keys() {
        if !known.contains(key) {
            problems.push(format!(
                "{service}: config.yaml key {key} is not a setting the binary reads"
            ));
        }
    }
    let budget = drain_budget(docs, deployment, facts);
    let grace = number(pod.get("terminationGracePeriodSeconds")).unwrap_or(30.0);
    if budget >= grace {
        problems.push(format!(
            "{service}: preStop + shutdown delay + drain = {budget} s does not fit in terminationGracePeriodSeconds {grace}"
        ));
    }
}

/// The YAML the container sees at /etc/config/config.yaml, if mounted.
pub(crate) fn config_file(
    docs: &[Value],
    pod: &Value,
    container: &Value,
) -> Option<Result<Value, String>> {
    let volume = seq(container, &["volumeMounts"])
        .find(|m| str_at(m, &["mountPath"]) == Some("/etc/config"))
        .and_then(|m| str_at(m, &["name"]))?;
    let map = seq(pod, &["volumes"])
        .find(|v| str_at(v, &["name"]) == Some(volume))
        .and_then(|v| str_at(v, &["configMap", "name"]))?;
    let text = find(docs, "ConfigMap", map).and_then(|c| str_at(c, &["data", "config.yaml"]))?;
    Some(serde_yaml::from_str(text).map_err(|e| e.to_string()))
}

/// `auth: {jwt: {issuer: x}}` → `AUTH__JWT__ISSUER`; sequences are leaves.
pub(crate) fn flatten(value: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Mapping(map) => {
            for (key, value) in map {
                let key = key.as_str().unwrap_or_default().to_ascii_uppercase();
                let key = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}__{key}")
                };
                flatten(value, &key, out);
            }
        }
        leaf => {
            out.insert(prefix.to_owned(), leaf.clone());
        }
    }
}

/// Services select their pods, autoscalers and budgets name real targets.
fn check_references(docs: &[Value], problems: &mut Vec<String>) {
    let pods: Vec<(&str, &Value)> = services(docs)
        .map(|d| {
            (
                name(d),
                at(d, &["spec", "template", "metadata", "labels"]).unwrap_or(&Value::Null),
            )
        })
        .collect();
    let selects = |selector: Option<&Value>| {
        let Some(Value::Mapping(selector)) = selector else {
            return false;
        };
        pods.iter()
            .any(|(_, labels)| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
    };
    for doc in docs {
        let what = format!("{} {}", kind(doc), name(doc));
        match kind(doc) {
            "Service" | "PodDisruptionBudget" => {
                let ours = str_at(doc, &["metadata", "labels", "app.kubernetes.io/part-of"])
                    == Some("mercato");
                let selector = match kind(doc) {
                    "Service" => at(doc, &["spec", "selector"]),
                    _ => at(doc, &["spec", "selector", "matchLabels"]),
                };
                if ours && !selects(selector) {
                    problems.push(format!("{what}: selects no mercato pod"));
                }
            }
            "HorizontalPodAutoscaler" | "VerticalPodAutoscaler" => {
                let field = if kind(doc) == "HorizontalPodAutoscaler" {
                    "scaleTargetRef"
                } else {
                    "targetRef"
                };
                let target = str_at(doc, &["spec", field, "name"]).unwrap_or_default();
                let Some(deployment) = find(docs, "Deployment", target) else {
                    problems.push(format!(
                        "{what}: targets Deployment {target:?}, which is not rendered"
                    ));
                    continue;
                };
                let containers: BTreeSet<&str> =
                    seq(deployment, &["spec", "template", "spec", "containers"])
                        .filter_map(|c| str_at(c, &["name"]))
                        .collect();
                for policy in seq(doc, &["spec", "resourcePolicy", "containerPolicies"]) {
                    let container = str_at(policy, &["containerName"]).unwrap_or_default();
                    if container != "*" && !containers.contains(container) {
                        problems.push(format!("{what}: no container {container:?} in {target}"));
                    }
                }
                if kind(doc) == "VerticalPodAutoscaler"
                    && !matches!(
                        str_at(doc, &["spec", "updatePolicy", "updateMode"]),
                        Some("Off" | "Initial")
                    )
                {
                    problems.push(format!(
                        "{what}: would evict pods that the HPA also scales on CPU/memory"
                    ));
                }
            }
            _ => {}
        }
    }
}

/// Every metric an alert, the dashboard or the autoscaler uses is exported
/// (or recorded by a rule); every service has a down alert that also fires
/// when no target is left.
fn check_metrics(docs: &[Value], facts: &Facts, problems: &mut Vec<String>) {
    let mut used: Vec<(String, String)> = Vec::new();
    let mut recorded = BTreeSet::new();
    let mut down_alerts = Vec::new();
    for rule_set in docs.iter().filter(|d| kind(d) == "PrometheusRule") {
        for group in seq(rule_set, &["spec", "groups"]) {
            for rule in seq(group, &["rules"]) {
                let expr = str_at(rule, &["expr"]).unwrap_or_default();
                if let Some(record) = str_at(rule, &["record"]) {
                    recorded.insert(record.to_owned());
                }
                let what = str_at(rule, &["alert"])
                    .or(str_at(rule, &["record"]))
                    .unwrap_or("rule");
                if str_at(rule, &["alert"]).is_some() && metric_names(expr).contains("up") {
                    if expr.contains("absent(") {
                        down_alerts.push(expr.to_owned());
                    } else {
                        problems.push(format!(
                            "alert {what}: `up` without absent() never fires once every target is gone"
                        ));
                    }
                }
                used.push((format!("alert {what}"), expr.to_owned()));
            }
        }
    }
    if docs.iter().any(|d| kind(d) == "PrometheusRule") {
        // By Service: the scrape's `service` label (canary pods share it).
        let ours = docs.iter().filter(|d| {
            kind(d) == "Service"
                && str_at(d, &["metadata", "labels", "app.kubernetes.io/part-of"])
                    == Some("mercato")
        });
        for service in ours.map(name) {
            let quoted = format!("\"{service}\"");
            if !down_alerts.iter().any(|e| e.contains(&quoted)) {
                problems.push(format!(
                    "{service}: no alert fires when none of its replicas is up (absent(up{{…service=\"{service}\"}} == 1))"
                ));
            }
        }
    }
    for config_map in docs.iter().filter(|d| kind(d) == "ConfigMap") {
        if str_at(config_map, &["metadata", "labels", "grafana_dashboard"]).is_none() {
            continue;
        }
        let data = at(config_map, &["data"]).and_then(Value::as_mapping);
        for (file, text) in data.into_iter().flatten() {
            let (file, text) = (
                file.as_str().unwrap_or_default(),
                text.as_str().unwrap_or_default(),
            );
            match serde_json::from_str::<serde_json::Value>(text) {
                Ok(dashboard) => collect_queries(&dashboard, &mut |q| {
                    used.push((format!("dashboard {file}"), q.to_owned()));
                }),
                Err(e) => problems.push(format!("dashboard {file}: not JSON: {e}")),
            }
        }
    }
    for (source, query) in &used {
        for metric in metric_names(query) {
            if !facts.metrics.contains(&metric)
                && !facts.external_metrics.contains(&metric)
                && !recorded.contains(&metric)
            {
                problems.push(format!("{source}: metric {metric} is not exported"));
            }
        }
    }
    for hpa in docs.iter().filter(|d| kind(d) == "HorizontalPodAutoscaler") {
        for metric in seq(hpa, &["spec", "metrics"]) {
            if let Some(pods_metric) = str_at(metric, &["pods", "metric", "name"])
                && !recorded.contains(pods_metric)
            {
                problems.push(format!(
                    "HorizontalPodAutoscaler {}: Pods metric {pods_metric} is recorded by no rule in this render (the custom metrics API would have nothing to serve)",
                    name(hpa)
                ));
            }
        }
    }
}

/// Grafana `expr` and templating `query` strings.
fn collect_queries(value: &serde_json::Value, found: &mut impl FnMut(&str)) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "query", serde_json::Value::String(q)) if q.contains('_') => found(q),
                    _ => collect_queries(value, found),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_queries(v, found)),
        _ => {}
    }
}

/// Authorization paths and route prefixes name methods that exist.
fn check_grpc_paths(docs: &[Value], facts: &Facts, problems: &mut Vec<String>) {
    for policy in docs.iter().filter(|d| kind(d) == "AuthorizationPolicy") {
        for rule in seq(policy, &["spec", "rules"]) {
            for to in seq(rule, &["to"]) {
                for path in seq(to, &["operation", "paths"]).filter_map(Value::as_str) {
                    let known = match path.strip_suffix('*') {
                        Some(prefix) => facts.grpc_paths.iter().any(|p| p.starts_with(prefix)),
                        None => facts.grpc_paths.contains(path),
                    };
                    if !known {
                        problems.push(format!(
                            "AuthorizationPolicy {}: path {path} is no served method",
                            name(policy)
                        ));
                    }
                }
            }
        }
    }
    for route in docs.iter().filter(|d| kind(d) == "VirtualService") {
        for http in seq(route, &["spec", "http"]) {
            for matched in seq(http, &["match"]) {
                if let Some(prefix) = str_at(matched, &["uri", "prefix"])
                    && !facts.grpc_paths.iter().any(|p| p.starts_with(prefix))
                {
                    problems.push(format!(
                        "VirtualService {}: prefix {prefix} matches no method",
                        name(route)
                    ));
                }
            }
        }
    }
}
