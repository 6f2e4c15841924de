//! One CreateOrder followed across the three services, each a real child
//! process exporting spans over OTLP/gRPC to a collector in this test, and
//! logging JSON lines to a pipe the test reads.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use mercato_proto::{
    order::v1::{
        OrderStatus, catalog_service_client::CatalogServiceClient,
        order_service_client::OrderServiceClient,
    },
    user::v1::user_service_client::UserServiceClient,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value as AnyValue,
    trace::v1::{Span, span::SpanKind, status::StatusCode},
};
use serde_json::Value;
use tonic::{Request, Response, Status};

use crate::support::{Db, TestDatabase, admin_channel, order_request};

/// A span as exported, with the `service.name` of the process that made it.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    span: Span,
}

impl Exported {
    fn attribute(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => Some(s.clone()),
                AnyValue::IntValue(i) => Some(i.to_string()),
                other => Some(format!("{other:?}")),
            })
    }

    fn status(&self) -> i32 {
        self.span.status.as_ref().map_or(0, |s| s.code)
    }
}

/// The in-test OTLP collector.
#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Exported>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans.into_iter().map(|span| Exported {
                    service: service.clone(),
                    span,
                }));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    async fn start() -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Self::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (collector, addr)
    }

    fn trace(&self, trace_id: &str) -> Vec<Exported> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|e| hex(&e.span.trace_id) == trace_id)
            .cloned()
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A service binary running as a child process, and what it logged.
struct Process {
    child: Child,
    grpc: SocketAddr,
    logs: Arc<Mutex<Vec<Value>>>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// SIGTERM, so the process flushes its spans, then waits for it.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    fn lines_with(&self, key: &str, value: &str) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line[key] == value)
            .cloned()
            .collect()
    }
}

/// The binaries of the user and payment services sit next to this
/// package's `order-service` (`cargo test --workspace` builds them all).
fn binary(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_order-service")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run the workspace tests (scripts/test.sh) or `cargo build --bins` first",
        path.display()
    );
    path
}

async fn spawn(binary: &Path, config: &Path, env: &[(&str, String)]) -> Process {
    let mut command = Command::new(binary);
    command
        .env_clear()
        .env("CONFIG_FILE", config)
        .env("GRPC_ADDR", "127.0.0.1:0")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("REST_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info,mercato_telemetry=debug")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sink = logs.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let json: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            if json["message"]
                .as_str()
                .is_some_and(|m| m.ends_with(" listening"))
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(json["grpc"].as_str().unwrap_or_default().to_owned());
            }
            sink.lock().unwrap().push(json);
        }
    });
    let grpc = tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .expect("service started")
        .unwrap()
        .parse()
        .unwrap();
    Process { child, grpc, logs }
}

/// The three services as child processes on their own Postgres databases,
/// each with `extra` in its environment; the databases and the config
/// live as long as this.
struct Trio {
    user: Process,
    payment: Process,
    order: Process,
    _databases: [TestDatabase; 3],
    _dir: tempfile::TempDir,
}

impl Trio {
    async fn start(extra: &[(&str, String)]) -> Self {
        let databases = [
            TestDatabase::create(Db::Postgres).await,
            TestDatabase::create(Db::Postgres).await,
            TestDatabase::create(Db::Postgres).await,
        ];
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("auth.yaml");
        std::fs::write(&config, mercato_testkit::auth::settings_yaml()).unwrap();
        let env = |i: usize, more: &[(&'static str, String)]| {
            let mut env = vec![(
                "DATABASE_URL",
                databases[i].settings().database_url.expose().to_owned(),
            )];
            env.extend(extra.iter().cloned());
            env.extend(more.iter().cloned());
            env
        };
        let user = spawn(&binary("user-service"), &config, &env(0, &[])).await;
        let payment = spawn(&binary("payment-service"), &config, &env(1, &[])).await;
        let order = spawn(
            Path::new(env!("CARGO_BIN_EXE_order-service")),
            &config,
            &env(
                2,
                &[
                    ("SERVICE_API_KEY", mercato_testkit::auth::service_key()),
                    ("USER_SERVICE_ADDR", user.grpc.to_string()),
                    ("PAYMENT_SERVICE_ADDR", payment.grpc.to_string()),
                    ("ORDER_WAIT_SECS", "15".into()),
                ],
            ),
        )
        .await;
        Self {
            user,
            payment,
            order,
            _databases: databases,
            _dir: dir,
        }
    }
}

fn traceparent(
    trace_id: &str,
    parent: &str,
) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    format!("00-{trace_id}-{parent}-01").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_create_order_is_one_trace_across_three_processes() {
    let (collector, collector_addr) = Collector::start().await;
    let Trio {
        mut user,
        mut payment,
        mut order,
        _databases,
        _dir,
    } = Trio::start(&[(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("http://{collector_addr}"),
    )])
    .await;

    let buyer = UserServiceClient::new(admin_channel(user.grpc).await)
        .create_user(mercato_testkit::fixtures::new_user(
            "traced@example.com",
            "Traced",
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let order_channel = admin_channel(order.grpc).await;
    CatalogServiceClient::new(order_channel.clone())
        .create_product(mercato_testkit::fixtures::new_product(
            "traced-1", "USD", 500, 5,
        ))
        .await
        .unwrap();

    // The caller's own trace context and request id.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = Request::new(order_request(
        "traced-order",
        &buyer.user_id,
        &[("traced-1", 2)],
        "pm_approve",
    ));
    request
        .metadata_mut()
        .insert("traceparent", traceparent(trace_id, caller_span));
    request
        .metadata_mut()
        .insert("x-request-id", "e2e-order-1".parse().unwrap());
    let mut orders = OrderServiceClient::new(order_channel);
    let response = orders.create_order(request).await.unwrap();
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "e2e-order-1",
        "the request id is echoed"
    );
    assert_eq!(
        response.into_inner().order.unwrap().status(),
        OrderStatus::Confirmed
    );

    // A second order, for a user that does not exist: its spans must say ERROR.
    let failed_trace = "0af7651916cd43dd8448eb211c80319c";
    let mut request = Request::new(order_request(
        "traced-order-2",
        &uuid::Uuid::now_v7().to_string(),
        &[("traced-1", 1)],
        "pm_approve",
    ));
    request
        .metadata_mut()
        .insert("traceparent", traceparent(failed_trace, caller_span));
    let failed = orders.create_order(request).await.unwrap().into_inner();
    assert_eq!(failed.order.unwrap().status(), OrderStatus::Cancelled);

    // SIGTERM: each process flushes its batched spans before exiting.
    for process in [&mut order, &mut payment, &mut user] {
        process.stop();
    }

    let spans = collector.trace(trace_id);
    let by_id: HashMap<Vec<u8>, &Exported> =
        spans.iter().map(|e| (e.span.span_id.clone(), e)).collect();
    let find = |service: &str, name: &str, kind: SpanKind| -> &Exported {
        spans
            .iter()
            .find(|e| e.service == service && e.span.name == name && e.span.kind == kind as i32)
            .unwrap_or_else(|| {
                let seen: Vec<_> = spans.iter().map(|e| (&e.service, &e.span.name)).collect();
                panic!("no {kind:?} span {name:?} from {service}; trace has {seen:?}")
            })
    };
    let descends_from = |child: &Exported, ancestor: &Exported| {
        let mut parent = child.span.parent_span_id.clone();
        while let Some(span) = by_id.get(&parent) {
            if span.span.span_id == ancestor.span.span_id {
                return true;
            }
            parent = span.span.parent_span_id.clone();
        }
        false
    };

    let server = find(
        "order-service",
        "order.v1.OrderService/CreateOrder",
        SpanKind::Server,
    );
    assert_eq!(
        hex(&server.span.parent_span_id),
        caller_span,
        "child of the caller's span"
    );
    assert_eq!(
        server.attribute("request_id").as_deref(),
        Some("e2e-order-1")
    );
    assert_eq!(
        server.attribute("rpc.grpc.status_code").as_deref(),
        Some("0")
    );

    for (step, peer_service, method) in [
        (
            "execute validate_user",
            "user-service",
            "user.v1.UserService/GetUser",
        ),
        (
            "execute charge_payment",
            "payment-service",
            "payment.v1.PaymentService/Charge",
        ),
    ] {
        let step_span = find("order-service", step, SpanKind::Internal);
        assert!(
            descends_from(step_span, server),
            "{step} under the order server span"
        );
        let client = find("order-service", method, SpanKind::Client);
        assert!(
            descends_from(client, step_span),
            "{method} client span under {step}"
        );
        let peer = find(peer_service, method, SpanKind::Server);
        assert_eq!(
            peer.span.parent_span_id, client.span.span_id,
            "{peer_service} server span is the child of the client span"
        );
    }
    let charge = find(
        "payment-service",
        "payment.v1.PaymentService/Charge",
        SpanKind::Server,
    );
    let payment_db: Vec<_> = spans
        .iter()
        .filter(|e| {
            e.service == "payment-service"
                && e.attribute("db.system").as_deref() == Some("postgresql")
        })
        .collect();
    assert!(
        !payment_db.is_empty(),
        "payment database spans: {:?}",
        spans
            .iter()
            .filter(|e| e.service == "payment-service")
            .map(|e| (&e.span.name, &e.span.attributes))
            .collect::<Vec<_>>()
    );
    assert!(
        payment_db
            .iter()
            .all(|db| descends_from(db, charge) && db.span.kind == SpanKind::Client as i32)
    );
    let order_db = find("order-service", "INSERT orders", SpanKind::Client);
    assert!(descends_from(order_db, server));
    assert!(
        order_db
            .attribute("order.id")
            .is_some_and(|id| !id.is_empty())
    );
    let cache = find("user-service", "cache.get", SpanKind::Internal);
    assert_eq!(cache.attribute("cache.result").as_deref(), Some("hit"));
    assert!(
        spans.iter().all(|e| e.status() != StatusCode::Error as i32),
        "no errors in the happy trace"
    );

    // The failed order: the client span and the refused step carry ERROR;
    // the user service's NOT_FOUND is the caller's problem, not its own.
    let failed_spans = collector.trace(failed_trace);
    let status_of = |service: &str, name: &str| {
        failed_spans
            .iter()
            .find(|e| e.service == service && e.span.name == name)
            .map(|e| (e.status(), e.attribute("rpc.grpc.status_code")))
            .unwrap_or_else(|| panic!("no {name} span from {service}"))
    };
    assert_eq!(
        status_of("order-service", "user.v1.UserService/GetUser"),
        (StatusCode::Error as i32, Some("5".into()))
    );
    assert_eq!(
        status_of("user-service", "user.v1.UserService/GetUser"),
        (StatusCode::Unset as i32, Some("5".into()))
    );
    assert_eq!(
        status_of("order-service", "execute validate_user").0,
        StatusCode::Error as i32
    );

    // The log lines of the request, in every process, carry its trace id.
    for (process, name) in [(&order, "order"), (&user, "user"), (&payment, "payment")] {
        let lines = process.lines_with("request_id", "e2e-order-1");
        assert!(!lines.is_empty(), "{name} logged the request");
        for line in &lines {
            assert_eq!(line["trace_id"], trace_id, "{name}: {line}");
            assert!(
                line["span_id"].as_str().is_some_and(|s| s.len() == 16),
                "{line}"
            );
            for key in ["timestamp", "level", "message", "target"] {
                assert!(line.get(key).is_some(), "{name} line without {key}: {line}");
            }
        }
    }
    let saga_done = order.lines_with("message", "saga finished");
    assert!(
        saga_done.iter().any(|l| l["trace_id"] == trace_id),
        "the saga's own log line joins the trace: {saga_done:?}"
    );
}

/// The order service's own metrics after one confirmed and one declined
/// order: client calls by peer method and code, orders and sagas by
/// outcome, step durations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_metrics_count_client_calls_orders_and_sagas() {
    use mercato_proto::user::v1::UserStatus;
    use mercato_testkit::metrics::Scrape;

    let mut suite = crate::support::Suite::start(Db::Sqlite, |_| {}).await;
    let buyer = suite.user("metrics@example.com", UserStatus::Active).await;
    suite.product("m-1", 100, 10).await;
    let ok = suite
        .place("m-ok", &buyer, &[("m-1", 1)], "pm_approve")
        .await
        .unwrap();
    assert_eq!(ok.status(), OrderStatus::Confirmed);
    let declined = suite
        .place("m-no", &buyer, &[("m-1", 1)], "pm_decline")
        .await
        .unwrap();
    assert_eq!(declined.status(), OrderStatus::Cancelled);

    let m = Scrape::from(suite.order_metrics.unwrap()).await;
    let expect = |name: &str, labels: &[(&str, &str)], want: f64| {
        assert_eq!(m.value(name, labels), want, "{name} {labels:?}");
    };
    let get_user = [
        ("grpc_service", "user.v1.UserService"),
        ("grpc_method", "GetUser"),
    ];
    let charge = [
        ("grpc_service", "payment.v1.PaymentService"),
        ("grpc_method", "Charge"),
    ];
    expect("grpc_client_started_total", &get_user, 2.0);
    expect(
        "grpc_client_handled_total",
        &[get_user.as_slice(), &[("grpc_code", "OK")]].concat(),
        2.0,
    );
    expect("grpc_client_handling_seconds_count", &get_user, 2.0);
    expect("grpc_client_msg_sent_total", &get_user, 2.0);
    expect("grpc_client_msg_received_total", &get_user, 2.0);
    // A declined charge is an answer (OK with a DECLINED payment), not an
    // error: 2 charges; compensating the declined one settles its key with
    // VoidCharge, never with another Charge.
    expect(
        "grpc_client_handled_total",
        &[charge.as_slice(), &[("grpc_code", "OK")]].concat(),
        2.0,
    );
    expect("grpc_client_handled_total", &charge, 2.0);
    expect(
        "grpc_client_handled_total",
        &[
            ("grpc_service", "payment.v1.PaymentService"),
            ("grpc_method", "VoidCharge"),
            ("grpc_code", "OK"),
        ],
        1.0,
    );

    expect("orders_total", &[("status", "pending")], 2.0);
    expect("orders_total", &[("status", "confirmed")], 1.0);
    expect("orders_total", &[("status", "cancelled")], 1.0);
    expect(
        "sagas_total",
        &[("saga", "order.place"), ("outcome", "completed")],
        1.0,
    );
    expect(
        "sagas_total",
        &[("saga", "order.place"), ("outcome", "compensated")],
        1.0,
    );
    let step = |step, phase, result| {
        [
            ("saga", "order.place"),
            ("step", step),
            ("phase", phase),
            ("result", result),
        ]
    };
    expect(
        "saga_step_duration_seconds_count",
        &step("validate_user", "execute", "ok"),
        2.0,
    );
    expect(
        "saga_step_duration_seconds_count",
        &step("charge_payment", "execute", "ok"),
        1.0,
    );
    expect(
        "saga_step_duration_seconds_count",
        &step("charge_payment", "execute", "refused"),
        1.0,
    );
    expect(
        "saga_step_duration_seconds_count",
        &step("confirm_order", "execute", "ok"),
        1.0,
    );
    expect(
        "saga_step_duration_seconds_count",
        &step("reserve_stock", "compensate", "ok"),
        1.0,
    );
    expect(
        "grpc_server_handled_total",
        &[("grpc_method", "CreateOrder"), ("grpc_code", "OK")],
        2.0,
    );
    assert!(m.value("db_pool_connections", &[("pool", "order")]) >= 1.0);
    assert_eq!(
        m.value("circuit_breaker_state", &[("breaker", "payment")]),
        0.0
    );
}

/// Without an exporter no span is made (the cheap path), yet every log
/// line a call writes, in every process it crosses, carries the call's
/// trace id, a span id and its request id; a call without a traceparent
/// gets a trace id of its own that its peers' lines share too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_exporter_logs_still_join_one_trace_across_three_processes() {
    let Trio {
        user,
        payment,
        order,
        _databases,
        _dir,
    } = Trio::start(&[]).await;
    let buyer = UserServiceClient::new(admin_channel(user.grpc).await)
        .create_user(mercato_testkit::fixtures::new_user(
            "logged@example.com",
            "Logged",
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let order_channel = admin_channel(order.grpc).await;
    CatalogServiceClient::new(order_channel.clone())
        .create_product(mercato_testkit::fixtures::new_product(
            "logged-1", "USD", 500, 5,
        ))
        .await
        .unwrap();
    let mut orders = OrderServiceClient::new(order_channel);
    let place = |id: &str, request_id: &str, trace: Option<&str>| {
        let mut request = Request::new(order_request(
            id,
            &buyer.user_id,
            &[("logged-1", 1)],
            "pm_approve",
        ));
        if let Some(trace_id) = trace {
            request
                .metadata_mut()
                .insert("traceparent", traceparent(trace_id, "00f067aa0ba902b7"));
        }
        request
            .metadata_mut()
            .insert("x-request-id", request_id.parse().unwrap());
        request
    };

    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4737";
    let placed = orders
        .create_order(place("logged-a", "no-export-1", Some(trace_id)))
        .await
        .unwrap();
    assert_eq!(
        placed.metadata().get("x-request-id").unwrap(),
        "no-export-1"
    );
    assert_eq!(
        placed.into_inner().order.unwrap().status(),
        OrderStatus::Confirmed
    );
    orders
        .create_order(place("logged-b", "no-export-2", None))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // the pipes drain

    let mut generated = None;
    for (request_id, expected) in [("no-export-1", Some(trace_id)), ("no-export-2", None)] {
        for (process, name) in [(&order, "order"), (&user, "user"), (&payment, "payment")] {
            let lines = process.lines_with("request_id", request_id);
            assert!(!lines.is_empty(), "{name} logged {request_id}");
            for line in &lines {
                let trace = line["trace_id"].as_str().unwrap_or_default().to_owned();
                assert_eq!(trace.len(), 32, "{name}: {line}");
                assert_ne!(trace, "0".repeat(32), "{name}: {line}");
                match expected {
                    Some(expected) => assert_eq!(trace, expected, "{name}: {line}"),
                    None => assert_eq!(
                        generated.get_or_insert(trace.clone()),
                        &trace,
                        "{name}: {line}"
                    ),
                }
                assert!(
                    line["span_id"].as_str().is_some_and(|s| s.len() == 16),
                    "{line}"
                );
            }
        }
    }
    assert_ne!(
        generated.as_deref(),
        Some(trace_id),
        "a new trace for a call without a parent"
    );
    let saga_done = order.lines_with("message", "saga finished");
    assert!(
        saga_done
            .iter()
            .any(|l| l["trace_id"] == trace_id && l["request_id"] == "no-export-1"),
        "the saga's log line keeps the call's ids: {saga_done:?}"
    );
}
