//! `mercato up` as a user runs it: the real binary, stopped with SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use mercato_proto::{
    order::v1::{
        CreateOrderRequest, OrderItem, OrderStatus, catalog_service_client::CatalogServiceClient,
        order_service_client::OrderServiceClient,
    },
    user::v1::user_service_client::UserServiceClient,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test]
async fn up_serves_the_suite_on_one_port_and_stops_on_sigterm() {
    let mut up = support::up().await;
    let (grpc, banner, token) = (up.grpc.clone(), up.banner.clone(), up.token.clone());
    assert!(
        banner
            .iter()
            .any(|l| l.contains(&format!("grpcurl -plaintext {grpc} list"))),
        "{banner:#?}"
    );
    let plain = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(plain.clone());
    let plain_for_keys = plain.clone();
    let channel = mercato_testkit::auth::with_token(plain, &token);
    let status = health
        .check(HealthCheckRequest {
            service: "user.v1.UserService".into(),
        })
        .await
        .unwrap();
    assert_eq!(status.into_inner().status(), ServingStatus::Serving);
    for service in [
        "order.v1.OrderService",
        "order.v1.CatalogService",
        "payment.v1.PaymentService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
        assert_eq!(
            status.into_inner().status(),
            ServingStatus::Serving,
            "{service}"
        );
    }
    let user = UserServiceClient::new(channel.clone())
        .create_user(mercato_testkit::fixtures::new_user("up@example.com", "Up"))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    CatalogServiceClient::new(channel.clone())
        .create_product(mercato_testkit::fixtures::new_product("mug", "EUR", 900, 3))
        .await
        .unwrap();
    // The order service reaches the user and payment services over loopback gRPC.
    let order = OrderServiceClient::new(channel.clone())
        .create_order(CreateOrderRequest {
            request_id: "up-1".into(),
            user_id: user.user_id,
            items: vec![OrderItem {
                product_id: "mug".into(),
                quantity: 2,
                unit_price: None,
            }],
            payment_method: "pm_approve".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(order.status(), OrderStatus::Confirmed, "{order:?}");
    // An API key created through the admin RPC is accepted by the one
    // server of the monolith.
    let created = UserServiceClient::new(channel.clone())
        .create_api_key(mercato_proto::user::v1::CreateApiKeyRequest {
            owner: "reporting".into(),
            roles: vec!["service".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    UserServiceClient::new(mercato_testkit::auth::with_api_key(
        plain_for_keys.clone(),
        &created.api_key,
    ))
    .get_user(mercato_proto::user::v1::GetUserRequest {
        user_id: order.user_id.clone(),
    })
    .await
    .expect("managed key accepted");
    for db in ["user.db", "order.db", "payment.db"] {
        assert!(up.data.path().join(db).exists(), "{db} under --data-dir");
    }

    let killed = Command::new("kill")
        .args(["-TERM", &up.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = tokio::time::Instant::now();
    let status = loop {
        if let Some(status) = up.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "still running 30 s after SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
}
