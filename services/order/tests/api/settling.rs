//! Compensation learns what a charge did without moving money forward, and
//! a stale runner can take no stock: the fixes of issue 12's findings 1 and
//! 4 seen from outside.

use std::{collections::HashMap, time::Duration};

use mercato_order::catalog::{Catalog, ReserveError};
use mercato_proto::{
    common::v1::Money,
    order::v1::{GetProductRequest, OrderStatus},
    payment::v1::{ChargeRequest, ListPaymentsRequest, list_payments_request::Filter},
    user::v1::UserStatus,
};
use mercato_saga::{SagaRecord, SagaStatus, SqlSagaStore};
use tonic::Code;
use tonic_types::StatusExt;

use crate::{invariants::check, support::*};

mercato_testkit::on_both_backends!(
    compensating_a_charge_that_never_happened_voids_its_key_and_charges_nothing,
    a_released_reservation_is_never_taken_again_and_a_stale_claim_takes_nothing
);

async fn compensating_a_charge_that_never_happened_voids_its_key_and_charges_nothing(db: Db) {
    let mut s = Suite::start(db, |o| {
        o.saga_deadline_secs = 1.0;
        o.order_wait_secs = 0.5;
    })
    .await;
    let user = s.user("void@example.com", UserStatus::Active).await;
    s.product("vase", 700, 3).await;
    // Payments are unreachable until the saga is past its deadline.
    s.payment_proxy.cut();
    let order = s
        .place("r-1", &user, &[("vase", 1)], "pm_approve")
        .await
        .unwrap();
    assert_eq!(order.status(), OrderStatus::Pending);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.payment_proxy.restore();
    crate::invariants::wait_until_quiet(
        &mut s,
        std::slice::from_ref(&user),
        Duration::from_secs(10),
    )
    .await;

    let payments = s
        .payments
        .list_payments(ListPaymentsRequest {
            filter: Some(Filter::OrderId(order.order_id.clone())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .payments;
    assert!(
        payments.is_empty(),
        "compensation captured nothing (not even to refund it): {payments:?}"
    );
    // The charge key is closed for good: a stale runner's charge cannot capture.
    let late = s
        .payments
        .charge(ChargeRequest {
            idempotency_key: format!("order-{}-charge", order.order_id),
            order_id: order.order_id.clone(),
            user_id: user.clone(),
            amount: Some(Money {
                currency_code: "USD".into(),
                amount_minor: 700,
            }),
            payment_method: "pm_approve".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert_eq!(
        late.get_details_error_info().map(|i| i.reason).as_deref(),
        Some("CHARGE_VOIDED")
    );
    let report = check(&mut s, &[user], &HashMap::from([("vase".to_owned(), 3)])).await;
    report.assert_clean();
    assert_eq!(report.cancelled, 1);
}

async fn a_released_reservation_is_never_taken_again_and_a_stale_claim_takes_nothing(db: Db) {
    let mut s = Suite::start(db, |_| {}).await;
    s.product("lamp", 100, 10).await;
    let database = s.order_db.connect().await;
    let record = SagaRecord {
        saga_id: "s-stock".into(),
        kind: "test.stock".into(),
        status: SagaStatus::Running,
        step: 0,
        context: serde_json::json!({}),
        failure_reason: String::new(),
        deadline_us: None,
        lease_owner: "test".into(),
        lease_until_us: i64::MAX,
        epoch: 2,
        stamped_us: None,
    };
    let mut tx = database.pool.begin().await.unwrap();
    SqlSagaStore::insert(&mut tx, &record).await.unwrap();
    tx.commit().await.unwrap();
    let catalog = Catalog::new(&database);
    let items = [("lamp".to_owned(), 3)];
    let fence = record.fence();
    let stale = SagaRecord {
        epoch: 1,
        ..record.clone()
    }
    .fence();

    assert!(matches!(
        catalog.reserve("o-1", &items, &stale).await,
        Err(ReserveError::Storage(
            mercato_order::error::StorageError::Fenced
        ))
    ));
    assert_eq!(stock(&mut s).await, 10, "a stale claim takes nothing");
    catalog.reserve("o-1", &items, &fence).await.unwrap();
    catalog.reserve("o-1", &items, &fence).await.unwrap();
    assert_eq!(stock(&mut s).await, 7, "reserving twice takes once");
    assert!(catalog.release("o-1", &stale).await.is_err());
    catalog.release("o-1", &fence).await.unwrap();
    assert_eq!(stock(&mut s).await, 10);
    assert!(
        matches!(
            catalog.reserve("o-1", &items, &fence).await,
            Err(ReserveError::Released)
        ),
        "a runner that missed the compensation must not take the stock again"
    );
    assert_eq!(stock(&mut s).await, 10);
}

async fn stock(s: &mut Suite) -> i64 {
    s.catalog
        .get_product(GetProductRequest {
            product_id: "lamp".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap()
        .stock
}
