//! In-test stand-ins for what the controller talks to: a Prometheus HTTP
//! API whose answers the test changes over time, and a Kubernetes API
//! server that speaks the object endpoints the controller uses — get,
//! list, watch, JSON merge patch (object and status subresource, with
//! resourceVersion preconditions), create — over an in-memory store.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{RawQuery, State},
    http::{Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::get,
};
use futures_util::StreamExt;
use mercato_rollout::prometheus::Prometheus;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

// ---- Prometheus -----------------------------------------------------------

/// What the fake Prometheus answers: a success rate and a p99, or an empty
/// result, or an HTTP 503.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    Metrics {
        success_rate: f64,
        p99: f64,
    },
    /// The canary's own series have nothing (no call reached it); the
    /// mesh's (`istio_requests_total`) have calls, `success_rate` % fine.
    MeshOnly {
        success_rate: f64,
    },
    NoData,
    Down,
}

pub fn healthy() -> Answer {
    Answer::Metrics {
        success_rate: 99.9,
        p99: 0.12,
    }
}

/// The answer now (the first of the list) and every query asked.
pub type Script = Arc<Mutex<(Vec<Answer>, Vec<String>)>>;

async fn query(
    State(script): State<Script>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, StatusCode> {
    let url =
        reqwest::Url::parse(&format!("http://prometheus/?{}", raw.unwrap_or_default())).unwrap();
    let q = url
        .query_pairs()
        .find(|(k, _)| k == "query")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let mut script = script.lock().unwrap();
    script.1.push(q.clone());
    let answer = *script.0.first().unwrap_or(&Answer::NoData);
    let sample = |v: f64| json!({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1.0, v.to_string()]}]}});
    let empty = json!({"status": "success", "data": {"resultType": "vector", "result": []}});
    match answer {
        Answer::Down => Err(StatusCode::SERVICE_UNAVAILABLE),
        Answer::MeshOnly { success_rate } => Ok(Json(if q.contains("istio_requests_total") {
            sample(success_rate)
        } else {
            empty
        })),
        Answer::NoData => Ok(Json(
            json!({"status": "success", "data": {"resultType": "vector", "result": []}}),
        )),
        Answer::Metrics { success_rate, p99 } => Ok(Json(if q.starts_with("histogram_quantile") {
            sample(p99)
        } else {
            sample(success_rate)
        })),
    }
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A fake Prometheus answering `answer` until told otherwise, and a client
/// of it.
pub async fn start_prometheus() -> (Script, Prometheus) {
    let (script, url) = start_prometheus_at().await;
    let prometheus = Prometheus::new(&url, Duration::from_secs(2)).unwrap();
    (script, prometheus)
}

/// [`start_prometheus`], as its URL (for a controller process).
pub async fn start_prometheus_at() -> (Script, String) {
    let script: Script = Arc::default();
    let app = Router::new()
        .route("/api/v1/query", get(query))
        .with_state(script.clone());
    let addr = serve(app).await;
    (script, format!("http://{addr}"))
}

pub fn set_answer(script: &Script, answer: Answer) {
    script.lock().unwrap().0 = vec![answer];
}

/// The last analysis failed on a 95 % success rate.
pub fn assert_failed_at_95_percent(status: &mercato_rollout::RolloutStatus) {
    assert!(
        status
            .last_analysis
            .iter()
            .any(|l| l.starts_with("success-rate: failed 95")),
        "{:?}",
        status.last_analysis
    );
}

// ---- Kubernetes -----------------------------------------------------------

/// The fake API server's memory: objects by their path
/// (`/apis/apps/v1/namespaces/mercato/deployments/order-service`) and every
/// write, in order, as (path, object after).
#[derive(Default)]
pub struct Store {
    objects: BTreeMap<String, Value>,
    version: u64,
    pub writes: Vec<(String, Value)>,
    /// Deployments whose new templates do not roll out (a stuck rollout).
    frozen: std::collections::BTreeSet<String>,
}

#[derive(Clone)]
pub struct FakeKube {
    store: Arc<Mutex<Store>>,
    /// (collection path, watch event) for the watch streams.
    changes: broadcast::Sender<(String, Value)>,
    pub url: String,
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "reason": reason, "message": message, "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            let object = target.as_object_mut().unwrap();
            for (key, value) in fields {
                if value.is_null() {
                    object.remove(key);
                } else {
                    merge(object.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn collection_of(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(c, _)| c)
}

impl Store {
    fn bump(&mut self, object: &mut Value) {
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
    }
}

impl FakeKube {
    pub async fn start() -> Self {
        let (changes, _) = broadcast::channel(1024);
        let mut fake = Self {
            store: Arc::default(),
            changes,
            url: String::new(),
        };
        let app = Router::new().fallback(handle).with_state(fake.clone());
        fake.url = format!("http://{}", serve(app).await);
        fake
    }

    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Stores `object` at `path` (a fixture, or what another actor did).
    pub fn put(&self, path: &str, mut object: Value) {
        let mut store = self.store.lock().unwrap();
        store.bump(&mut object);
        store.objects.insert(path.to_owned(), object.clone());
        let _ = self.changes.send((
            collection_of(path).to_owned(),
            json!({"type": "MODIFIED", "object": object}),
        ));
    }

    /// Whether the Deployment at `path` rolls out what it is given from now
    /// on (a frozen one keeps its status: never observed, never updated).
    pub fn freeze(&self, path: &str, frozen: bool) {
        let mut store = self.store.lock().unwrap();
        if frozen {
            store.frozen.insert(path.to_owned());
        } else {
            store.frozen.remove(path);
        }
    }

    /// Deletes the object at `path` (a fixture the test does not want).
    pub fn remove(&self, path: &str) {
        self.store.lock().unwrap().objects.remove(path);
    }

    /// Merge-patches the object at `path` as another actor would.
    pub fn edit(&self, path: &str, patch: Value) {
        let mut object = self.get(path).unwrap();
        merge(&mut object, &patch);
        self.put(path, object);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.store.lock().unwrap().objects.get(path).cloned()
    }

    /// The objects directly under a collection path.
    pub fn list(&self, collection: &str) -> Vec<Value> {
        let store = self.store.lock().unwrap();
        store
            .objects
            .iter()
            .filter(|(path, _)| collection_of(path) == collection)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// The objects the API wrote whose path passes `keep`, in order.
    fn writes_where(&self, keep: impl Fn(&str) -> bool) -> Vec<Value> {
        let store = self.store.lock().unwrap();
        store
            .writes
            .iter()
            .filter(|(p, _)| keep(p))
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// The objects written at `path` by the API, in order.
    pub fn writes(&self, path: &str) -> Vec<Value> {
        self.writes_where(|p| p == path)
    }

    /// The objects created or written under a collection path, in order.
    pub fn writes_under(&self, collection: &str) -> Vec<Value> {
        self.writes_where(|p| collection_of(p) == collection)
    }

    fn write(&self, path: &str, patch: &Value, subresource_status: bool) -> Response {
        let mut store = self.store.lock().unwrap();
        let Some(mut object) = store.objects.get(path).cloned() else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{path} not found"),
            );
        };
        if let Some(wanted) = patch
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            && object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                != Some(wanted)
        {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                format!("{path}: the object has been modified"),
            );
        }
        if subresource_status {
            merge(
                &mut object["status"],
                patch.get("status").unwrap_or(&Value::Null),
            );
        } else {
            let spec_before = object.get("spec").cloned();
            let mut patch = patch.clone();
            // The status is written through its subresource only.
            if let Some(fields) = patch.as_object_mut() {
                fields.remove("status");
            }
            merge(&mut object, &patch);
            // A Deployment whose spec changed rolls out at once here; a
            // frozen one never gets to it (its controller never observes it).
            if path.contains("/deployments/") && object.get("spec").cloned() != spec_before {
                let generation = object
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64);
                let generation = generation.unwrap_or(1) + 1;
                object["metadata"]["generation"] = json!(generation);
            }
            if path.contains("/deployments/")
                && object.get("spec").cloned() != spec_before
                && !store.frozen.contains(path)
            {
                let generation = object["metadata"]["generation"].clone();
                object["status"]["observedGeneration"] = generation;
                // Every wanted replica updated and available at once.
                let replicas = object
                    .pointer("/spec/replicas")
                    .cloned()
                    .unwrap_or(json!(1));
                for field in ["replicas", "updatedReplicas", "availableReplicas"] {
                    object["status"][field] = replicas.clone();
                }
            }
        }
        store.bump(&mut object);
        store.objects.insert(path.to_owned(), object.clone());
        store.writes.push((path.to_owned(), object.clone()));
        let _ = self.changes.send((
            collection_of(path).to_owned(),
            json!({"type": "MODIFIED", "object": object}),
        ));
        Json(object).into_response()
    }

    fn create(&self, collection: &str, mut object: Value) -> Response {
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("unnamed")
            .to_owned();
        let path = format!("{collection}/{name}");
        let mut store = self.store.lock().unwrap();
        if store.objects.contains_key(&path) {
            return status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{path} already exists"),
            );
        }
        store.bump(&mut object);
        store.objects.insert(path.clone(), object.clone());
        store.writes.push((path, object.clone()));
        (StatusCode::CREATED, Json(object)).into_response()
    }

    fn watch(&self, collection: String) -> Response {
        let changes = BroadcastStream::new(self.changes.subscribe()).filter_map(move |change| {
            let line = match change {
                Ok((c, event)) if c == collection => Some(format!("{event}\n")),
                _ => None,
            };
            async move { line.map(|l| Ok::<_, Infallible>(Bytes::from(l))) }
        });
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(changes))
            .unwrap()
    }
}

/// The resources the controller uses.
const COLLECTIONS: [&str; 6] = [
    "rollouts",
    "deployments",
    "replicasets",
    "virtualservices",
    "events",
    "leases",
];

async fn handle(State(fake): State<FakeKube>, method: Method, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().trim_end_matches('/').to_owned();
    let query = uri.query().unwrap_or_default();
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
        }
    };
    match method {
        Method::GET => {
            if let Some(object) = fake.get(&path) {
                return Json(object).into_response();
            }
            if query.split('&').any(|p| p == "watch=true") {
                return fake.watch(path);
            }
            let plural = path.rsplit('/').next().unwrap_or_default();
            if !COLLECTIONS.contains(&plural) {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{path} not found"),
                );
            }
            let items = fake.list(&path);
            let version = fake.store.lock().unwrap().version;
            Json(json!({
                "apiVersion": "v1", "kind": "List",
                "metadata": {"resourceVersion": version.to_string()},
                "items": items,
            }))
            .into_response()
        }
        Method::PATCH => match path.strip_suffix("/status") {
            Some(object) if fake.get(object).is_some() => fake.write(object, &body, true),
            _ => fake.write(&path, &body, false),
        },
        Method::POST => fake.create(&path, body),
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} {path}"),
        ),
    }
}
