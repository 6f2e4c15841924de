//! The REST side of `mercato up` against its gRPC side: every RPC with a
//! `google.api.http` rule called both ways gives the same answer (a table
//! that must cover every route the descriptors declare), errors map to
//! their HTTP statuses with a google.rpc.Status body, and bad requests are
//! 4xx, never 500.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{collections::BTreeSet, str::FromStr};

use support::Raw;

use bytes::Bytes;
use mercato_rest::DescriptorPool;
use prost::Message;
use prost_reflect::{DynamicMessage, MethodDescriptor, SerializeOptions};
use serde_json::{Value, json};
use tonic::{Status, transport::Channel};

const SERVICES: [&str; 5] = [
    "user.v1.UserService",
    "order.v1.OrderService",
    "order.v1.CatalogService",
    "payment.v1.PaymentService",
    "experiment.v1.ExperimentService",
];

struct Both {
    http: reqwest::Client,
    rest: String,
    channel: Channel,
    pool: DescriptorPool,
    /// Methods called both ways so far.
    covered: BTreeSet<String>,
}

fn to_json(message: &DynamicMessage) -> Value {
    let mut out = serde_json::Serializer::new(Vec::new());
    message
        .serialize_with_options(
            &mut out,
            &SerializeOptions::new().skip_default_fields(false),
        )
        .unwrap();
    serde_json::from_slice(&out.into_inner()).unwrap()
}

/// Blanks the values of `keys` anywhere in `value` (ids and times that two
/// separate writes cannot share).
fn blank(value: &mut Value, keys: &[&str]) {
    match value {
        Value::Object(fields) => {
            for (key, inner) in fields.iter_mut() {
                if keys.contains(&key.as_str()) {
                    *inner = json!("…");
                } else {
                    blank(inner, keys);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| blank(v, keys)),
        _ => {}
    }
}

impl Both {
    fn method(&self, full: &str) -> MethodDescriptor {
        let (service, method) = full.rsplit_once('.').unwrap();
        self.pool
            .get_service_by_name(service)
            .unwrap_or_else(|| panic!("no service {service}"))
            .methods()
            .find(|m| m.name() == method)
            .unwrap_or_else(|| panic!("no method {full}"))
    }

    async fn rest(
        &self,
        token: Option<&str>,
        verb: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(
            reqwest::Method::from_str(verb).unwrap(),
            format!("{}{path}", self.rest),
        );
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{verb} {path}: not JSON ({e}): {text}"));
        (status, value)
    }

    fn grpc_request(
        &self,
        method: &MethodDescriptor,
        token: &str,
        request: &Value,
    ) -> tonic::Request<Bytes> {
        let message = DynamicMessage::deserialize(method.input(), request.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", method.full_name()));
        let mut call = tonic::Request::new(Bytes::from(message.encode_to_vec()));
        call.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        call
    }

    async fn grpc(&self, full: &str, token: &str, request: &Value) -> Result<Value, Status> {
        let method = self.method(full);
        let mut client = tonic::client::Grpc::new(self.channel.clone());
        client.ready().await.unwrap();
        let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
        let answer = client
            .unary(
                self.grpc_request(&method, token, request),
                http::uri::PathAndQuery::from_str(&path).unwrap(),
                Raw,
            )
            .await?;
        Ok(to_json(
            &DynamicMessage::decode(method.output(), answer.into_inner()).unwrap(),
        ))
    }

    /// Calls `full` over REST and over gRPC; the answers, with `volatile`
    /// keys blanked, must be equal. Returns the REST answer.
    async fn same(
        &mut self,
        full: &str,
        token: &str,
        (verb, path, body): (&str, &str, Option<Value>),
        grpc: Value,
        volatile: &[&str],
    ) -> Value {
        let (status, rest) = self.rest(Some(token), verb, path, body.as_ref()).await;
        assert_eq!(status, 200, "{full} over REST ({verb} {path}): {rest}");
        let grpc = self
            .grpc(full, token, &grpc)
            .await
            .unwrap_or_else(|s| panic!("{full} over gRPC: {s:?}"));
        let (mut a, mut b) = (rest.clone(), grpc);
        blank(&mut a, volatile);
        blank(&mut b, volatile);
        assert_eq!(a, b, "{full}: REST and gRPC answers differ");
        self.covered.insert(full.to_owned());
        rest
    }
}

fn token(up: &support::Up, sub: &str, role: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mercato"))
        .args(["token", "--sub", sub, "--role", role, "--data-dir"])
        .arg(up.data.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn both(up: &support::Up) -> Both {
    let channel = Channel::from_shared(format!("http://{}", up.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Both {
        http: reqwest::Client::new(),
        rest: up.rest.clone(),
        channel,
        pool: mercato_rest::pool(&[
            mercato_proto::FILE_DESCRIPTOR_SET,
            tonic_types::pb::FILE_DESCRIPTOR_SET,
        ])
        .unwrap(),
        covered: BTreeSet::new(),
    }
}

fn id(value: &Value, pointer: &str) -> String {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no {pointer} in {value}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_the_same_over_rest_and_grpc() {
    let mut up = support::up().await;
    let admin = up.token.clone();
    let service = token(&up, "order-service", "service");
    let mut t = both(&up).await;

    // user.v1.UserService
    let created = t
        .same(
            "user.v1.UserService.CreateUser",
            &admin,
            ("POST", "/v1/users", Some(json!({"email": "rest@example.com", "fullName": "Ada", "preferences": {"language": "en"}}))),
            json!({"email": "grpc@example.com", "fullName": "Ada", "preferences": {"language": "en"}}),
            &["userId", "email", "createdAt", "updatedAt"],
        )
        .await;
    let user = id(&created, "/user/userId");
    let other = t
        .grpc(
            "user.v1.UserService.GetUser",
            &admin,
            &json!({"userId": user}),
        )
        .await
        .unwrap();
    assert_eq!(other["user"], created["user"], "REST's user read over gRPC");
    let listed = t
        .grpc("user.v1.UserService.ListUsers", &admin, &json!({}))
        .await
        .unwrap();
    let second = listed["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "grpc@example.com")
        .map(|u| u["userId"].as_str().unwrap().to_owned())
        .unwrap();
    t.same(
        "user.v1.UserService.GetUser",
        &admin,
        ("GET", &format!("/v1/users/{user}"), None),
        json!({"userId": user}),
        &[],
    )
    .await;
    t.same(
        "user.v1.UserService.UpdateUser",
        &admin,
        (
            "PATCH",
            &format!("/v1/users/{user}"),
            Some(json!({"fullName": "Ada King", "updateMask": "fullName"})),
        ),
        json!({"userId": user, "fullName": "Ada King", "updateMask": "fullName"}),
        &["updatedAt"],
    )
    .await;
    t.same(
        "user.v1.UserService.ListUsers",
        &admin,
        ("GET", "/v1/users?pageSize=10", None),
        json!({"pageSize": 10}),
        &[],
    )
    .await;
    t.same(
        "user.v1.UserService.SetUserStatus",
        &admin,
        (
            "POST",
            &format!("/v1/users/{second}:setStatus"),
            Some(json!({"status": "USER_STATUS_SUSPENDED"})),
        ),
        json!({"userId": second, "status": "USER_STATUS_SUSPENDED"}),
        &["updatedAt"],
    )
    .await;
    t.same(
        "user.v1.UserService.DeleteUser",
        &admin,
        ("DELETE", &format!("/v1/users/{second}"), None),
        json!({"userId": second}),
        &["updatedAt"],
    )
    .await;
    // The stream's first message: the replayed user.created.
    let response = t
        .http
        .get(format!(
            "{}/v1/users/{user}/activity:stream?fromTime=2000-01-01T00:00:00Z",
            t.rest
        ))
        .header("authorization", format!("Bearer {admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut body = response.bytes_stream();
    let mut buffer = Vec::new();
    while !buffer.contains(&b'\n') {
        use futures_util::StreamExt;
        buffer.extend_from_slice(&body.next().await.unwrap().unwrap());
    }
    let line = buffer.split(|b| *b == b'\n').next().unwrap();
    let rest_event: Value = serde_json::from_slice(line).unwrap();
    let method = t.method("user.v1.UserService.StreamUserActivity");
    let mut client = tonic::client::Grpc::new(t.channel.clone());
    client.ready().await.unwrap();
    let mut stream = client
        .server_streaming(
            t.grpc_request(
                &method,
                &admin,
                &json!({"userId": user, "fromTime": "2000-01-01T00:00:00Z"}),
            ),
            http::uri::PathAndQuery::from_static("/user.v1.UserService/StreamUserActivity"),
            Raw,
        )
        .await
        .unwrap()
        .into_inner();
    let grpc_event = to_json(
        &DynamicMessage::decode(method.output(), stream.message().await.unwrap().unwrap()).unwrap(),
    );
    assert_eq!(rest_event, grpc_event);
    assert_eq!(rest_event["eventType"], "user.created");
    t.covered
        .insert("user.v1.UserService.StreamUserActivity".into());

    let key = t
        .same(
            "user.v1.UserService.CreateApiKey",
            &admin,
            ("POST", "/v1/apiKeys", Some(json!({"owner": "ci", "roles": ["user"], "ttlSeconds": "3600", "ratePerSec": 5}))),
            json!({"owner": "ci", "roles": ["user"], "ttlSeconds": "3600", "ratePerSec": 5}),
            &["apiKey", "keyId", "createdAt", "expiresAt"],
        )
        .await;
    let key_id = id(&key, "/key/keyId");
    t.same(
        "user.v1.UserService.ListApiKeys",
        &admin,
        ("GET", "/v1/apiKeys?pageSize=10", None),
        json!({"pageSize": 10}),
        &[],
    )
    .await;
    t.same(
        "user.v1.UserService.RevokeApiKey",
        &admin,
        (
            "POST",
            &format!("/v1/apiKeys/{key_id}:revoke"),
            Some(json!({})),
        ),
        json!({"keyId": key_id}),
        &[],
    )
    .await;

    // order.v1.CatalogService
    let price = json!({"currencyCode": "EUR", "amountMinor": "1999"});
    let product = t
        .same(
            "order.v1.CatalogService.CreateProduct",
            &admin,
            (
                "POST",
                "/v1/products",
                Some(json!({"name": "Lamp", "price": price, "stock": "5"})),
            ),
            json!({"product": {"name": "Lamp", "price": price, "stock": "5"}}),
            &["productId", "createdAt", "updatedAt"],
        )
        .await;
    let product = id(&product, "/product/productId");
    t.same(
        "order.v1.CatalogService.GetProduct",
        &admin,
        ("GET", &format!("/v1/products/{product}"), None),
        json!({"productId": product}),
        &[],
    )
    .await;
    t.same(
        "order.v1.CatalogService.ListProducts",
        &admin,
        ("GET", "/v1/products?pageSize=10", None),
        json!({"pageSize": 10}),
        &[],
    )
    .await;
    t.same(
        "order.v1.CatalogService.AdjustStock",
        &admin,
        (
            "POST",
            &format!("/v1/products/{product}:adjustStock"),
            Some(json!({"delta": "2"})),
        ),
        json!({"productId": product, "delta": "2"}),
        &["stock", "updatedAt"],
    )
    .await;

    // order.v1.OrderService: the same request id is the same order.
    let order_request = json!({"requestId": "rest-order-1", "userId": user, "items": [{"productId": product, "quantity": 1}], "paymentMethod": "pm_approve"});
    let order = t
        .same(
            "order.v1.OrderService.CreateOrder",
            &admin,
            ("POST", "/v1/orders", Some(order_request.clone())),
            order_request,
            &[],
        )
        .await;
    assert_eq!(
        order["order"]["status"], "ORDER_STATUS_CONFIRMED",
        "{order}"
    );
    let order_id = id(&order, "/order/orderId");
    t.same(
        "order.v1.OrderService.GetOrder",
        &admin,
        ("GET", &format!("/v1/orders/{order_id}"), None),
        json!({"orderId": order_id}),
        &[],
    )
    .await;
    t.same(
        "order.v1.OrderService.ListOrders",
        &admin,
        ("GET", &format!("/v1/orders?userId={user}"), None),
        json!({"userId": user}),
        &[],
    )
    .await;

    // payment.v1.PaymentService (service RPCs with a service token).
    t.same(
        "payment.v1.PaymentService.ListPayments",
        &admin,
        ("GET", &format!("/v1/payments?orderId={order_id}"), None),
        json!({"orderId": order_id}),
        &[],
    )
    .await;
    let charge = json!({"idempotencyKey": "rest-charge-1", "orderId": order_id, "userId": user, "amount": {"currencyCode": "EUR", "amountMinor": "500"}, "paymentMethod": "pm_approve"});
    let payment = t
        .same(
            "payment.v1.PaymentService.Charge",
            &service,
            ("POST", "/v1/payments:charge", Some(charge.clone())),
            charge,
            &[],
        )
        .await;
    let payment = id(&payment, "/payment/paymentId");
    t.same(
        "payment.v1.PaymentService.GetPayment",
        &admin,
        ("GET", &format!("/v1/payments/{payment}"), None),
        json!({"paymentId": payment}),
        &[],
    )
    .await;
    let refund = json!({"idempotencyKey": "rest-refund-1", "amount": {"currencyCode": "EUR", "amountMinor": "200"}});
    let mut grpc_refund = refund.clone();
    grpc_refund["paymentId"] = json!(payment);
    t.same(
        "payment.v1.PaymentService.Refund",
        &service,
        (
            "POST",
            &format!("/v1/payments/{payment}:refund"),
            Some(refund),
        ),
        grpc_refund,
        &[],
    )
    .await;
    t.same(
        "payment.v1.PaymentService.VoidCharge",
        &service,
        (
            "POST",
            "/v1/payments:void",
            Some(json!({"idempotencyKey": "never-charged"})),
        ),
        json!({"idempotencyKey": "never-charged"}),
        &[],
    )
    .await;
    // Reconciliation (admins): the default window ends two leases ago,
    // before this test's payments: its bounds move with the clock.
    let reconciled = t
        .same(
            "payment.v1.PaymentService.Reconcile",
            &admin,
            ("POST", "/v1/payments:reconcile", Some(json!({}))),
            json!({}),
            &["startTime", "endTime"],
        )
        .await;
    assert!(
        reconciled["mismatches"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{reconciled}"
    );
    t.same(
        "order.v1.OrderService.CancelOrder",
        &admin,
        (
            "POST",
            &format!("/v1/orders/{order_id}:cancel"),
            Some(json!({"reason": "changed my mind"})),
        ),
        json!({"orderId": order_id, "reason": "changed my mind"}),
        &["updatedAt"],
    )
    .await;

    // experiment.v1.ExperimentService
    let experiment = |key: &str| json!({"key": key, "name": "Page size", "variants": [{"key": "control", "weight": 50}, {"key": "large", "weight": 50, "config": {"page_size": 50}}], "trafficPercent": 100});
    let volatile = ["key", "salt", "createTime", "updateTime"];
    t.same(
        "experiment.v1.ExperimentService.CreateExperiment",
        &admin,
        ("POST", "/v1/experiments", Some(experiment("rest-exp"))),
        json!({"experiment": experiment("grpc-exp")}),
        &volatile,
    )
    .await;
    t.same(
        "experiment.v1.ExperimentService.GetExperiment",
        &admin,
        ("GET", "/v1/experiments/rest-exp", None),
        json!({"key": "rest-exp"}),
        &[],
    )
    .await;
    t.same(
        "experiment.v1.ExperimentService.UpdateExperiment",
        &admin,
        ("PATCH", "/v1/experiments/rest-exp?updateMask=trafficPercent", Some(json!({"trafficPercent": 80}))),
        json!({"experiment": {"key": "grpc-exp", "trafficPercent": 80}, "updateMask": "trafficPercent"}),
        &volatile,
    )
    .await;
    t.same(
        "experiment.v1.ExperimentService.ListExperiments",
        &admin,
        ("GET", "/v1/experiments?pageSize=10", None),
        json!({"pageSize": 10}),
        &[],
    )
    .await;
    t.same(
        "experiment.v1.ExperimentService.SetExperimentStatus",
        &admin,
        (
            "POST",
            "/v1/experiments/rest-exp:setStatus",
            Some(json!({"status": "EXPERIMENT_STATUS_RUNNING"})),
        ),
        json!({"key": "grpc-exp", "status": "EXPERIMENT_STATUS_RUNNING"}),
        &volatile,
    )
    .await;
    t.same(
        "experiment.v1.ExperimentService.GetAssignment",
        &admin,
        ("GET", "/v1/experiments/rest-exp/assignments/u-42?attributes.country=DE&attributes.segments=beta&attributes.segments=vip", None),
        json!({"experimentKey": "rest-exp", "userId": "u-42", "attributes": {"country": "DE", "segments": ["beta", "vip"]}}),
        &[],
    )
    .await;
    t.same(
        "experiment.v1.ExperimentService.TrackEvent",
        &admin,
        ("POST", "/v1/experiments/rest-exp/events", Some(json!({"userId": "u-42", "eventName": "purchase", "value": 1.5}))),
        json!({"experimentKey": "rest-exp", "userId": "u-42", "eventName": "purchase", "value": 1.5}),
        &[],
    )
    .await;
    t.same(
        "experiment.v1.ExperimentService.GetResults",
        &admin,
        (
            "GET",
            "/v1/experiments/rest-exp/results?eventName=purchase",
            None,
        ),
        json!({"experimentKey": "rest-exp", "eventName": "purchase"}),
        &[],
    )
    .await;

    // The same telemetry: the REST calls are counted as the gRPC ones are
    // (GetResults was called once each way).
    let metrics = up
        .banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("metrics"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let scrape = t
        .http
        .get(&metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let handled = scrape
        .lines()
        .find(|l| {
            l.starts_with("grpc_server_handled_total{")
                && l.contains(r#"grpc_method="GetResults""#)
                && l.contains(r#"grpc_code="OK""#)
        })
        .unwrap_or_else(|| panic!("GetResults not counted:\n{scrape}"));
    assert!(handled.ends_with(" 2"), "{handled}");

    // The table covers every route the descriptors declare.
    let declared: BTreeSet<String> = mercato_rest::bindings(&t.pool, &SERVICES)
        .unwrap()
        .iter()
        .map(|b| b.method.full_name().to_owned())
        .collect();
    assert_eq!(declared.len(), 32, "{declared:?}");
    assert_eq!(t.covered, declared, "methods not called both ways");
    up.child.kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_map_to_http_statuses_and_bad_requests_are_never_500() {
    let mut up = support::up().await;
    let admin = up.token.clone();
    let user_token = token(&up, "someone", "user");
    let t = both(&up).await;

    // INVALID_ARGUMENT → 400 with the field violations visible.
    let (status, body) = t
        .rest(
            Some(&admin),
            "POST",
            "/v1/users",
            Some(&json!({"email": "bad", "fullName": ""})),
        )
        .await;
    assert_eq!((status, body["code"].as_i64()), (400, Some(3)), "{body}");
    assert_eq!(
        body["details"][0]["@type"],
        "type.googleapis.com/google.rpc.BadRequest"
    );
    let fields: Vec<&str> = body["details"][0]["fieldViolations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["email", "full_name"], "{body}");

    // (what, token, GET path, HTTP status, gRPC code)
    let cases = [
        ("UNAUTHENTICATED", None, "/v1/users", 401, 16),
        ("PERMISSION_DENIED", Some(&user_token), "/v1/users", 403, 7),
        (
            "NOT_FOUND",
            Some(&admin),
            "/v1/users/0190b2a4-0000-7000-8000-000000000000",
            404,
            5,
        ),
    ];
    for (what, token, path, http, code) in cases {
        let (status, answer) = t.rest(token.map(String::as_str), "GET", path, None).await;
        assert_eq!(
            (status, answer["code"].as_i64()),
            (http, Some(code)),
            "{what}: {answer}"
        );
        assert!(
            answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {answer}"
        );
    }
    // ALREADY_EXISTS → 409.
    let user = json!({"email": "twice@example.com", "fullName": "Twice"});
    assert_eq!(
        t.rest(Some(&admin), "POST", "/v1/users", Some(&user))
            .await
            .0,
        200
    );
    let (status, answer) = t.rest(Some(&admin), "POST", "/v1/users", Some(&user)).await;
    assert_eq!(
        (status, answer["code"].as_i64()),
        (409, Some(6)),
        "{answer}"
    );
    // FAILED_PRECONDITION → 400 (AIP-193: the client must change the state first).
    let experiment = json!({"key": "frozen", "name": "Frozen", "variants": [{"key": "a", "weight": 50}, {"key": "b", "weight": 50}], "trafficPercent": 100});
    assert_eq!(
        t.rest(Some(&admin), "POST", "/v1/experiments", Some(&experiment))
            .await
            .0,
        200
    );
    let running = json!({"status": "EXPERIMENT_STATUS_RUNNING"});
    assert_eq!(
        t.rest(
            Some(&admin),
            "POST",
            "/v1/experiments/frozen:setStatus",
            Some(&running)
        )
        .await
        .0,
        200
    );
    let (status, answer) = t
        .rest(
            Some(&admin),
            "PATCH",
            "/v1/experiments/frozen?updateMask=variants",
            Some(&json!({"variants": [{"key": "a", "weight": 10}, {"key": "b", "weight": 90}]})),
        )
        .await;
    assert_eq!(
        (status, answer["code"].as_i64()),
        (400, Some(9)),
        "{answer}"
    );
    // RESOURCE_EXHAUSTED → 429: an API key limited to one call a second.
    let (_, key) = t
        .rest(
            Some(&admin),
            "POST",
            "/v1/apiKeys",
            Some(&json!({"owner": "slow", "roles": ["user"], "ratePerSec": 1})),
        )
        .await;
    let secret = id(&key, "/apiKey");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = t
            .http
            .get(format!("{}/v1/products?pageSize=1", t.rest))
            .header("x-api-key", &secret)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        if status == 429 {
            assert_eq!(body["code"], 8, "{body}");
        }
        statuses.push(status);
    }
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");

    // Bad requests: 4xx with a google.rpc.Status body, never 500.
    let huge = json!({"email": "x".repeat(2 * 1024 * 1024), "fullName": "Huge"});
    let bad: Vec<(&str, &str, &str, Option<String>, u16)> = vec![
        (
            "malformed JSON",
            "POST",
            "/v1/users",
            Some("{\"email\":".into()),
            400,
        ),
        (
            "not an object",
            "POST",
            "/v1/users",
            Some("[1, 2]".into()),
            400,
        ),
        (
            "unknown field",
            "POST",
            "/v1/users",
            Some(r#"{"emal": "a@b.c"}"#.into()),
            400,
        ),
        (
            "wrong type",
            "POST",
            "/v1/users",
            Some(r#"{"email": 5}"#.into()),
            400,
        ),
        (
            "wrong enum",
            "POST",
            "/v1/users/x:setStatus",
            Some(r#"{"status": "SLEEPY"}"#.into()),
            400,
        ),
        (
            "number not a number",
            "GET",
            "/v1/users?pageSize=many",
            None,
            400,
        ),
        (
            "unknown query parameter",
            "GET",
            "/v1/users?color=red",
            None,
            400,
        ),
        (
            "a body where none is taken",
            "GET",
            "/v1/users",
            Some("{}".into()),
            400,
        ),
        (
            "query parameters with body *",
            "POST",
            "/v1/users?email=a@b.c",
            Some("{}".into()),
            400,
        ),
        (
            "bad percent-encoding",
            "GET",
            "/v1/users?pageSize=%zz",
            None,
            400,
        ),
        (
            "a bool that is not",
            "GET",
            "/v1/experiments/k/assignments/u?attributes.segments=a&attributes.country=1",
            None,
            404,
        ),
        (
            "huge body",
            "POST",
            "/v1/users",
            Some(huge.to_string()),
            413,
        ),
        ("no route", "GET", "/v1/nothing", None, 404),
        ("wrong method", "PUT", "/v1/users", None, 405),
    ];
    for (what, verb, path, body, expected) in bad {
        let mut request = t
            .http
            .request(
                reqwest::Method::from_str(verb).unwrap(),
                format!("{}{path}", t.rest),
            )
            .header("authorization", format!("Bearer {admin}"));
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(status, expected, "{what}: {text}");
        let answer: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: {text}"));
        assert!(
            answer["code"].is_i64() && answer["message"].is_string(),
            "{what}: {text}"
        );
    }
    // The OpenAPI document: served at /openapi.json, printed by `mercato
    // openapi`, one operation per route.
    let (status, served) = t.rest(None, "GET", "/openapi.json", None).await;
    assert_eq!(status, 200);
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_mercato"))
        .arg("openapi")
        .output()
        .unwrap();
    assert!(printed.status.success());
    let printed: Value = serde_json::from_slice(&printed.stdout).unwrap();
    assert_eq!(served, printed);
    let operations: usize = served["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(
        (served["openapi"].as_str(), operations),
        (Some("3.1.0"), 32)
    );
    // The server still answers afterwards.
    assert_eq!(
        t.rest(Some(&admin), "GET", "/v1/users?pageSize=1", None)
            .await
            .0,
        200
    );
    up.child.kill().unwrap();
}

/// The REST gateway hands the client's address to the auth layer: a
/// client that keeps failing authentication (20 failures, the shipped
/// budget) gets 429 with RetryInfo for fresh credentials, while a client
/// at another address is still checked and admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_over_rest_are_limited_per_client_address() {
    let up = support::up().await;
    let fresh = token(&up, "rest-peer", "user");
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .unwrap()
    };
    let mut failing = both(&up).await;
    failing.http = from([127, 0, 0, 2]);
    let forged = format!("{}x", &fresh[..fresh.len() - 1]);
    for i in 0..20 {
        let (status, _) = failing
            .rest(Some(&forged), "GET", "/v1/users/rest-peer", None)
            .await;
        assert_eq!(status, 401, "failure {i}");
    }
    let (status, body) = failing
        .rest(Some(&fresh), "GET", "/v1/users/rest-peer", None)
        .await;
    assert_eq!((status, body["code"].as_i64()), (429, Some(8)), "{body}");
    assert!(
        body["details"].as_array().is_some_and(|d| d
            .iter()
            .any(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")),
        "{body}"
    );
    failing.http = from([127, 0, 0, 3]);
    let (status, body) = failing
        .rest(Some(&fresh), "GET", "/v1/users/rest-peer", None)
        .await;
    assert_ne!(status, 429, "another address is checked: {body}");
    assert_ne!(status, 401, "and admitted: {body}");
}
