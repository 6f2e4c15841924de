//! `REST_ENABLED=false` (what the Kubernetes base sets) leaves the REST
//! port alone: the server binds and serves gRPC without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mercato_platform::{Server, ServerError, ServerSettings};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Settings whose REST address is a port this test holds, so a server that
/// tried to bind it would fail.
fn rest_on_a_taken_port(held: &std::net::TcpListener, rest_enabled: bool) -> ServerSettings {
    ServerSettings {
        rest_addr: held.local_addr().unwrap(),
        rest_enabled,
        ..ServerSettings::ephemeral()
    }
}

#[tokio::test]
async fn a_server_with_rest_off_never_binds_the_rest_port() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();

    let refused = Server::bind(rest_on_a_taken_port(&held, true))
        .await
        .unwrap_err();
    assert!(matches!(refused, ServerError::Bind { .. }), "{refused}");

    let server = Server::bind(rest_on_a_taken_port(&held, false))
        .await
        .unwrap();
    assert_eq!(server.rest_addr(), None);
    let addr = server.grpc_addr();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(server.run(stop.clone().cancelled_owned()));
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    stop.cancel();
    running.await.unwrap().unwrap();
}
