//! A handler that panics answers INTERNAL and is counted as INTERNAL — not
//! as a reset stream the metrics call CANCELLED, which error-rate alerts
//! and the rollout controller's success rate count as no error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use mercato_platform::{Server, ServerSettings};
use mercato_proto::user::v1::{GetUserRequest, user_service_client::UserServiceClient};

/// The user service's name, every call of which panics.
#[derive(Clone)]
struct Panicking;

impl tonic::server::NamedService for Panicking {
    const NAME: &'static str = "user.v1.UserService";
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Panicking {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async { panic!("a bug in a handler") })
    }
}

#[tokio::test]
async fn a_panicking_handler_answers_and_counts_internal() {
    let mut server = Server::bind(ServerSettings::ephemeral()).await.unwrap();
    server.add_service(Panicking);
    let (grpc, metrics) = (server.grpc_addr(), server.metrics_addr());
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(server.run(stop.clone().cancelled_owned()));
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = UserServiceClient::new(channel);
    for _ in 0..2 {
        let status = client
            .get_user(GetUserRequest {
                user_id: "0193a000-0000-7000-8000-000000000000".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
        assert_eq!(status.message(), "internal error", "no panic text leaks");
    }
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted = text
        .lines()
        .filter(|l| l.starts_with("grpc_server_handled_total{") && l.contains("GetUser"))
        .collect::<Vec<_>>();
    assert!(
        counted
            .iter()
            .any(|l| l.contains("grpc_code=\"Internal\"") && l.ends_with(" 2")),
        "{counted:#?}"
    );
    assert!(
        !counted
            .iter()
            .any(|l| l.contains("grpc_code=\"Canceled\"") && !l.ends_with(" 0")),
        "{counted:#?}"
    );
    stop.cancel();
    running.await.unwrap().unwrap();
}

/// A fresh server's error series exist, at zero, before any call: a
/// canary's first errors are then seen by `rate()` (a series born at 1
/// would hide its first increment). Only for the methods it serves.
#[tokio::test]
async fn a_fresh_server_exports_its_error_series_at_zero() {
    let mut server = Server::bind(ServerSettings::ephemeral()).await.unwrap();
    server.add_service(Panicking);
    let metrics = server.metrics_addr();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(server.run(stop.clone().cancelled_owned()));
    let text = loop {
        if let Ok(answer) = reqwest::get(format!("http://{metrics}/metrics")).await {
            break answer.text().await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let zero = |code: &str| {
        text.lines().any(|l| {
            l.starts_with("grpc_server_handled_total{")
                && l.contains("grpc_method=\"GetUser\"")
                && l.contains(&format!("grpc_code=\"{code}\""))
                && l.ends_with(" 0")
        })
    };
    for code in [
        "OK",
        "Internal",
        "Unavailable",
        "ResourceExhausted",
        "Unknown",
    ] {
        assert!(zero(code), "no {code} series at 0:\n{text}");
    }
    assert!(
        !text.contains("grpc_service=\"order.v1.OrderService\""),
        "series of a service this server does not serve"
    );
    stop.cancel();
    running.await.unwrap().unwrap();
}
