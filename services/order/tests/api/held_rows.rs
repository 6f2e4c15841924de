//! A row held by another session during a saga step (issue 33, finding
//! 1): the step waits for it, its runner keeps renewing the lease
//! meanwhile, and the saga finishes once the row is let go.

use std::time::Duration;

use mercato_proto::order::v1::OrderStatus;
use mercato_proto::user::v1::UserStatus;
use sqlx::Connection;

use crate::{invariants::check, support::*};

/// Fast timings (a heartbeat every third of a second): an outside session
/// holds the order's stock reservation for a second while CancelOrder's
/// release_stock step needs it. Before the fix the heartbeat, waiting for
/// the saga row the step's own transaction held, stopped the step from
/// being polled: its transaction stayed open forever and the order never
/// became CANCELLED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_waiting_on_a_held_reservation_finishes_once_it_is_let_go() {
    let mut s = Suite::start(Db::Postgres, |_| {}).await;
    let user = s.user("held@example.com", UserStatus::Active).await;
    s.product("lamp", 1000, 5).await;
    let order = s
        .place("held-1", &user, &[("lamp", 1)], "pm_approve")
        .await
        .unwrap();
    assert_eq!(order.status(), OrderStatus::Confirmed);

    let mut outsider = sqlx::PgConnection::connect(&s.order_db.url).await.unwrap();
    let mut holding = outsider.begin().await.unwrap();
    sqlx::query("SELECT order_id FROM stock_reservations WHERE order_id = $1 FOR UPDATE")
        .bind(&order.order_id)
        .execute(&mut *holding)
        .await
        .unwrap();
    let answered = s
        .cancel_within(&order.order_id, Duration::from_millis(300))
        .await;
    assert_eq!(answered.status(), OrderStatus::Confirmed, "still under way");
    tokio::time::sleep(Duration::from_secs(1)).await;
    holding.rollback().await.unwrap();

    s.wait_for_status(&order.order_id, OrderStatus::Cancelled)
        .await;
    check(
        &mut s,
        &[user],
        &std::collections::HashMap::from([("lamp".to_owned(), 5)]),
    )
    .await
    .assert_clean();
}
