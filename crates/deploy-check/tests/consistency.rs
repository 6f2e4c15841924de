//! deploy/ against the code: every overlay rendered by `kubectl kustomize`
//! and checked with facts gathered from a real server — the suite running
//! in one process on SQLite, after real calls — and the same checks shown
//! to fail on manifests broken on purpose.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use mercato_deploy_check::{Facts, check, render};
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
        environment: mercato_telemetry::READ_FROM_ENVIRONMENT
            .iter()
            .chain(&["CONFIG_FILE"])
            .map(|s| (*s).to_owned())
            .collect(),
        environment_prefixes: mercato_telemetry::READ_FROM_ENVIRONMENT_PREFIXES
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        metrics: exported_names(&body),
        // Prometheus' own scrape health and kube-state-metrics.
        external_metrics: ["up", "kube_pod_container_status_restarts_total"]
            .into_iter()
            .map(str::to_owned)
            .collect(),
        grpc_paths: mercato_platform::grpc_methods()
            .iter()
            .map(|m| format!("/{}", m.full_name))
            .collect(),
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_overlay_agrees_with_the_code() {
    let rendered: Vec<(&str, Vec<Value>)> = OVERLAYS
        .iter()
        .map(|o| (*o, render(o).unwrap_or_else(|e| panic!("{e}"))))
        .collect();
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

    for (overlay, docs) in &rendered {
        let problems = check(docs, &facts);
        assert!(
            problems.is_empty(),
            "deploy/overlays/{overlay} disagrees with the code:\n{}",
            problems.join("\n")
        );
    }

    // The same checks on manifests broken on purpose: each break is reported.
    let (_, dev) = &rendered[0];
    let deployment = |docs: &[Value]| -> usize {
        docs.iter()
            .position(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "user-service")
            .unwrap()
    };
    type Break = (&'static str, fn(&mut Vec<Value>, usize), &'static str);
    let breaks: [Break; 9] = [
        (
            "the read-only root filesystem",
            |docs, i| {
                docs[i]["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] =
                    false.into();
            },
            "missing readOnlyRootFilesystem",
        ),
        (
            "a probe path",
            |docs, i| {
                docs[i]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
                    ["path"] = "/healthz".into();
            },
            "readinessProbe path /healthz is not served",
        ),
        (
            "a container port",
            |docs, i| {
                docs[i]["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] =
                    9091.into();
            },
            "container port grpc is 9091, the binary listens on 9090",
        ),
        (
            "an env var name",
            |docs, i| {
                let env = docs[i]["spec"]["template"]["spec"]["containers"][0]["env"]
                    .as_sequence_mut()
                    .unwrap();
                env[0]["name"] = "DATABSE_URL".into();
            },
            "env DATABSE_URL is not a setting",
        ),
        (
            "the grace period",
            |docs, i| {
                docs[i]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 10.into();
            },
            "does not fit in terminationGracePeriodSeconds 10",
        ),
        (
            "an alert's metric",
            |docs, _| {
                let rule = docs
                    .iter_mut()
                    .find(|d| d["kind"] == "PrometheusRule")
                    .unwrap();
                rule["spec"]["groups"][0]["rules"][1]["expr"] =
                    "rate(grpc_server_handeld_total[5m]) > 1".into();
            },
            "metric grpc_server_handeld_total is not exported",
        ),
        (
            "a config file key",
            |docs, _| {
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
            |docs, _| {
                let policy = docs
                    .iter_mut()
                    .find(|d| {
                        d["kind"] == "AuthorizationPolicy"
                            && d["metadata"]["name"] == "payment-service"
                    })
                    .unwrap();
                policy["spec"]["rules"][0]["to"][0]["operation"]["paths"][0] =
                    "/payment.v1.PaymentService/Charg".into();
            },
            "path /payment.v1.PaymentService/Charg is no served method",
        ),
        (
            "a VPA target",
            |docs, _| {
                let vpa = docs
                    .iter_mut()
                    .find(|d| d["kind"] == "VerticalPodAutoscaler")
                    .unwrap();
                vpa["spec"]["targetRef"]["name"] = "user-svc".into();
            },
            "targets Deployment \"user-svc\", which is not rendered",
        ),
    ];
    for (what, break_it, expected) in breaks {
        let mut docs = dev.clone();
        let i = deployment(&mut docs);

        break_it(&mut docs, i);
        let problems = check(&docs, &facts);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "changing {what} went unnoticed; problems: {problems:#?}"
        );
    }
}
