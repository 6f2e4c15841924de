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
    shoppers::failing_payments_do_not_strand_orders(
        "monolith",
        &clients,
        &user,
        saga_deadline,
        shoppers::SIMULATED,
    )
    .await;

    // `mercato reconcile`, as an operator runs it once traffic stopped:
    // the ledger and the provider agree.
    let reconcile = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mercato"))
            .args(["reconcile", "--until-now", "--payment-addr", &up.grpc])
            .env("MERCATO_TOKEN", &up.token)
            .output()
            .unwrap()
    };
    let agreed = reconcile();
    let out = String::from_utf8_lossy(&agreed.stdout).into_owned();
    assert!(
        agreed.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&agreed.stderr)
    );
    assert!(out.contains("the ledger and the provider agree"), "{out}");
    // Money at the provider the ledger never recorded: listed, exit status 1.
    let db = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        up.data.path().join("payment.db").display()
    ))
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO simulated_provider_intents (intent_id, idempotency_key, order_id, currency, amount_minor, \
           payment_method, status, created_at_us) VALUES ('sim_pi_k-stray', 'k-stray', 'o', 'USD', 700, \
           'pm_approve', 'succeeded', CAST(strftime('%s', 'now') AS INTEGER) * 1000000 - 60000000)",
    )
    .execute(&db)
    .await
    .unwrap();
    let found = reconcile();
    let out = String::from_utf8_lossy(&found.stdout).into_owned();
    assert_eq!(found.status.code(), Some(1), "{out}");
    assert!(
        out.contains("provider_only") && out.contains("key=k-stray"),
        "{out}"
    );
}
