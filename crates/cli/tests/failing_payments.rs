//! Issue 12's scenario in the monolith, with every shipped default: 10
//! orders paid with `pm_error` (the provider fails every time) and 10 with
//! `pm_approve`, placed 16 at a time. Every order must end (CONFIRMED or
//! CANCELLED) within the saga deadline + 15 s, the DESIGN §4 invariants must
//! hold, other customers' orders must not suffer, and a fresh order must
//! confirm at once afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // each test binary uses part of it
mod support;

use std::time::Duration;

use mercato_proto::{
    order::v1::{
        catalog_service_client::CatalogServiceClient, order_service_client::OrderServiceClient,
    },
    payment::v1::payment_service_client::PaymentServiceClient,
    user::v1::user_service_client::UserServiceClient,
};
use mercato_testkit::{invariants::Clients, shoppers};

/// Stops `mercato up` however the test ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_payments_do_not_strand_orders_in_the_monolith() {
    let up = support::up().await;
    let channel = mercato_testkit::auth::with_token(
        mercato_testkit::channel(up.grpc.parse().unwrap()).await,
        &up.token,
    );
    let clients = Clients {
        orders: OrderServiceClient::new(channel.clone()),
        payments: PaymentServiceClient::new(channel.clone()),
        catalog: CatalogServiceClient::new(channel.clone()),
    };
    let user = UserServiceClient::new(channel.clone())
        .create_user(mercato_testkit::fixtures::new_user(
            "mixed@example.com",
            "Mixed",
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
        .user_id;
    let saga_deadline =
        Duration::from_secs_f64(mercato_order::Settings::default().saga_deadline_secs);
    shoppers::failing_payments_do_not_strand_orders("monolith", &clients, &user, saga_deadline)
        .await;
}
