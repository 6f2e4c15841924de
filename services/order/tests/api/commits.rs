//! What one order costs the order database in commits: every transaction
//! that writes is logged by triggers (with its transaction id, and the
//! start of the client statement that wrote the row) while a real order
//! goes through the saga.

use mercato_proto::{order::v1::OrderStatus, user::v1::UserStatus};

use mercato_testkit::writes::{
    count, log_writes, logged, writing_statements, writing_transactions,
};

use crate::support::*;

const TABLES: [&str; 5] = [
    "orders",
    "order_items",
    "sagas",
    "stock_reservations",
    "products",
];

/// Two commits, each also recording the saga's progress: the order with
/// its saga and its stock (the user checked before, by the saga's first
/// step run ahead of the record), and the confirmation with the payment
/// id — each one statement. (Before each local step committed with its
/// saga-state write, it was eight: a separate save after every step; then
/// four, the payment id committing on its own; then three, the stock
/// reserved by a statement of its own.) Shipped timing, so no lease
/// renewal falls inside a step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_order_costs_two_commits_on_the_order_database() {
    let mut s = Suite::start_with(Db::Postgres, Timing::ShippedDefaults, None, |_| {}).await;
    let user = s.user("commits@example.com", UserStatus::Active).await;
    s.product("apple", 120, 10).await;
    let db = s.order_db.connect().await;
    log_writes(&db, &TABLES).await;

    let order = s
        .place("commits-1", &user, &[("apple", 2)], "pm_approve")
        .await
        .unwrap();
    assert_eq!(order.status(), OrderStatus::Confirmed, "{order:?}");

    let commits = writing_transactions(&db).await;
    let saga_commits = count(
        &db,
        "SELECT count(DISTINCT txid) FROM write_log WHERE table_name = 'sagas'",
    )
    .await;
    let rows = logged(&db).await;
    assert_eq!(commits, 2, "writing transactions per order: {rows:?}");
    assert_eq!(
        saga_commits, 2,
        "each of them records the saga's progress: {rows:?}"
    );
    // Each of them is one client statement on Postgres: no round trip to
    // the service inside a transaction, so the hot product row is locked
    // only while the server runs the order's statement and commits.
    // (Before, the transactions took thirteen statements.)
    let statements = writing_statements(&db).await;
    assert_eq!(statements, 2, "writing statements per order: {rows:?}");
    let reservation_tables = count(
        &db,
        "SELECT count(DISTINCT table_name) FROM write_log \
         WHERE txid = (SELECT txid FROM write_log WHERE table_name = 'products')",
    )
    .await;
    assert_eq!(
        reservation_tables, 5,
        "the order's statement writes the order, its lines, its saga, the reservation and the product: {rows:?}"
    );
    let saga: (String, i64) = sqlx::query_as("SELECT status, step FROM sagas")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(saga, ("completed".to_owned(), 4));
    let paid: String = sqlx::query_scalar("SELECT payment_id FROM orders")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        paid, order.payment_id,
        "the confirmation records the payment"
    );
    assert!(!paid.is_empty(), "{order:?}");
}
