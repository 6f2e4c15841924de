//! The controller against a fake Kubernetes API (an in-test server holding
//! the Rollout, the two Deployments, two VirtualServices and the leader
//! Lease, speaking get, list, watch, merge patch and create) and a fake Prometheus whose answers
//! the test changes while the rollout runs: the real `controller::run`,
//! its real kube client and watcher, one-second intervals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use mercato_rollout::{
    Check, Phase, Rollout, RolloutSpec, RolloutStatus,
    controller::{self, ABORT, Context, PAUSE, PROMOTE},
    leader,
    prometheus::Prometheus,
    spec::RouteRef,
};
use serde_json::{Value, json};
use support::{Answer, FakeKube, Script, healthy, set_answer, start_prometheus};

const ROLLOUT: &str = "/apis/mercato.dev/v1alpha1/namespaces/mercato/rollouts/order-service";
const STABLE: &str = "/apis/apps/v1/namespaces/mercato/deployments/order-service";
const CANARY: &str = "/apis/apps/v1/namespaces/mercato/deployments/order-service-canary";
const MESH: &str = "/apis/networking.istio.io/v1/namespaces/mercato/virtualservices/order-service";
const EDGE: &str = "/apis/networking.istio.io/v1/namespaces/mercato/virtualservices/mercato-public";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/mercato/events";
const REPLICA_SETS: &str = "/apis/apps/v1/namespaces/mercato/replicasets";

const OLD: &str = "mercato/order-service:1.0";
const NEW: &str = "mercato/order-service:1.1";

fn deployment(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "mercato", "generation": 1},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "order-service"}},
            "template": {
                "metadata": {"labels": {"app": "order-service"}},
                "spec": {"containers": [{"name": "order-service", "image": image}]},
            },
        },
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
    })
}

fn destination(host: &str, subset: &str, weight: u32) -> Value {
    json!({"destination": {"host": host, "subset": subset, "port": {"number": 9090}}, "weight": weight})
}

fn split(name: &str, host: &str) -> Value {
    json!({"name": name, "route": [destination(host, "stable", 100), destination(host, "canary", 0)]})
}

fn virtual_service(name: &str, http: Vec<Value>) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "mercato"},
        "spec": {"hosts": [name], "http": http},
    })
}

fn edge_http() -> Vec<Value> {
    vec![
        split("user-writes", "user-service"),
        split("order-sagas", "order-service"),
        split("order-reads", "order-service"),
    ]
}

fn mesh_http() -> Vec<Value> {
    vec![
        json!({
            "name": "canary-pin",
            "match": [{"headers": {"x-canary": {"exact": "always"}}}],
            "route": [{"destination": {"host": "order-service", "subset": "canary"}}],
        }),
        split("default", "order-service"),
    ]
}

/// The order service's rollout: mesh `default` and edge `order-sagas`
/// driven, success rate ≥ 99 % and p99 ≤ 0.5 s, one-second intervals.
fn spec() -> RolloutSpec {
    let mut spec = RolloutSpec::new("order-service");
    spec.routes.push(RouteRef {
        virtual_service: "mercato-public".into(),
        route: "order-sagas".into(),
    });
    RolloutSpec {
        interval_seconds: 1,
        failure_threshold: 2,
        analysis: vec![Check::success_rate(99.0), Check::latency_p99(0.5)],
        ..spec
    }
}

/// A fake cluster: stable on 1.0, canary on `canary_image`, the two
/// VirtualServices as deploy/components/canary leaves them, the Rollout.
async fn cluster(spec: RolloutSpec, canary_image: &str) -> FakeKube {
    let fake = FakeKube::start().await;
    fake.put(STABLE, deployment("order-service", OLD));
    fake.put(CANARY, deployment("order-service-canary", canary_image));
    fake.put(MESH, virtual_service("order-service", mesh_http()));
    fake.put(EDGE, virtual_service("mercato-public", edge_http()));
    let mut rollout = serde_json::to_value(Rollout::new("order-service", spec)).unwrap();
    rollout["metadata"]["namespace"] = json!("mercato");
    rollout["metadata"]["uid"] = json!("0f6d3b2e-rollout");
    fake.put(ROLLOUT, rollout);
    fake
}

fn start_controller(fake: &FakeKube, prometheus: &Prometheus) -> tokio::task::JoinHandle<()> {
    let context = Context::new(fake.client(), prometheus.clone(), Some("test".into()));
    tokio::spawn(async move { controller::run(context, "mercato", std::future::pending()).await })
}

fn stored_status(fake: &FakeKube) -> RolloutStatus {
    let status = fake.get(ROLLOUT).unwrap()["status"].clone();
    serde_json::from_value(status).unwrap_or_default()
}

fn reasons(fake: &FakeKube) -> Vec<String> {
    fake.writes_under(EVENTS)
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn canary_weight(vs: &Value, route: &str) -> Option<u64> {
    vs["spec"]["http"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == route)?["route"]
        .as_array()?
        .iter()
        .find(|d| d["destination"]["subset"] == "canary")?["weight"]
        .as_u64()
}

/// The canary weights the API received for `route` of the VirtualService
/// at `path`, one entry per change.
fn weight_history(fake: &FakeKube, path: &str, route: &str) -> Vec<u64> {
    let mut history: Vec<u64> = Vec::new();
    for vs in fake.writes(path) {
        let w = canary_weight(&vs, route).unwrap();
        if history.last() != Some(&w) {
            history.push(w);
        }
    }
    history
}

fn image(fake: &FakeKube, path: &str) -> String {
    fake.get(path).unwrap()["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn wait_for(
    fake: &FakeKube,
    within: Duration,
    what: &str,
    done: impl Fn(&RolloutStatus) -> bool,
) -> RolloutStatus {
    let deadline = Instant::now() + within;
    loop {
        let status = stored_status(fake);
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "not {what} within {within:?}: {status:?}, events {:?}",
            reasons(fake)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Until the driven routes carry `weight` (the status is recorded before
/// the traffic follows it).
async fn wait_for_traffic(fake: &FakeKube, weight: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while [(MESH, "default"), (EDGE, "order-sagas")]
        .iter()
        .any(|(path, route)| canary_weight(&fake.get(path).unwrap(), route) != Some(weight))
    {
        assert!(
            Instant::now() < deadline,
            "traffic not at canary weight {weight}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn replicas(fake: &FakeKube, path: &str) -> Option<i64> {
    fake.get(path)?["spec"]["replicas"].as_i64()
}

async fn wait_for_replicas(fake: &FakeKube, path: &str, wanted: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while replicas(fake, path) != Some(wanted) {
        assert!(
            Instant::now() < deadline,
            "{path}: replicas {:?}, not {wanted}",
            replicas(fake, path)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn env_of(fake: &FakeKube, path: &str) -> Vec<Value> {
    fake.get(path).unwrap()["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn started(spec: RolloutSpec, answer: Answer) -> (FakeKube, Script, Prometheus) {
    let fake = cluster(spec, NEW).await;
    let (script, prometheus) = start_prometheus().await;
    set_answer(&script, answer);
    (fake, script, prometheus)
}

#[tokio::test]
async fn a_healthy_canary_is_stepped_to_max_then_promoted_and_other_routes_are_untouched() {
    let (fake, script, prometheus) = started(spec(), healthy()).await;
    let controller = start_controller(&fake, &prometheus);
    let status = wait_for(&fake, Duration::from_secs(30), "succeeded", |s| {
        s.phase == Phase::Succeeded
    })
    .await;
    wait_for_traffic(&fake, 0).await;
    controller.abort();

    assert_eq!(status.canary_weight, 0);
    assert!(
        status
            .canary_revision
            .starts_with(&format!("order-service={NEW} #")),
        "{}",
        status.canary_revision
    );
    for (path, route) in [(MESH, "default"), (EDGE, "order-sagas")] {
        assert_eq!(
            weight_history(&fake, path, route),
            [10, 20, 30, 40, 50, 0],
            "{route}"
        );
    }
    // The stable Deployment took the canary's image, once, after max weight.
    assert_eq!(image(&fake, STABLE), NEW);
    assert_eq!(fake.writes(STABLE).len(), 1);
    assert_eq!(image(&fake, CANARY), NEW);
    // Routes not named in the spec are as they were; so is the rest.
    let edge = fake.get(EDGE).unwrap();
    let mesh = fake.get(MESH).unwrap();
    assert_eq!(edge["spec"]["http"][0], edge_http()[0]);
    assert_eq!(edge["spec"]["http"][2], edge_http()[2]);
    assert_eq!(mesh["spec"]["http"][0], mesh_http()[0]);
    assert_eq!(edge["spec"]["hosts"], json!(["mercato-public"]));
    assert_eq!(
        edge["spec"]["http"][1],
        edge_http()[1],
        "back to stable 100"
    );

    let reasons = reasons(&fake);
    assert_eq!(reasons.first().map(String::as_str), Some("NewRevision"));
    assert_eq!(reasons.iter().filter(|r| *r == "WeightSet").count(), 5);
    assert!(
        reasons.ends_with(&["Promoting".into(), "Succeeded".into()]),
        "{reasons:?}"
    );
    let queries = script.lock().unwrap().1.clone();
    assert!(
        !queries.is_empty() && queries.iter().all(|q| q.contains("order-service-canary")),
        "{queries:?}"
    );
}

#[tokio::test]
async fn a_canary_whose_errors_cross_the_threshold_is_rolled_back_within_threshold_intervals() {
    let (fake, script, prometheus) = started(spec(), healthy()).await;
    let controller = start_controller(&fake, &prometheus);
    wait_for(&fake, Duration::from_secs(20), "at weight 30", |s| {
        s.canary_weight == 30
    })
    .await;
    // 5 % of the canary's calls fail from now on.
    set_answer(
        &script,
        Answer::Metrics {
            success_rate: 95.0,
            p99: 0.12,
        },
    );
    let crossed = Instant::now();
    let status = wait_for(&fake, Duration::from_secs(20), "rolled back", |s| {
        s.phase == Phase::Failed
    })
    .await;
    wait_for_traffic(&fake, 0).await;
    let took = crossed.elapsed();
    // The rejected release stops running.
    wait_for_replicas(&fake, CANARY, 0).await;
    controller.abort();

    // threshold (2) × interval (1 s), and some slack for a loaded machine
    // (that it was the 2nd failed analysis is asserted below).
    assert!(
        took <= Duration::from_millis(3_500),
        "rolled back after {took:?}"
    );
    assert_eq!((status.canary_weight, status.failed_checks), (0, 2));
    support::assert_failed_at_95_percent(&status);
    assert_eq!(weight_history(&fake, MESH, "default"), [10, 20, 30, 0]);
    assert_eq!(weight_history(&fake, EDGE, "order-sagas"), [10, 20, 30, 0]);
    assert_eq!(image(&fake, STABLE), OLD, "never promoted");
    let reasons = reasons(&fake);
    assert_eq!(reasons.iter().filter(|r| *r == "AnalysisFailed").count(), 1);
    assert_eq!(reasons.last().map(String::as_str), Some("RolledBack"));
}

#[tokio::test]
async fn prometheus_down_is_a_failed_check_and_never_promotes() {
    let spec = RolloutSpec {
        failure_threshold: 3,
        ..spec()
    };
    let (fake, _script, prometheus) = started(spec, Answer::Down).await;
    let controller = start_controller(&fake, &prometheus);
    let status = wait_for(&fake, Duration::from_secs(20), "rolled back", |s| {
        s.phase == Phase::Failed
    })
    .await;
    wait_for_traffic(&fake, 0).await;
    controller.abort();

    assert_eq!(weight_history(&fake, MESH, "default"), [10, 0]);
    assert_eq!(image(&fake, STABLE), OLD);
    assert!(fake.writes(STABLE).is_empty());
    assert!(!reasons(&fake).contains(&"Promoting".to_owned()));
    assert!(
        status.last_analysis.iter().all(|l| l.contains("HTTP 503")),
        "{:?}",
        status.last_analysis
    );
}

#[tokio::test]
async fn a_restarted_controller_resumes_at_the_stored_weight() {
    let spec = RolloutSpec {
        interval_seconds: 2,
        ..spec()
    };
    let (fake, _script, prometheus) = started(spec, healthy()).await;
    let first = start_controller(&fake, &prometheus);
    wait_for(&fake, Duration::from_secs(30), "at weight 30", |s| {
        s.canary_weight == 30
    })
    .await;
    wait_for_traffic(&fake, 30).await;
    first.abort();
    let _ = first.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // As if the old controller died between recording weight 40 and
    // patching the VirtualServices.
    let now = k8s_openapi::chrono::Utc::now().to_rfc3339();
    fake.edit(
        ROLLOUT,
        json!({"status": {"canaryWeight": 40, "lastStepTime": now}}),
    );
    let before = fake.writes(MESH).len();
    assert_eq!(canary_weight(&fake.get(MESH).unwrap(), "default"), Some(30));

    let second = start_controller(&fake, &prometheus);
    wait_for(&fake, Duration::from_secs(30), "succeeded", |s| {
        s.phase == Phase::Succeeded
    })
    .await;
    wait_for_traffic(&fake, 0).await;
    second.abort();

    let after: Vec<u64> = fake.writes(MESH)[before..]
        .iter()
        .map(|vs| canary_weight(vs, "default").unwrap())
        .collect();
    assert_eq!(
        after,
        [40, 50, 0],
        "resumed at the stored weight, not from 10"
    );
    assert_eq!(
        weight_history(&fake, MESH, "default"),
        [10, 20, 30, 40, 50, 0]
    );
    assert_eq!(image(&fake, STABLE), NEW);
}

#[tokio::test]
async fn annotations_pause_promote_and_abort_and_a_new_image_starts_a_new_rollout() {
    let (fake, _script, prometheus) = started(spec(), healthy()).await;
    let controller = start_controller(&fake, &prometheus);
    wait_for(&fake, Duration::from_secs(20), "at weight 20", |s| {
        s.canary_weight >= 20
    })
    .await;

    fake.edit(
        ROLLOUT,
        json!({"metadata": {"annotations": {PAUSE: "true"}}}),
    );
    let paused = wait_for(&fake, Duration::from_secs(5), "paused", |s| {
        s.phase == Phase::Paused
    })
    .await;
    let writes = fake.writes(MESH).len();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let still = stored_status(&fake);
    assert_eq!(
        (still.phase, still.canary_weight),
        (Phase::Paused, paused.canary_weight)
    );
    assert_eq!(
        fake.writes(MESH).len(),
        writes,
        "no weight change while paused"
    );

    fake.edit(ROLLOUT, json!({"metadata": {"annotations": {PAUSE: null}}}));
    wait_for(&fake, Duration::from_secs(5), "stepped on", |s| {
        s.phase == Phase::Progressing && s.canary_weight > paused.canary_weight
    })
    .await;

    fake.edit(ROLLOUT, json!({"metadata": {"annotations": {PROMOTE: ""}}}));
    wait_for(&fake, Duration::from_secs(10), "succeeded", |s| {
        s.phase == Phase::Succeeded
    })
    .await;
    assert_eq!(image(&fake, STABLE), NEW);
    assert!(
        fake.get(ROLLOUT).unwrap()["metadata"]["annotations"]
            .get(PROMOTE)
            .is_none(),
        "the promote request is removed once acted on"
    );
    let promoted = fake.writes_under(EVENTS);
    assert!(
        promoted.iter().any(|e| e["reason"] == "Promoting"
            && e["note"].as_str().unwrap_or("").contains("by annotation")),
        "{promoted:?}"
    );

    // A new canary image: a new rollout, aborted by annotation.
    fake.edit(
        CANARY,
        json!({"spec": {"template": {"spec": {"containers": [{"name": "order-service", "image": "mercato/order-service:1.2"}]}}}}),
    );
    wait_for(&fake, Duration::from_secs(10), "rolling out 1.2", |s| {
        s.canary_revision.contains(":1.2 #") && s.phase == Phase::Progressing
    })
    .await;
    fake.edit(
        ROLLOUT,
        json!({"metadata": {"annotations": {ABORT: "true"}}}),
    );
    let aborted = wait_for(&fake, Duration::from_secs(5), "aborted", |s| {
        s.phase == Phase::Failed
    })
    .await;
    wait_for_traffic(&fake, 0).await;
    controller.abort();
    assert_eq!(aborted.canary_weight, 0);
    assert_eq!(canary_weight(&fake.get(MESH).unwrap(), "default"), Some(0));
    assert_eq!(image(&fake, STABLE), NEW, "the aborted 1.2 is not promoted");
    assert!(reasons(&fake).contains(&"Aborted".to_owned()));
}

#[tokio::test]
async fn with_the_shipped_interval_a_bad_route_touches_no_traffic_until_fixed() {
    // RolloutSpec::new's shipped defaults: one analysis a minute.
    let mut spec = RolloutSpec::new("order-service");
    spec.analysis = vec![Check::success_rate(99.0)];
    spec.routes.push(RouteRef {
        virtual_service: "order-service".into(),
        route: "nope".into(),
    });
    let (fake, script, prometheus) = started(spec, healthy()).await;
    let controller = start_controller(&fake, &prometheus);
    let status = wait_for(&fake, Duration::from_secs(10), "told why", |s| {
        s.message.is_some()
    })
    .await;
    assert!(
        status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains(r#"no route named "nope""#),
        "{status:?}"
    );
    assert!(fake.writes(MESH).is_empty() && fake.writes(EDGE).is_empty());
    assert!(reasons(&fake).contains(&"Misconfigured".to_owned()));

    fake.edit(
        ROLLOUT,
        json!({"spec": {"routes": [{"virtualService": "order-service", "route": "default"}]}}),
    );
    let status = wait_for(&fake, Duration::from_secs(10), "started", |s| {
        s.canary_weight == 10
    })
    .await;
    assert_eq!(status.message, None);
    // A minute between analyses: none in the next seconds, weight held.
    tokio::time::sleep(Duration::from_secs(3)).await;
    controller.abort();
    assert!(
        script.lock().unwrap().1.is_empty(),
        "no analysis before the interval"
    );
    assert_eq!(weight_history(&fake, MESH, "default"), [10]);
    assert_eq!(stored_status(&fake).phase, Phase::Progressing);
}

#[tokio::test]
async fn a_canary_running_the_stable_images_is_idle() {
    let fake = cluster(spec(), OLD).await;
    let (_script, prometheus) = start_prometheus().await;
    let controller = start_controller(&fake, &prometheus);
    wait_for(&fake, Duration::from_secs(10), "idle", |s| {
        s.phase == Phase::Idle
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    controller.abort();
    assert!(fake.writes(MESH).is_empty() && fake.writes(STABLE).is_empty());
}

/// Issue 35, defect 4: no traffic moves to a canary whose new pods are not
/// ready yet; once its Deployment has rolled out, the rollout starts.
#[tokio::test]
async fn no_traffic_moves_before_the_canary_has_rolled_out() {
    let (fake, _script, prometheus) = started(spec(), healthy()).await;
    let mut rolling = deployment("order-service-canary", NEW);
    rolling["status"] = json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1});
    fake.put(CANARY, rolling);
    let controller = start_controller(&fake, &prometheus);
    let waiting = wait_for(&fake, Duration::from_secs(5), "waiting", |s| {
        s.message
            .as_deref()
            .is_some_and(|m| m.contains("waiting for the canary"))
    })
    .await;
    assert_eq!(
        (waiting.phase, waiting.canary_weight),
        (Phase::Initializing, 0)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stored_status(&fake).phase, Phase::Initializing);
    assert!(
        weight_history(&fake, MESH, "default")
            .iter()
            .all(|w| *w == 0)
    );

    fake.put(CANARY, deployment("order-service-canary", NEW));
    wait_for(&fake, Duration::from_secs(10), "progressing", |s| {
        s.phase == Phase::Progressing && s.canary_weight >= 10
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !weight_history(&fake, MESH, "default")
        .iter()
        .any(|w| *w > 0)
    {
        assert!(Instant::now() < deadline, "no traffic moved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    controller.abort();
    let history = weight_history(&fake, MESH, "default");
    assert_eq!(history.iter().find(|w| **w > 0), Some(&10), "{history:?}");
}

/// A ReplicaSet of the canary Deployment at `revision`, its pods hashed `hash`.
fn canary_replica_set(hash: &str, revision: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {
            "name": format!("order-service-canary-{hash}"), "namespace": "mercato",
            "labels": {"app": "order-service", "pod-template-hash": hash},
            "annotations": {"deployment.kubernetes.io/revision": revision},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                 "name": "order-service-canary", "uid": "canary-uid"}],
        },
        "spec": {"selector": {"matchLabels": {"app": "order-service", "pod-template-hash": hash}}},
    })
}

/// Issue 35, defect 4: the analysis scores only the pods of the canary's
/// current ReplicaSet, not those of the canary release before it (whose
/// series stay in the window).
#[tokio::test]
async fn the_analysis_scores_only_the_current_canary_replica_set() {
    let (fake, script, prometheus) = started(spec(), healthy()).await;
    let mut canary = deployment("order-service-canary", NEW);
    canary["metadata"]["annotations"] = json!({"deployment.kubernetes.io/revision": "2"});
    fake.put(CANARY, canary);
    fake.put(
        &format!("{REPLICA_SETS}/order-service-canary-77c6d8f9b"),
        canary_replica_set("77c6d8f9b", "1"),
    );
    fake.put(
        &format!("{REPLICA_SETS}/order-service-canary-5d4f8b7c9"),
        canary_replica_set("5d4f8b7c9", "2"),
    );
    let controller = start_controller(&fake, &prometheus);
    wait_for(&fake, Duration::from_secs(10), "analysed", |s| {
        s.canary_weight >= 20
    })
    .await;
    controller.abort();
    let queries = script.lock().unwrap().1.clone();
    assert!(
        !queries.is_empty()
            && queries
                .iter()
                .all(|q| q.contains(r#"pod=~"order-service-canary-5d4f8b7c9-[a-z0-9]+""#)),
        "{queries:?}"
    );
}

/// Issue 35, defect 4: a rollout that stops moving forward fails at its
/// progress deadline — here a canary that gets no traffic (every analysis
/// without a verdict), and one that never gets ready — instead of holding
/// its weight forever.
#[tokio::test]
async fn a_rollout_without_progress_fails_at_its_deadline() {
    let spec = RolloutSpec {
        progress_deadline_seconds: 3,
        ..spec()
    };
    let (fake, _script, prometheus) = started(spec.clone(), Answer::NoData).await;
    let controller = start_controller(&fake, &prometheus);
    let held = wait_for(&fake, Duration::from_secs(5), "progressing", |s| {
        s.phase == Phase::Progressing
    })
    .await;
    assert_eq!(held.canary_weight, 10);
    let failed = wait_for(&fake, Duration::from_secs(10), "failed", |s| {
        s.phase == Phase::Failed
    })
    .await;
    wait_for_traffic(&fake, 0).await;
    controller.abort();
    assert_eq!(failed.canary_weight, 0);
    assert!(
        failed
            .last_analysis
            .iter()
            .all(|l| l.contains("no verdict")),
        "{failed:?}"
    );
    assert!(reasons(&fake).contains(&"ProgressDeadlineExceeded".to_owned()));
    assert!(
        !reasons(&fake).contains(&"RolledBack".to_owned()),
        "no failed analysis"
    );

    // A canary that never becomes ready.
    let (fake, _script, prometheus) = started(spec, healthy()).await;
    let mut never = deployment("order-service-canary", NEW);
    never["status"] = json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 0});
    fake.put(CANARY, never);
    let controller = start_controller(&fake, &prometheus);
    let failed = wait_for(&fake, Duration::from_secs(15), "failed", |s| {
        s.phase == Phase::Failed
    })
    .await;
    // Later reconciliations keep the reason in the status.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    controller.abort();
    assert!(
        weight_history(&fake, MESH, "default")
            .iter()
            .all(|w| *w == 0)
    );
    assert!(reasons(&fake).contains(&"ProgressDeadlineExceeded".to_owned()));
    assert!(
        stored_status(&fake)
            .message
            .is_some_and(|m| m.contains("no progress")),
        "{failed:?}"
    );
}

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/mercato/leases/mercato-rollout";

/// A controller replica `identity` behind the leader election (short
/// timings), stopped by cancelling the returned token (it gives the Lease
/// up) or killed by aborting the task (it does not).
fn start_replica(
    fake: &FakeKube,
    prometheus: &Prometheus,
    identity: &str,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let election = leader::Election {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
        ..leader::Election::new("mercato-rollout", identity)
    };
    let context = Context::new(fake.client(), prometheus.clone(), Some(identity.into()));
    let client = fake.client();
    let stop = tokio_util::sync::CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move {
        leader::run(
            client,
            "mercato",
            election,
            shutdown,
            |_| {},
            |lost| {
                let context = context.clone();
                async move { controller::run(context, "mercato", lost.cancelled_owned()).await }
            },
        )
        .await;
    });
    (stop, task)
}

fn holder(fake: &FakeKube) -> Option<String> {
    fake.get(LEASE)?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

/// Which replicas recorded the Events so far (`reportingInstance`).
fn reporters(fake: &FakeKube) -> std::collections::BTreeSet<String> {
    fake.writes_under(EVENTS)
        .iter()
        .filter_map(|e| e["reportingInstance"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn of_two_controllers_only_the_leader_acts_and_the_other_takes_over_when_it_goes() {
    let (fake, _script, prometheus) = started(spec(), healthy()).await;
    let a = start_replica(&fake, &prometheus, "controller-a");
    let b = start_replica(&fake, &prometheus, "controller-b");
    wait_for(&fake, Duration::from_secs(10), "progressing", |s| {
        s.phase == Phase::Progressing && s.canary_weight >= 20
    })
    .await;
    let first = holder(&fake).expect("a leader");
    assert_eq!(
        reporters(&fake),
        [first.clone()].into(),
        "a replica that does not lead acted"
    );

    // The leader dies without giving the Lease up (a killed pod): the other
    // waits for it to expire, then carries the same rollout on.
    let ((stop_first, task_first), (stop_other, task_other)) = if first == "controller-a" {
        (a, b)
    } else {
        (b, a)
    };
    task_first.abort();
    let _ = task_first.await;
    drop(stop_first);
    let killed_at = Instant::now();
    let weight_then = stored_status(&fake).canary_weight;
    let by = |fake: &FakeKube, who: &str| {
        fake.writes_under(EVENTS)
            .iter()
            .filter(|e| e["reportingInstance"] == who)
            .count()
    };
    let first_acted = by(&fake, &first);
    let status = wait_for(&fake, Duration::from_secs(15), "promoted", |s| {
        s.phase == Phase::Succeeded
    })
    .await;
    let second = holder(&fake).expect("a new leader");
    assert_ne!(second, first);
    assert!(reporters(&fake).contains(&second), "{:?}", reporters(&fake));
    assert_eq!(
        by(&fake, &first),
        first_acted,
        "the killed leader went on acting"
    );
    assert!(
        status.canary_weight == 0 && weight_then < 50,
        "{weight_then}"
    );
    println!(
        "leader {first} killed at weight {weight_then}; {second} promoted {:.1} s later",
        killed_at.elapsed().as_secs_f64()
    );

    // Stopped cleanly, a leader gives the Lease up at once.
    stop_other.cancel();
    task_other.await.unwrap();
    assert_eq!(holder(&fake), None);
}

/// The `mercato-rollout run` binary as deployed: it elects itself leader,
/// serves `/readyz` once it has, and `/metrics` with the phase, weight and
/// analyses of the Rollout it drives; SIGTERM stops it and gives the Lease up.
#[tokio::test]
async fn the_binary_leads_serves_probes_and_metrics_and_releases_its_lease_on_sigterm() {
    let fake = cluster(spec(), NEW).await;
    let (script, prometheus_url) = support::start_prometheus_at().await;
    set_answer(&script, healthy());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\n",
            fake.url
        ),
    )
    .unwrap();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mercato-rollout"))
        .arg("run")
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .env("PROMETHEUS_URL", &prometheus_url)
        .env("WATCH_NAMESPACE", "mercato")
        .env("POD_NAME", "mercato-rollout-0")
        .env("METRICS_ADDR", metrics.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let http = http.clone();
        let url = format!("http://{metrics}{path}");
        async move {
            match http.get(url).send().await {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(_) => (0, String::new()),
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while get("/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(holder(&fake).as_deref(), Some("mercato-rollout-0"));
    wait_for(&fake, Duration::from_secs(10), "progressing", |s| {
        s.phase == Phase::Progressing && s.canary_weight >= 20
    })
    .await;
    let (_, text) = get("/metrics").await;
    for wanted in [
        "mercato_rollout_leader 1",
        "mercato_rollout_phase{rollout=\"order-service\",phase=\"Progressing\"} 1",
        "mercato_rollout_phase{rollout=\"order-service\",phase=\"Failed\"} 0",
        "mercato_rollout_analyses_total{rollout=\"order-service\",check=\"success-rate\",outcome=\"passed\"}",
        "mercato_rollout_last_progress_timestamp_seconds{rollout=\"order-service\"}",
    ] {
        assert!(text.contains(wanted), "no {wanted} in\n{text}");
    }
    let weight = text
        .lines()
        .find_map(|l| l.strip_prefix("mercato_rollout_canary_weight{rollout=\"order-service\"} "))
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap();
    assert!(weight >= 10, "{text}");

    let pid = i32::try_from(child.id()).unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert_eq!(holder(&fake), None, "the Lease was not given up");
}

#[tokio::test]
async fn the_canary_scales_with_its_weight_and_to_zero_once_promoted() {
    let (fake, _script, prometheus) = started(spec(), healthy()).await;
    fake.edit(STABLE, json!({"spec": {"replicas": 10}}));
    let controller = start_controller(&fake, &prometheus);
    wait_for(&fake, Duration::from_secs(30), "succeeded", |s| {
        s.phase == Phase::Succeeded
    })
    .await;
    wait_for_replicas(&fake, CANARY, 0).await;
    controller.abort();
    let mut history: Vec<i64> = Vec::new();
    for written in fake.writes(CANARY) {
        let n = written["spec"]["replicas"].as_i64().unwrap();
        if history.last() != Some(&n) {
            history.push(n);
        }
    }
    // Enough to carry 10 %…50 % at the stable's load per pod (10 × w /
    // (100 − w), rounded up), then none.
    assert_eq!(history, [2, 3, 5, 7, 10, 0]);
    // Each step up reached the routes only as far as the canary's available
    // replicas carried it, then all the way once it had scaled: 9 % on one
    // replica before 10 % on two, 16 % on two before 20 % on three, …
    let weights = weight_history(&fake, MESH, "default");
    assert_eq!(&weights[..4], [9, 10, 16, 20], "{weights:?}");
}

#[tokio::test]
async fn an_abort_while_promoting_gives_the_stable_its_template_back() {
    let (fake, _script, prometheus) = started(spec(), healthy()).await;
    fake.freeze(STABLE, true);
    let controller = start_controller(&fake, &prometheus);
    wait_for(&fake, Duration::from_secs(30), "promoting", |s| {
        s.phase == Phase::Promoting
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while image(&fake, STABLE) != NEW {
        assert!(
            Instant::now() < deadline,
            "the stable never took the canary's template"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its new pods never become ready; the operator gives up.
    fake.freeze(STABLE, false);
    fake.edit(ROLLOUT, json!({"metadata": {"annotations": {ABORT: ""}}}));
    let status = wait_for(&fake, Duration::from_secs(10), "restored", |s| {
        s.phase == Phase::Failed && !s.restoring_stable
    })
    .await;
    wait_for_traffic(&fake, 0).await;
    wait_for_replicas(&fake, CANARY, 0).await;
    controller.abort();
    assert_eq!(image(&fake, STABLE), OLD);
    assert_eq!(status.canary_weight, 0);
    let reasons = reasons(&fake);
    assert!(
        reasons.contains(&"Aborted".to_owned()) && reasons.contains(&"StableRestored".to_owned()),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn a_promotion_past_its_deadline_fails_and_restores_the_stable() {
    let spec = RolloutSpec {
        progress_deadline_seconds: 3,
        ..spec()
    };
    let (fake, _script, prometheus) = started(spec, healthy()).await;
    fake.freeze(STABLE, true);
    let controller = start_controller(&fake, &prometheus);
    wait_for(&fake, Duration::from_secs(30), "promoting", |s| {
        s.phase == Phase::Promoting
    })
    .await;
    let status = wait_for(&fake, Duration::from_secs(15), "failed", |s| {
        s.phase == Phase::Failed
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while image(&fake, STABLE) != OLD {
        assert!(
            Instant::now() < deadline,
            "the stable kept the failed release"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    controller.abort();
    assert!(
        status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("no progress"),
        "{status:?}"
    );
}

/// The release is the whole pod template: the canary's workers switch is
/// not a release (still Idle), an env change is one, and promotion gives
/// the stable the canary's env but keeps its workers on.
#[tokio::test]
async fn a_template_change_is_a_release_and_is_promoted_whole_but_the_workers_switch() {
    let fake = cluster(spec(), OLD).await;
    let (script, prometheus) = start_prometheus().await;
    set_answer(&script, healthy());
    fake.edit(
        CANARY,
        json!({"spec": {"template": {"spec": {"containers": [{"name": "order-service", "image": OLD,
            "env": [{"name": "BACKGROUND_WORKERS", "value": "false"}]}]}}}}),
    );
    let controller = start_controller(&fake, &prometheus);
    wait_for(&fake, Duration::from_secs(5), "idle", |s| {
        s.phase == Phase::Idle
    })
    .await;
    wait_for_replicas(&fake, CANARY, 0).await;

    fake.edit(
        CANARY,
        json!({"spec": {"template": {"spec": {"containers": [{"name": "order-service", "image": OLD,
            "env": [{"name": "BACKGROUND_WORKERS", "value": "false"}, {"name": "LOG_LEVEL", "value": "debug"}]}]}}}}),
    );
    wait_for(&fake, Duration::from_secs(30), "succeeded", |s| {
        s.phase == Phase::Succeeded
    })
    .await;
    controller.abort();
    assert_eq!(
        env_of(&fake, STABLE),
        [json!({"name": "LOG_LEVEL", "value": "debug"})],
        "the stable takes the canary's env, without its workers switch"
    );
}

/// `kubectl apply -k` (CI, Argo CD's self-heal) of the rendered manifests
/// in the middle of a rollout puts the routes back at 100/0 and the
/// canary's template as it was: the controller, watching what it drives,
/// puts its weight back at once, and the rollout goes on where it was.
#[tokio::test]
async fn a_re_apply_of_the_manifests_mid_rollout_does_not_reset_it() {
    let spec = RolloutSpec {
        interval_seconds: 3,
        ..spec()
    };
    let (fake, _script, prometheus) = started(spec, healthy()).await;
    let controller = start_controller(&fake, &prometheus);
    let before = wait_for(&fake, Duration::from_secs(15), "at 20", |s| {
        s.phase == Phase::Progressing && s.canary_weight == 20
    })
    .await;
    wait_for_traffic(&fake, 20).await;

    // The re-apply: the routes as rendered, the canary's template as rendered.
    let applied = Instant::now();
    fake.put(MESH, virtual_service("order-service", mesh_http()));
    fake.put(EDGE, virtual_service("mercato-public", edge_http()));
    let mut canary = fake.get(CANARY).unwrap();
    canary["spec"]["template"]["spec"]["containers"][0]["image"] = json!(NEW);
    fake.put(CANARY, canary);
    wait_for_traffic(&fake, 20).await;
    let restored = applied.elapsed();
    let after = stored_status(&fake);
    assert_eq!(
        (after.phase, after.canary_weight, &after.canary_revision),
        (before.phase, before.canary_weight, &before.canary_revision),
        "the re-apply reset the rollout"
    );
    assert!(
        restored < Duration::from_secs(2),
        "weights back after {restored:?}"
    );
    wait_for(&fake, Duration::from_secs(40), "succeeded", |s| {
        s.phase == Phase::Succeeded
    })
    .await;
    controller.abort();
    println!(
        "re-apply at weight 20: weights back in {} ms",
        restored.as_millis()
    );
}

/// With deploy/components/rollout the manifests carry only the canary: on
/// a first install the controller creates the stable Deployment from it
/// (its workers on, `version: stable`, replicas left to the autoscaler),
/// which is then Idle, and the canary goes to zero.
#[tokio::test]
async fn a_missing_stable_deployment_is_created_from_the_canary() {
    let fake = cluster(spec(), NEW).await;
    fake.remove(STABLE);
    fake.edit(
        CANARY,
        json!({"spec": {
            "selector": {"matchLabels": {"app": "order-service", "version": "canary"}},
            "template": {
                "metadata": {"labels": {"app": "order-service", "version": "canary"}},
                "spec": {"containers": [{"name": "order-service", "image": NEW,
                    "env": [{"name": "BACKGROUND_WORKERS", "value": "false"}]}]},
            },
        }}),
    );
    let (script, prometheus) = start_prometheus().await;
    set_answer(&script, healthy());
    let controller = start_controller(&fake, &prometheus);
    wait_for(&fake, Duration::from_secs(10), "idle", |s| {
        s.phase == Phase::Idle
    })
    .await;
    wait_for_replicas(&fake, CANARY, 0).await;
    controller.abort();
    let stable = fake.get(STABLE).expect("the stable Deployment was created");
    assert_eq!(image(&fake, STABLE), NEW);
    assert_eq!(
        stable["spec"]["selector"]["matchLabels"]["version"],
        "stable"
    );
    assert_eq!(
        stable["spec"]["template"]["metadata"]["labels"]["version"],
        "stable"
    );
    assert!(stable["spec"].get("replicas").is_none(), "{stable}");
    assert!(
        env_of(&fake, STABLE).is_empty(),
        "the stable runs its workers"
    );
    assert!(reasons(&fake).contains(&"StableCreated".to_owned()));
}

/// A canary whose calls never reach it (its subset has no ready pod: the
/// callers' sidecars answer UNAVAILABLE themselves) has no traffic of its
/// own, so its success rate has no verdict; the mesh check, judged on the
/// mesh's traffic, fails, and the rollout is rolled back.
#[tokio::test]
async fn the_mesh_check_rolls_back_a_canary_that_no_call_reaches() {
    let spec = RolloutSpec {
        analysis: vec![Check::success_rate(99.0), Check::mesh_success_rate(99.0)],
        ..spec()
    };
    let (fake, _script, prometheus) = started(spec, Answer::MeshOnly { success_rate: 90.0 }).await;
    let controller = start_controller(&fake, &prometheus);
    let status = wait_for(&fake, Duration::from_secs(20), "rolled back", |s| {
        s.phase == Phase::Failed
    })
    .await;
    controller.abort();
    assert!(
        status
            .last_analysis
            .iter()
            .any(|l| l.starts_with("success-rate: no verdict"))
            && status
                .last_analysis
                .iter()
                .any(|l| l.starts_with("mesh-success-rate: failed 90")),
        "{:?}",
        status.last_analysis
    );
}

/// A rollout paused past its progress deadline and then promoted by hand
/// promotes: the promotion's deadline starts when it is asked for.
#[tokio::test]
async fn a_promotion_asked_for_after_a_long_pause_is_not_failed_by_the_pause() {
    let spec = RolloutSpec {
        progress_deadline_seconds: 2,
        ..spec()
    };
    let (fake, _script, prometheus) = started(spec, healthy()).await;
    let controller = start_controller(&fake, &prometheus);
    wait_for(&fake, Duration::from_secs(10), "progressing", |s| {
        s.phase == Phase::Progressing
    })
    .await;
    fake.edit(
        ROLLOUT,
        json!({"metadata": {"annotations": {PAUSE: "true"}}}),
    );
    wait_for(&fake, Duration::from_secs(5), "paused", |s| {
        s.phase == Phase::Paused
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    fake.edit(
        ROLLOUT,
        json!({"metadata": {"annotations": {PAUSE: null, PROMOTE: ""}}}),
    );
    let status = wait_for(&fake, Duration::from_secs(10), "finished", |s| {
        matches!(s.phase, Phase::Succeeded | Phase::Failed)
    })
    .await;
    controller.abort();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
}

/// A stable Deployment gone while its canary runs a release no analysis
/// passed is not recreated from that release: the status says why.
#[tokio::test]
async fn a_missing_stable_is_not_recreated_from_an_unjudged_canary() {
    let fake = cluster(spec(), NEW).await;
    fake.remove(STABLE);
    let mut rollout = fake.get(ROLLOUT).unwrap();
    rollout["status"] = json!({"phase": "Succeeded", "canaryRevision": "order-service=mercato/order-service:1.0 #00000000"});
    fake.put(ROLLOUT, rollout);
    let (script, prometheus) = start_prometheus().await;
    set_answer(&script, healthy());
    let controller = start_controller(&fake, &prometheus);
    let status = wait_for(&fake, Duration::from_secs(10), "reported", |s| {
        s.message
            .as_deref()
            .is_some_and(|m| m.contains("no analysis has passed"))
    })
    .await;
    controller.abort();
    assert!(fake.get(STABLE).is_none(), "{status:?}");
}
