//! deploy/ against the code: every overlay rendered by `kubectl kustomize`
//! and checked with facts gathered from a real server — the suite running
//! in one process on SQLite, after real calls — and the same checks shown
//! to fail on manifests broken on purpose.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use mercato_deploy_check::{
    Facts, Wait, check, check_dev_images, check_pipeline, check_production, needed_api_groups,
    render, render_with, repo_root,
};
use mercato_platform::{Server, ServerSettings};
use mercato_proto::{
    order::v1::{
        CreateOrderRequest, OrderItem, catalog_service_client::CatalogServiceClient,
        order_service_client::OrderServiceClient,
    },
    user::v1::{GetUserRequest, user_service_client::UserServiceClient},
};
use mercato_telemetry::TelemetrySettings;
use mercato_testkit::{Db, TestDatabase, admin_channel, http_get, metrics::Scrape};
use serde_yaml::Value;
use tokio_util::sync::CancellationToken;

const OVERLAYS: [&str; 3] = ["dev", "staging", "production"];

/// `{"auth": {"jwt": {"issuer": …}}}` → `AUTH__JWT__ISSUER`, as the settings
/// loader reads the environment.
fn env_names(settings: &impl serde::Serialize) -> BTreeSet<String> {
    fn walk(value: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
        if let serde_json::Value::Object(map) = value {
            for (key, value) in map {
                let key = key.to_ascii_uppercase();
                let key = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}__{key}")
                };
                walk(value, &key, out);
            }
        } else {
            out.insert(prefix.to_owned());
        }
    }
    let mut out = BTreeSet::new();
    walk(&serde_json::to_value(settings).unwrap(), "", &mut out);
    out
}

/// Sample names a scrape can have: the samples seen, and what each
/// `# TYPE` line promises (counters `_total`, histograms `_bucket`/`_sum`/`_count`).
fn exported_names(body: &str) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = Scrape::parse(body)
        .names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    for line in body.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    names.insert(name.to_owned());
                }
            }
        }
    }
    names
}

/// What the rollout controller exports once it has recorded a rollout and
/// an analysis (crates/rollout/src/metrics.rs).
fn rollout_controller_metrics() -> String {
    let metrics = mercato_rollout::metrics::Metrics::default();
    let status = mercato_rollout::RolloutStatus {
        progressed_at: Some("2026-01-01T00:00:00Z".into()),
        ..mercato_rollout::RolloutStatus::default()
    };
    metrics.record("order-service", &status);
    metrics.leading(true);
    metrics.encode()
}

/// The suite in one process (as `mercato up` runs it), some real calls,
/// and what it then serves and exports.
async fn observe(probe_paths: &BTreeSet<String>) -> Facts {
    let databases = [
        TestDatabase::create(Db::Sqlite).await,
        TestDatabase::create(Db::Sqlite).await,
        TestDatabase::create(Db::Sqlite).await,
    ];
    let auth = mercato_testkit::auth::settings();
    let server_settings = ServerSettings::ephemeral();
    let mut server = Server::bind(server_settings.clone()).await.unwrap();
    let user = mercato_user::Settings {
        server: server_settings.clone(),
        auth: auth.clone(),
        database: databases[0].settings(),
        ..mercato_user::Settings::default()
    };
    let feed = mercato_user::activity_feed(&user).unwrap();
    mercato_user::install(&mut server, &user, feed.clone())
        .await
        .unwrap();
    let payment = mercato_payment::Settings {
        server: server_settings.clone(),
        auth: auth.clone(),
        database: databases[1].settings(),
        ..mercato_payment::Settings::default()
    };
    mercato_payment::install(&mut server, &payment, feed.clone())
        .await
        .unwrap();
    let loopback = format!("http://{}", server.grpc_addr());
    let order = mercato_order::Settings {
        server: server_settings,
        auth: auth.clone(),
        database: databases[2].settings(),
        service_api_key: mercato_testkit::auth::service_key().into(),
        user_service_addr: loopback.clone(),
        payment_service_addr: loopback,
        ..mercato_order::Settings::default()
    };
    mercato_order::install(&mut server, &order, feed)
        .await
        .unwrap();
    server.protect(&auth, None).unwrap();
    let (grpc, http, metrics) = (
        server.grpc_addr(),
        server.http_addr(),
        server.metrics_addr(),
    );
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone().cancelled_owned()));

    // Real traffic, so every family has samples: users, a confirmed and a
    // declined order (sagas, steps, payments, client calls), a NOT_FOUND.
    let channel = admin_channel(grpc).await;
    let mut users = UserServiceClient::new(channel.clone());
    let buyer = users
        .create_user(mercato_testkit::fixtures::new_user(
            "deploy@example.com",
            "Deploy",
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let _ = users
        .get_user(GetUserRequest {
            user_id: buyer.user_id.clone(),
        })
        .await;
    let _ = users
        .get_user(GetUserRequest {
            user_id: "0193a000-0000-7000-8000-000000000000".into(),
        })
        .await;
    CatalogServiceClient::new(channel.clone())
        .create_product(mercato_testkit::fixtures::new_product(
            "deploy-1", "USD", 100, 10,
        ))
        .await
        .unwrap();
    let mut orders = OrderServiceClient::new(channel);
    for (request_id, method) in [("deploy-ok", "pm_approve"), ("deploy-no", "pm_decline")] {
        orders
            .create_order(CreateOrderRequest {
                request_id: request_id.into(),
                user_id: buyer.user_id.clone(),
                items: vec![OrderItem {
                    product_id: "deploy-1".into(),
                    quantity: 1,
                    unit_price: None,
                }],
                payment_method: method.into(),
            })
            .await
            .unwrap();
    }

    let mut served_paths = BTreeSet::new();
    for path in probe_paths {
        if http_get(http, path).await.0 != 404 {
            served_paths.insert(path.clone());
        }
    }
    let (code, body) = http_get(metrics, "/metrics").await;
    assert_eq!(code, 200);
    stop.cancel();

    let telemetry = env_names(&TelemetrySettings::default());
    let with_telemetry = |mut names: BTreeSet<String>| {
        names.extend(telemetry.iter().cloned());
        names
    };
    let defaults = ServerSettings::default();
    Facts {
        grpc_port: defaults.grpc_addr.port(),
        http_port: defaults.http_addr.port(),
        metrics_port: defaults.metrics_addr.port(),
        served_paths,
        settings: [
            (
                "user-service",
                with_telemetry(env_names(&mercato_user::Settings::default())),
            ),
            (
                "order-service",
                with_telemetry(env_names(&mercato_order::Settings::default())),
            ),
            (
                "payment-service",
                with_telemetry(env_names(&mercato_payment::Settings::default())),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
        default_shutdown_delay_secs: defaults.shutdown_delay_secs,
        default_drain_timeout_secs: defaults.drain_timeout_secs,
        default_database_max_connections: f64::from(
            mercato_user::Settings::default()
                .database
                .database_max_connections,
        ),
        environment: mercato_telemetry::READ_FROM_ENVIRONMENT
            .iter()
            .chain(&["CONFIG_FILE"])
            .map(|s| (*s).to_owned())
            .collect(),
        environment_prefixes: mercato_telemetry::READ_FROM_ENVIRONMENT_PREFIXES
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        metrics: exported_names(&body)
            .into_iter()
            .chain(exported_names(&rollout_controller_metrics()))
            .collect(),
        // Prometheus' own scrape health and kube-state-metrics.
        external_metrics: ["up", "kube_pod_container_status_restarts_total"]
            .into_iter()
            .map(str::to_owned)
            .collect(),
        grpc_paths: mercato_platform::grpc_methods()
            .iter()
            .map(|m| format!("/{}", m.full_name))
            .collect(),
        streaming_paths: mercato_platform::grpc_methods()
            .iter()
            .filter(|m| m.kind != mercato_telemetry::grpc::MethodKind::Unary)
            .map(|m| format!("/{}", m.full_name))
            .collect(),
        idempotent_paths: idempotent_paths(),
        edge_paths: edge_paths(),
        readiness_check_timeout_secs: mercato_platform::probes::CHECK_TIMEOUT.as_secs_f64(),
        waits: waits(),
        served_by: [
            ("user-service", &["/user.v1.", "/experiment.v1."][..]),
            ("order-service", &["/order.v1."]),
            ("payment-service", &["/payment.v1."]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.iter().map(|p| (*p).to_owned()).collect()))
        .collect(),
    }
}

/// Methods whose `idempotency_level` (in the protos) lets a repeat do no harm.
fn idempotent_paths() -> BTreeSet<String> {
    use prost::Message;
    use prost_types::method_options::IdempotencyLevel;
    let set = prost_types::FileDescriptorSet::decode(mercato_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut paths = BTreeSet::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                let level = method
                    .options
                    .as_ref()
                    .map(|o| o.idempotency_level())
                    .unwrap_or_default();
                if matches!(
                    level,
                    IdempotencyLevel::NoSideEffects | IdempotencyLevel::Idempotent
                ) {
                    paths.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    assert!(paths.contains("/user.v1.UserService/GetUser"), "{paths:?}");
    paths
}

/// What the `user` and `guest` roles may call: the end users' RPCs.
fn edge_paths() -> BTreeSet<String> {
    let policy = mercato_auth::Policy::default();
    let granted: BTreeSet<&String> = ["user", "guest"]
        .iter()
        .flat_map(|role| policy.roles.get(*role).into_iter().flatten())
        .collect();
    policy
        .methods
        .iter()
        .filter(|(_, permission)| granted.contains(permission))
        .map(|(path, _)| path.clone())
        .collect()
}

/// How long the servers wait on what: CreateOrder and CancelOrder for their
/// saga (order_wait_secs), the order service on its calls to user and
/// payment (peer_timeout_ms).
fn waits() -> Vec<Wait> {
    let order = mercato_order::Settings::default();
    let wait = |path: &str, setting: &str, default: f64, scale: f64, in_mesh: bool| Wait {
        path: path.into(),
        deployment: "order-service".into(),
        setting: setting.into(),
        default,
        scale,
        in_mesh,
    };
    let saga = order.order_wait_secs;
    let mut waits = vec![
        wait(
            "/order.v1.OrderService/CreateOrder",
            "ORDER_WAIT_SECS",
            saga,
            1.0,
            false,
        ),
        wait(
            "/order.v1.OrderService/CancelOrder",
            "ORDER_WAIT_SECS",
            saga,
            1.0,
            false,
        ),
    ];
    #[allow(clippy::cast_precision_loss)] // milliseconds of a timeout
    let peer = order.peer_timeout_ms as f64;
    for path in [
        "/user.v1.UserService/GetUser",
        "/payment.v1.PaymentService/Charge",
        "/payment.v1.PaymentService/Refund",
        "/payment.v1.PaymentService/VoidCharge",
        "/payment.v1.PaymentService/GetPayment",
    ] {
        waits.push(wait(path, "PEER_TIMEOUT_MS", peer, 0.001, true));
    }
    waits
}

fn probe_paths(docs: &[Value]) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for doc in docs.iter().filter(|d| d["kind"] == "Deployment") {
        for container in doc["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                if let Some(path) = container[probe]["httpGet"]["path"].as_str() {
                    paths.insert(path.to_owned());
                }
            }
        }
    }
    paths
}

/// Overlays with opt-in components, rendered and checked like the overlays.
const COMPOSITIONS: [(&str, &[&str]); 3] = [
    ("production", &["canary"]),
    ("production", &["canary", "rollout"]),
    ("dev", &["canary", "monitoring", "vpa", "rollout"]),
];

/// The CRD groups each overlay needs (README "Deploying" says the same).
fn istio_groups() -> BTreeSet<String> {
    [
        "networking.istio.io",
        "security.istio.io",
        "telemetry.istio.io",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

fn doc_mut<'a>(docs: &'a mut [Value], kind: &str, name: &str) -> &'a mut Value {
    docs.iter_mut()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} is not rendered"))
}

fn container_mut<'a>(docs: &'a mut [Value], deployment: &str) -> &'a mut Value {
    &mut doc_mut(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]
}

fn route_mut<'a>(docs: &'a mut [Value], service: &str, route: &str) -> &'a mut Value {
    doc_mut(docs, "VirtualService", service)["spec"]["http"]
        .as_sequence_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["name"] == route)
        .unwrap_or_else(|| panic!("no route {route} in {service}"))
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_overlay_agrees_with_the_code() {
    let mut rendered: Vec<(String, Vec<Value>)> = OVERLAYS
        .iter()
        .map(|o| ((*o).to_owned(), render(o).unwrap_or_else(|e| panic!("{e}"))))
        .collect();
    for (overlay, components) in COMPOSITIONS {
        rendered.push((
            format!("{overlay}+{}", components.join("+")),
            render_with(overlay, components).unwrap_or_else(|e| panic!("{e}")),
        ));
    }
    let mut candidates: BTreeSet<String> =
        rendered.iter().flat_map(|(_, d)| probe_paths(d)).collect();
    // A path the server must not answer, so "served" is not vacuous.
    candidates.insert("/healthz".into());
    let facts = observe(&candidates).await;
    assert!(
        !facts.served_paths.contains("/healthz"),
        "unknown paths are 404"
    );
    assert!(
        facts.metrics.contains("grpc_server_handled_total"),
        "{:?}",
        facts.metrics
    );
    assert!(facts.metrics.contains("sagas_total") && facts.metrics.contains("db_pool_connections"));
    assert!(
        facts
            .streaming_paths
            .contains("/user.v1.UserService/StreamUserActivity")
    );
    assert!(
        facts
            .edge_paths
            .contains("/order.v1.OrderService/CreateOrder")
            && !facts
                .edge_paths
                .contains("/payment.v1.PaymentService/Charge"),
        "{:?}",
        facts.edge_paths
    );

    for (overlay, docs) in &rendered {
        let mut problems = check(docs, &facts);
        if overlay.starts_with("production") {
            problems.extend(check_production(docs));
        }
        assert!(
            problems.is_empty(),
            "deploy/overlays/{overlay} disagrees with the code:\n{}",
            problems.join("\n")
        );
    }

    // What each overlay needs of the cluster: base none, dev only Istio.
    let base = mercato_deploy_check::render_dir(&repo_root().join("deploy/base")).unwrap();
    assert!(
        needed_api_groups(&base).is_empty(),
        "{:?}",
        needed_api_groups(&base)
    );
    let needs =
        |overlay: &str| needed_api_groups(&rendered.iter().find(|(o, _)| o == overlay).unwrap().1);
    assert_eq!(needs("dev"), istio_groups());
    let mut full = istio_groups();
    full.extend([
        "monitoring.coreos.com".to_owned(),
        "autoscaling.k8s.io".to_owned(),
    ]);
    assert_eq!(needs("staging"), full);
    assert_eq!(needs("production"), full);

    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let dev = rendered[0].1.clone();
    let problems = check_dev_images(&dev, &readme);
    assert!(problems.is_empty(), "{problems:#?}");
    let pipeline = std::fs::read_to_string(repo_root().join(".gitlab-ci.yml")).unwrap();
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let problems = check_pipeline(&pipeline, &dockerfile);
    assert!(problems.is_empty(), "{problems:#?}");

    breaks_are_reported(&rendered, &facts, &readme, &pipeline, &dockerfile);
}

/// The same checks on manifests broken on purpose, each break one that
/// deploy/ once had or could have: each is reported.
fn breaks_are_reported(
    rendered: &[(String, Vec<Value>)],
    facts: &Facts,
    readme: &str,
    pipeline: &str,
    dockerfile: &str,
) {
    let of = |overlay: &str| {
        rendered
            .iter()
            .find(|(o, _)| o == overlay)
            .unwrap()
            .1
            .clone()
    };
    type Break = (
        &'static str,
        &'static str,
        fn(&mut Vec<Value>),
        &'static str,
    );
    let breaks: Vec<Break> = vec![
        (
            "the read-only root filesystem",
            "dev",
            |docs| {
                container_mut(docs, "user-service")["securityContext"]["readOnlyRootFilesystem"] =
                    false.into();
            },
            "missing readOnlyRootFilesystem",
        ),
        (
            "a probe path",
            "dev",
            |docs| {
                container_mut(docs, "user-service")["readinessProbe"]["httpGet"]["path"] =
                    "/healthz".into();
            },
            "readinessProbe path /healthz is not served",
        ),
        (
            "a container port",
            "dev",
            |docs| {
                container_mut(docs, "user-service")["ports"][0]["containerPort"] = 9091.into();
            },
            "container port grpc is 9091, the binary listens on 9090",
        ),
        (
            "an env var name",
            "dev",
            |docs| {
                container_mut(docs, "user-service")["env"]
                    .as_sequence_mut()
                    .unwrap()
                    .iter_mut()
                    .find(|v| v["name"] == "DATABASE_URL")
                    .unwrap()["name"] = "DATABSE_URL".into();
            },
            "env DATABSE_URL is not a setting",
        ),
        (
            "the grace period",
            "dev",
            |docs| {
                doc_mut(docs, "Deployment", "user-service")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] =
                    10.into();
            },
            "does not fit in terminationGracePeriodSeconds 10",
        ),
        (
            "an alert's metric",
            "production",
            |docs| {
                let rule = docs
                    .iter_mut()
                    .find(|d| d["kind"] == "PrometheusRule")
                    .unwrap();
                rule["spec"]["groups"][1]["rules"][3]["expr"] =
                    "rate(grpc_server_handeld_total[5m]) > 1".into();
            },
            "metric grpc_server_handeld_total is not exported",
        ),
        (
            "a config file key",
            "dev",
            |docs| {
                let map = docs
                    .iter_mut()
                    .find(|d| {
                        d["kind"] == "ConfigMap"
                            && d["metadata"]["name"]
                                .as_str()
                                .unwrap()
                                .starts_with("user-service-config")
                    })
                    .unwrap();
                let text = map["data"]["config.yaml"]
                    .as_str()
                    .unwrap()
                    .replace("drain_timeout_secs", "drain_timout_secs");
                map["data"]["config.yaml"] = text.into();
            },
            "config.yaml key DRAIN_TIMOUT_SECS is not a setting",
        ),
        (
            "an authorization path",
            "dev",
            |docs| {
                doc_mut(docs, "AuthorizationPolicy", "payment-service")["spec"]["rules"][0]["to"]
                    [0]["operation"]["paths"][0] = "/payment.v1.PaymentService/Charg".into();
            },
            "path /payment.v1.PaymentService/Charg is no served method",
        ),
        (
            "a VPA target",
            "production",
            |docs| {
                doc_mut(docs, "VerticalPodAutoscaler", "user-service")["spec"]["targetRef"]["name"] =
                    "user-svc".into();
            },
            "targets Deployment \"user-svc\", which is not rendered",
        ),
        // 1. Traffic to a subset no pod carries (the old 90/10 split without a canary).
        (
            "a canary weight without canary pods",
            "dev",
            |docs| {
                let route = route_mut(docs, "user-service", "default");
                route["route"][0]["weight"] = 90.into();
                route["route"].as_sequence_mut().unwrap().push(yaml(
                    "{destination: {host: user-service, subset: canary}, weight: 10}",
                ));
            },
            "sends traffic to user-service subset canary (weight 10), whose pods no rendered Deployment runs",
        ),
        (
            "the canary Deployment's version label",
            "production+canary+rollout",
            |docs| {
                doc_mut(docs, "Deployment", "order-service-canary")["spec"]["template"]["metadata"]
                    ["labels"]["version"] = "stable".into();
            },
            "order-service subset canary (weight 0), whose pods no rendered Deployment runs",
        ),
        (
            "a canary weight patched onto another service's route",
            "production+canary+rollout",
            |docs| {
                let route = route_mut(docs, "mercato-public", "experiment-events");
                route["route"][1]["destination"]["host"] = "order-service".into();
            },
            "splits traffic between hosts order-service, user-service",
        ),
        (
            "a weight-0 canary destination without canary pods",
            "production",
            |docs| {
                route_mut(docs, "payment-service", "default")["route"]
                    .as_sequence_mut()
                    .unwrap()
                    .push(yaml(
                        "{destination: {host: payment-service, subset: canary}, weight: 0}",
                    ));
            },
            "sends traffic to payment-service subset canary (weight 0), whose pods",
        ),
        // 2. The placeholder JWKS URI, no selector, a key that is not the issuer's.
        (
            "a placeholder jwksUri",
            "dev",
            |docs| {
                let rule = &mut doc_mut(docs, "RequestAuthentication", "mercato-jwt")["spec"]["jwtRules"]
                    [0];
                rule.as_mapping_mut().unwrap().remove("jwks");
                rule["jwksUri"] = "https://auth.mercato.example.com/.well-known/jwks.json".into();
            },
            "is a placeholder host istiod cannot fetch",
        ),
        (
            "the RequestAuthentication's selector",
            "dev",
            |docs| {
                doc_mut(docs, "RequestAuthentication", "mercato-jwt")["spec"]
                    .as_mapping_mut()
                    .unwrap()
                    .remove("selector");
            },
            "RequestAuthentication mercato-jwt: no selector",
        ),
        (
            "the issuer's key beside the JWKS",
            "dev",
            |docs| {
                doc_mut(docs, "Secret", "mercato-jwt-issuer")["stringData"]["issuer.pem"] =
                    mercato_auth::dev_keys::generate()
                        .unwrap()
                        .public_pem
                        .into();
            },
            "jwks has no key issuer equal to Secret mercato-jwt-issuer's issuer.pem",
        ),
        // 3. A classic sidecar that stops 5 s into a 27 s drain.
        (
            "native sidecars",
            "dev",
            |docs| {
                doc_mut(docs, "Deployment", "order-service")["spec"]["template"]["metadata"]
                    ["annotations"]
                    .as_mapping_mut()
                    .unwrap()
                    .remove("sidecar.istio.io/nativeSidecar");
            },
            "order-service: the classic sidecar stops 5 s into termination while the app drains for 27 s",
        ),
        // 4. A per-try timeout shorter than CreateOrder's wait; a timeout on a stream.
        (
            "the order route's per-try timeout",
            "production",
            |docs| {
                route_mut(docs, "mercato-public", "order-sagas")["retries"]["perTryTimeout"] =
                    "5s".into();
            },
            "perTryTimeout 5 s is not longer than the 10 s order-service may wait on /order.v1.OrderService/CreateOrder",
        ),
        (
            "a timeout on the activity stream",
            "production",
            |docs| {
                route_mut(docs, "mercato-public", "user-activity")["timeout"] = "10s".into();
            },
            "timeout 10 s cuts the stream /user.v1.UserService/StreamUserActivity",
        ),
        (
            "a mesh timeout below the order service's peer timeout",
            "dev",
            |docs| {
                route_mut(docs, "payment-service", "default")["timeout"] = "2s".into();
            },
            "timeout 2 s is not longer than the 5 s order-service may wait on /payment.v1.PaymentService/Charge",
        ),
        // 5. Retrying UNAVAILABLE on writes without an idempotency key.
        (
            "unavailable retried on UpdateUser",
            "production",
            |docs| {
                route_mut(docs, "mercato-public", "user-writes")["retries"]["retryOn"] =
                    "connect-failure,refused-stream,unavailable".into();
            },
            "retries /user.v1.UserService/UpdateUser on unavailable",
        ),
        (
            "a route left to Istio's default retries",
            "dev",
            |docs| {
                route_mut(docs, "order-service", "default")
                    .as_mapping_mut()
                    .unwrap()
                    .remove("retries");
            },
            "retries /order.v1.CatalogService/AdjustStock on unavailable,cancelled,retriable-status-codes although",
        ),
        // 6. Outlier detection counting answers from healthy pods.
        (
            "5xx-counting outlier detection",
            "dev",
            |docs| {
                let detection = &mut doc_mut(docs, "DestinationRule", "payment-service")["spec"]["trafficPolicy"]
                    ["outlierDetection"];
                let detection = detection.as_mapping_mut().unwrap();
                detection.remove("splitExternalLocalOriginErrors");
                detection.insert("consecutive5xxErrors".into(), 3.into());
                detection.insert("consecutiveGatewayErrors".into(), 3.into());
            },
            "DestinationRule payment-service: outlier detection counts gateway errors",
        ),
        // 7. One slow readiness answer empties the Service.
        (
            "the readiness probe's threshold",
            "dev",
            |docs| {
                container_mut(docs, "user-service")["readinessProbe"]["failureThreshold"] =
                    1.into();
            },
            "readinessProbe failureThreshold 1",
        ),
        (
            "the readiness probe's timeout",
            "dev",
            |docs| {
                container_mut(docs, "user-service")["readinessProbe"]["timeoutSeconds"] = 2.into();
            },
            "readinessProbe timeoutSeconds 2 is not longer than the readiness checks' own 2 s",
        ),
        // 8. replicas on an autoscaled Deployment.
        (
            "replicas on an autoscaled Deployment",
            "staging",
            |docs| {
                doc_mut(docs, "Deployment", "payment-service")["spec"]["replicas"] = 2.into();
            },
            "Deployment payment-service: sets replicas",
        ),
        // 9. Resource targets, and a Pods metric nothing records.
        (
            "a Resource metric",
            "dev",
            |docs| {
                doc_mut(docs, "HorizontalPodAutoscaler", "user-service")["spec"]["metrics"][0] =
                    yaml(
                        "{type: Resource, resource: {name: cpu, target: {type: Utilization, averageUtilization: 70}}}",
                    );
            },
            "a Resource metric averages the sidecar in",
        ),
        (
            "a Pods metric without its recording rule",
            "dev",
            |docs| {
                doc_mut(docs, "HorizontalPodAutoscaler", "user-service")["spec"]["metrics"]
                    .as_sequence_mut()
                    .unwrap()
                    .push(yaml(
                        "{type: Pods, pods: {metric: {name: grpc_server_started_per_second}, target: {type: AverageValue, averageValue: '500'}}}",
                    ));
            },
            "Pods metric grpc_server_started_per_second is recorded by no rule in this render",
        ),
        // 12. Spread, NetworkPolicy, the down alert.
        (
            "the NetworkPolicy",
            "dev",
            |docs| docs.retain(|d| d["kind"] != "NetworkPolicy"),
            "user-service: no NetworkPolicy selects its pods",
        ),
        (
            "the metrics port opened to every namespace",
            "dev",
            |docs| {
                doc_mut(docs, "NetworkPolicy", "mercato-services")["spec"]["ingress"][1]["from"]
                    [0] = yaml("{namespaceSelector: {}}");
            },
            "NetworkPolicy mercato-services: admits the metrics port of user-service from anywhere",
        ),
        (
            "the down alert as up == 0",
            "production",
            |docs| {
                let rule = docs
                    .iter_mut()
                    .find(|d| d["kind"] == "PrometheusRule")
                    .unwrap();
                rule["spec"]["groups"][1]["rules"][0]["expr"] =
                    "sum by (service) (up{namespace=\"mercato\"}) == 0".into();
            },
            "`up` without absent() never fires once every target is gone",
        ),
        // 13. Administration and service RPCs through the edge.
        (
            "the edge's payment paths",
            "dev",
            |docs| {
                doc_mut(docs, "AuthorizationPolicy", "payment-service")["spec"]["rules"][1]["to"]
                    [0]["operation"]["paths"] = yaml("['/payment.v1.PaymentService/*']");
            },
            "lets the ingress gateway call /payment.v1.PaymentService/Charge",
        ),
        (
            "an edge route by prefix",
            "dev",
            |docs| {
                route_mut(docs, "mercato-public", "user-writes")["match"] =
                    yaml("[{uri: {prefix: /user.v1.UserService/}}]");
            },
            "routes /user.v1.UserService/SetUserStatus at the edge, which is no end-user RPC",
        ),
        // 17. Rollouts that cannot work although their schema is valid.
        (
            "a Rollout's route name",
            "dev+canary+monitoring+vpa+rollout",
            |docs| {
                doc_mut(docs, "Rollout", "order-service")["spec"]["routes"][0]["route"] =
                    "main".into();
            },
            "Rollout order-service: VirtualService order-service has no route named main",
        ),
        (
            "an edge route left out of a Rollout",
            "production+canary+rollout",
            |docs| {
                doc_mut(docs, "Rollout", "order-service")["spec"]["routes"]
                    .as_sequence_mut()
                    .unwrap()
                    .pop();
            },
            "route order-reads of mercato-public sends order-service canary traffic but is not driven",
        ),
        (
            "a Rollout without the canary component's split",
            "production+canary+rollout",
            |docs| {
                route_mut(docs, "payment-service", "default")["route"]
                    .as_sequence_mut()
                    .unwrap()
                    .pop();
            },
            "route default of payment-service does not split one host between subsets stable and canary",
        ),
        (
            "the controller's status rights",
            "production+canary+rollout",
            |docs| {
                let role = doc_mut(docs, "Role", "mercato-rollout");
                role["rules"]
                    .as_sequence_mut()
                    .unwrap()
                    .retain(|r| r["resources"][0] != "rollouts/status");
            },
            "the rollout controller may not patch rollouts/status.mercato.dev user-service",
        ),
        (
            "a canary Deployment missing from the Role",
            "production+canary+rollout",
            |docs| {
                let role = doc_mut(docs, "Role", "mercato-rollout");
                for rule in role["rules"].as_sequence_mut().unwrap() {
                    if let Some(names) = rule["resourceNames"].as_sequence_mut() {
                        names.retain(|n| n != "order-service-canary");
                    }
                }
            },
            "the rollout controller may not patch deployments.apps order-service-canary",
        ),
        (
            "canary pods no scrape sees",
            "dev+canary+monitoring+vpa+rollout",
            |docs| {
                doc_mut(docs, "Service", "user-service")["spec"]["selector"]["version"] =
                    "stable".into();
            },
            "Rollout user-service: no ServiceMonitor scrapes a Service selecting the canary's pods",
        ),
        (
            "a Rollout query on a metric nobody exports",
            "production+canary+rollout",
            |docs| {
                doc_mut(docs, "Rollout", "payment-service")["spec"]["analysis"]
                    .as_sequence_mut()
                    .unwrap()
                    .push(yaml(
                        "{name: saturation, query: 'max(grpc_inflight_requests)', max: 10}",
                    ));
            },
            "Rollout payment-service: check saturation: metric grpc_inflight_requests is not exported",
        ),
        (
            // What deploy/ did until the canary was checked against its stable:
            // the environment patched payment-service by name, so the payment
            // canary ran the simulated provider in production.
            "the payment canary's environment",
            "production+canary",
            |docs| {
                container_mut(docs, "payment-service-canary")["env"]
                    .as_sequence_mut()
                    .unwrap()
                    .retain(|v| v["name"] != "DEPLOYMENT_ENVIRONMENT");
            },
            "payment-service-canary: its pod template differs from payment-service's",
        ),
        (
            "the order canary's background workers",
            "production+canary+rollout",
            |docs| {
                container_mut(docs, "order-service-canary")["env"]
                    .as_sequence_mut()
                    .unwrap()
                    .retain(|v| v["name"] != "BACKGROUND_WORKERS");
            },
            "order-service-canary: runs background workers",
        ),
        (
            "the connection budget (the binaries' default pool, 10 per pod)",
            "production",
            |docs| {
                for name in ["user-service", "order-service", "payment-service"] {
                    container_mut(docs, name)["env"]
                        .as_sequence_mut()
                        .unwrap()
                        .retain(|v| v["name"] != "DATABASE_MAX_CONNECTIONS");
                }
            },
            "Postgres connections (",
        ),
        (
            "the namespace's connection budget",
            "dev",
            |docs| {
                doc_mut(docs, "Namespace", "mercato")["metadata"]["annotations"]
                    .as_mapping_mut()
                    .unwrap()
                    .clear();
            },
            "no mercato.dev/postgres-connections annotation",
        ),
    ];
    for (what, overlay, break_it, expected) in breaks {
        let mut docs = of(overlay);
        break_it(&mut docs);
        let mut problems = check(&docs, facts);
        if overlay.starts_with("production") {
            problems.extend(check_production(&docs));
        }
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "changing {what} in {overlay} went unnoticed; problems: {problems:#?}"
        );
    }

    // 12. Production without its topology spread.
    let mut production = of("production");
    doc_mut(&mut production, "Deployment", "order-service")["spec"]["template"]["spec"]
        .as_mapping_mut()
        .unwrap()
        .remove("topologySpreadConstraints");
    let problems = check_production(&production);
    assert!(
        problems
            .iter()
            .any(|p| p
                .contains("order-service: no topology spread over topology.kubernetes.io/zone")),
        "{problems:#?}"
    );

    // 10. A CRD kind in base again (the VPA was there).
    let mut base = mercato_deploy_check::render_dir(&repo_root().join("deploy/base")).unwrap();
    base.push(yaml(
        "{apiVersion: autoscaling.k8s.io/v1, kind: VerticalPodAutoscaler, metadata: {name: x}}",
    ));
    assert!(needed_api_groups(&base).contains("autoscaling.k8s.io"));

    // 11. The README building a tag the dev overlay does not run.
    let old_readme = readme.replace(
        "-t mercato/<service>-service:dev",
        "-t mercato/<service>-service",
    );
    assert_ne!(
        old_readme, readme,
        "the README builds mercato/<service>-service:dev"
    );
    let problems = check_dev_images(&of("dev"), &old_readme);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("runs mercato/user-service:dev, which the README's docker build")),
        "{problems:#?}"
    );

    // 14, 15. The pipeline's and the image's old mistakes.
    type TextBreak = (&'static str, &'static str, &'static str, bool, &'static str);
    let text_breaks: [TextBreak; 7] = [
        (
            "docker login with -p",
            "--password-stdin",
            "-p \"$CI_REGISTRY_PASSWORD\"",
            false,
            "without --password-stdin",
        ),
        (
            "the registry cache mode",
            ",mode=max",
            "",
            false,
            "no registry cache with mode=max",
        ),
        (
            "builds on merge requests",
            "$CI_PIPELINE_SOURCE == \"merge_request_event\"",
            "$CI_PIPELINE_SOURCE == \"push\"",
            false,
            "merge requests never build the Dockerfile",
        ),
        (
            "the cached cargo tools",
            "paths: [.cargo/bin]",
            "paths: [.cargo/registry]",
            false,
            "rebuilds the tool on every run",
        ),
        (
            "the load run through the gateway",
            "h2load -n",
            "kubectl -n mercato port-forward svc/user-service 19090:9090 & h2load -n",
            false,
            "performance: measures through `kubectl port-forward`",
        ),
        (
            "the arm64 platform",
            "linux/amd64,linux/arm64",
            "linux/amd64",
            false,
            "does not build for linux/arm64",
        ),
        (
            "the Dockerfile's target by architecture",
            "aarch64",
            "x86_64",
            true,
            "Dockerfile: builds for x86_64 only",
        ),
    ];
    for (what, from, to, in_dockerfile, expected) in text_breaks {
        let source = if in_dockerfile { dockerfile } else { pipeline };
        assert!(
            source.contains(from),
            "{what}: {from:?} is not there to break"
        );
        let (pipeline, dockerfile) = if in_dockerfile {
            (pipeline.to_owned(), dockerfile.replace(from, to))
        } else {
            (pipeline.replace(from, to), dockerfile.to_owned())
        };
        let problems = check_pipeline(&pipeline, &dockerfile);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "changing {what} went unnoticed; problems: {problems:#?}"
        );
    }
}
