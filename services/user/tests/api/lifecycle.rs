//! Health, reflection, probes, metrics and graceful shutdown.

use std::time::Duration;

use mercato_proto::user::v1::StreamUserActivityRequest;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::{v1, v1alpha};

use crate::{
    crud::create,
    helpers::{Db, RedisMode, TestApp, TestDatabase, channel},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_list_the_served_services() {
    let database = TestDatabase::create(Db::Sqlite).await;
    let app = TestApp::spawn(&database, RedisMode::InProcess).await;
    let expected = [
        "experiment.v1.ExperimentService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "user.v1.UserService",
    ];

    let mut client =
        v1::server_reflection_client::ServerReflectionClient::new(channel(app.grpc_addr).await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a list response")
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, expected, "only what is served: no order/payment yet");

    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(
        channel(app.grpc_addr).await,
    );
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "user.v1.UserService".into(),
            ),
        ),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a file response")
    };
    assert!(
        !files.file_descriptor_proto.is_empty(),
        "grpcurl can describe the service"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_answer() {
    let database = TestDatabase::create(Db::Sqlite).await;
    let mut app = TestApp::spawn(&database, RedisMode::InProcess).await;
    assert_eq!(app.http_get("/health/live").await.0, 200);
    // The server marks itself started once it runs, just after the listener accepts.
    crate::helpers::eventually("startup probe passes", || async {
        app.http_get("/health/startup").await.0 == 200
    })
    .await;
    let (code, body) = app.http_get("/health/ready").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("\"database\":\"ok\"") && body.contains("\"status\":\"ok\""),
        "{body}"
    );
    assert_eq!(app.http_get("/nope").await.0, 404);

    assert_eq!(app.metric("users_created_total").await, Some(0.0));
    create(&mut app, "metrics@example.com", "Metrics").await;
    assert_eq!(app.metric("users_created_total").await, Some(1.0));
    assert_eq!(
        app.metric("mercato_build_info{version=\"0.1.0\"}").await,
        Some(1.0)
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_not_serving_then_drains_streams() {
    let database = TestDatabase::create(Db::Sqlite).await;
    let mut app = TestApp::spawn_with(&database, RedisMode::InProcess, |s| {
        s.server.shutdown_delay_secs = 0.5;
        s.server.drain_timeout_secs = 5.0;
    })
    .await;
    let user = create(&mut app, "drain@example.com", "Drain").await;
    let mut health = HealthClient::new(channel(app.grpc_addr).await);
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    for service in ["", "user.v1.UserService"] {
        let status = health
            .check(check(service))
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    let mut watch = health
        .watch(check("user.v1.UserService"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    let mut activity = app
        .client
        .stream_user_activity(StreamUserActivityRequest {
            user_id: user.user_id,
            from_time: None,
        })
        .await
        .unwrap()
        .into_inner();

    app.begin_shutdown();
    let status = tokio::time::timeout(Duration::from_secs(2), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(status.status(), ServingStatus::NotServing);
    // During the shutdown delay new checks still connect, and say NOT_SERVING; readiness fails.
    let status = health.check(check("")).await.unwrap().into_inner().status();
    assert_eq!(status, ServingStatus::NotServing);
    let (code, body) = app.http_get("/health/ready").await;
    assert_eq!((code, body.contains("draining")), (503, true), "{body}");
    drop(watch);

    // Draining ends the open activity stream cleanly (OK, no more messages).
    let end = tokio::time::timeout(Duration::from_secs(3), activity.message())
        .await
        .expect("stream ends");
    assert!(matches!(end, Ok(None)), "{end:?}");
    app.wait_stopped(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_bounds_shutdown() {
    let database = TestDatabase::create(Db::Sqlite).await;
    let app = TestApp::spawn_with(&database, RedisMode::InProcess, |s| {
        s.server.drain_timeout_secs = 0.5
    })
    .await;
    // A Watch stream never ends by itself, so only the deadline stops the drain.
    let mut health = HealthClient::new(channel(app.grpc_addr).await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    let started = tokio::time::Instant::now();
    app.begin_shutdown();
    app.wait_stopped(Duration::from_secs(3)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(2),
        "took {took:?}"
    );
    drop(watch);
}
