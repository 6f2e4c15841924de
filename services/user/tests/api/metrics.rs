//! The grpc-ecosystem metrics, read back from `/metrics` after a known
//! sequence of calls: exact counts, codes by their Go names, and label
//! values that never come from request data.

use std::{collections::BTreeSet, time::UNIX_EPOCH};

use mercato_proto::user::v1::{
    CreateUserRequest, GetUserRequest, SetUserStatusRequest, StreamUserActivityRequest, UserStatus,
};
use mercato_telemetry::grpc::code_name;
use mercato_testkit::metrics::Scrape;
use tonic::{Code, Request, codegen::http::uri::PathAndQuery, transport::Channel};

use crate::{
    crud::create,
    helpers::{Db, RedisMode, TestApp, TestDatabase, channel, eventually},
};

/// Calls `path` (a method no server knows) with a GetUser body.
async fn call_unknown(channel: Channel, path: &'static str) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<GetUserRequest, GetUserRequest>::default();
    grpc.unary(
        Request::new(GetUserRequest {
            user_id: "x".into(),
        }),
        PathAndQuery::from_static(path),
        codec,
    )
    .await
    .map(|_| Code::Ok)
    .unwrap_or_else(|s| s.code())
}

fn code_of<T>(result: Result<T, tonic::Status>) -> Code {
    result.map(|_| Code::Ok).unwrap_or_else(|s| s.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_metrics_count_a_known_sequence_of_calls_exactly() {
    let database = TestDatabase::create(Db::Sqlite).await;
    let mut app = TestApp::spawn(&database, RedisMode::InProcess).await;

    let a = create(&mut app, "a@example.com", "A").await;
    let b = create(&mut app, "b@example.com", "B").await;
    create(&mut app, "c@example.com", "C").await;
    let invalid = app
        .client
        .create_user(CreateUserRequest {
            email: "not-an-email".into(),
            full_name: "X".into(),
            preferences: None,
        })
        .await;
    assert_eq!(code_of(invalid), Code::InvalidArgument);
    for id in [&a.user_id, &b.user_id] {
        let got = app
            .client
            .get_user(GetUserRequest {
                user_id: id.clone(),
            })
            .await;
        assert_eq!(code_of(got), Code::Ok);
    }
    let missing = app
        .client
        .get_user(GetUserRequest {
            user_id: uuid::Uuid::now_v7().to_string(),
        })
        .await;
    assert_eq!(code_of(missing), Code::NotFound);
    let anonymous = mercato_proto::user::v1::user_service_client::UserServiceClient::new(
        channel(app.grpc_addr).await,
    )
    .get_user(GetUserRequest {
        user_id: a.user_id.clone(),
    })
    .await;
    assert_eq!(code_of(anonymous), Code::Unauthenticated);
    for status in [UserStatus::Suspended, UserStatus::Active] {
        let set = app
            .client
            .set_user_status(SetUserStatusRequest {
                user_id: a.user_id.clone(),
                status: status.into(),
            })
            .await;
        assert_eq!(code_of(set), Code::Ok);
    }
    // created, suspended, active: three events replayed, then the client hangs up.
    let mut stream = app
        .client
        .stream_user_activity(StreamUserActivityRequest {
            user_id: a.user_id.clone(),
            from_time: Some(prost_types::Timestamp::from(UNIX_EPOCH)),
        })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        stream.message().await.unwrap().expect("an event");
    }
    drop(stream);
    // Without credentials: refused by the auth layer, still counted.
    let unknown_code =
        call_unknown(channel(app.grpc_addr).await, "/user.v1.UserService/Steal").await;
    assert_eq!(unknown_code, Code::Unauthenticated);

    let service = ("grpc_service", "user.v1.UserService");
    let unary = ("grpc_type", "unary");
    let method = |m| ("grpc_method", m);
    eventually("the cancelled stream is counted", || async {
        Scrape::from(app.metrics_addr).await.value(
            "grpc_server_handled_total",
            &[method("StreamUserActivity"), ("grpc_code", "Canceled")],
        ) == 1.0
    })
    .await;
    let m = Scrape::from(app.metrics_addr).await;
    let expect = |name: &str, labels: &[(&str, &str)], want: f64| {
        assert_eq!(m.value(name, labels), want, "{name} {labels:?}");
    };

    let create_user = [service, unary, method("CreateUser")];
    expect("grpc_server_started_total", &create_user, 4.0);
    expect(
        "grpc_server_handled_total",
        &[create_user.as_slice(), &[("grpc_code", "OK")]].concat(),
        3.0,
    );
    expect(
        "grpc_server_handled_total",
        &[create_user.as_slice(), &[("grpc_code", "InvalidArgument")]].concat(),
        1.0,
    );
    expect("grpc_server_handling_seconds_count", &create_user, 4.0);
    expect(
        "grpc_server_handling_seconds_bucket",
        &[create_user.as_slice(), &[("le", "+Inf")]].concat(),
        4.0,
    );
    expect("grpc_server_msg_received_total", &create_user, 4.0);
    expect("grpc_server_msg_sent_total", &create_user, 3.0);

    let get_user = [service, unary, method("GetUser")];
    expect("grpc_server_started_total", &get_user, 4.0);
    for (code, count) in [("OK", 2.0), ("NotFound", 1.0), ("Unauthenticated", 1.0)] {
        expect(
            "grpc_server_handled_total",
            &[get_user.as_slice(), &[("grpc_code", code)]].concat(),
            count,
        );
    }
    expect("grpc_server_handled_total", &get_user, 4.0);
    expect("grpc_server_handling_seconds_count", &get_user, 4.0);
    expect("grpc_server_msg_sent_total", &get_user, 2.0);

    let set_status = [service, unary, method("SetUserStatus")];
    expect(
        "grpc_server_handled_total",
        &[set_status.as_slice(), &[("grpc_code", "OK")]].concat(),
        2.0,
    );

    let stream = [
        service,
        ("grpc_type", "server_stream"),
        method("StreamUserActivity"),
    ];
    expect("grpc_server_started_total", &stream, 1.0);
    expect("grpc_server_msg_received_total", &stream, 1.0);
    expect("grpc_server_msg_sent_total", &stream, 3.0);
    expect("grpc_server_handled_total", &stream, 1.0);

    let unknown = [("grpc_service", "unknown"), ("grpc_method", "unknown")];
    expect("grpc_server_started_total", &unknown, 1.0);
    expect(
        "grpc_server_handled_total",
        &[
            unknown.as_slice(),
            &[("grpc_code", code_name(unknown_code))],
        ]
        .concat(),
        1.0,
    );

    expect("users_created_total", &[], 3.0);
    expect(
        "db_pool_max_connections",
        &[("pool", "user")],
        f64::from(database.settings().database_max_connections),
    );
    assert!(
        m.value(
            "db_pool_connections",
            &[("pool", "user"), ("state", "idle")]
        ) >= 1.0,
        "an idle pooled connection after the calls"
    );
    app.shutdown().await;
}

const TOKEN: &str = "zq9xleak";

/// `message` with the token in every header a client controls.
fn tagged<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    for (key, value) in [
        ("x-request-id", format!("{TOKEN}-request")),
        ("x-tenant", format!("{TOKEN}-tenant")),
        ("user-agent", format!("{TOKEN}-agent")),
    ] {
        request.metadata_mut().insert(key, value.parse().unwrap());
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_label_values_never_come_from_request_data() {
    let database = TestDatabase::create(Db::Sqlite).await;
    let mut app = TestApp::spawn(&database, RedisMode::InProcess).await;

    let user = create(&mut app, &format!("{TOKEN}@example.com"), TOKEN).await;
    let _ = app
        .client
        .create_user(tagged(CreateUserRequest {
            email: format!("{TOKEN}-bad"),
            full_name: TOKEN.into(),
            preferences: None,
        }))
        .await;
    let _ = app
        .client
        .get_user(tagged(GetUserRequest {
            user_id: user.user_id.clone(),
        }))
        .await;
    let _ = app
        .client
        .get_user(tagged(GetUserRequest {
            user_id: format!("{TOKEN}-id"),
        }))
        .await;
    call_unknown(channel(app.grpc_addr).await, "/zq9xleak.Evil/Zq9xleakSteal").await;
    call_unknown(
        channel(app.grpc_addr).await,
        "/user.v1.UserService/zq9xleak",
    )
    .await;

    let scrape = Scrape::from(app.metrics_addr).await;
    for sample in &scrape.samples {
        for (key, value) in &sample.labels {
            assert!(
                !value.to_ascii_lowercase().contains(TOKEN),
                "{}{{{key}={value:?}}} carries request data",
                sample.name
            );
        }
    }
    // And structurally: gRPC labels come from the compiled-in methods and the code names.
    let methods = mercato_platform::grpc_methods();
    let services: BTreeSet<&str> = methods
        .iter()
        .map(|m| m.service)
        .chain(["unknown"])
        .collect();
    let names: BTreeSet<&str> = methods
        .iter()
        .map(|m| m.method)
        .chain(["unknown"])
        .collect();
    let codes: BTreeSet<&str> = (0..17).map(|c| code_name(Code::from_i32(c))).collect();
    for sample in scrape
        .samples
        .iter()
        .filter(|s| s.name.starts_with("grpc_"))
    {
        let label = |k: &str| sample.labels.get(k).map(String::as_str).unwrap_or_default();
        assert!(services.contains(label("grpc_service")), "{sample:?}");
        assert!(names.contains(label("grpc_method")), "{sample:?}");
        if sample.name.starts_with("grpc_server_handled") {
            assert!(codes.contains(label("grpc_code")), "{sample:?}");
        }
    }
    assert_eq!(
        scrape.value("grpc_server_started_total", &[("grpc_service", "unknown")]),
        2.0
    );
    app.shutdown().await;
}
