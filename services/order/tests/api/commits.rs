//! What one order costs the order database in commits: every transaction
//! that writes is logged by triggers (with its transaction id) while a
//! real order goes through the saga.

use mercato_proto::{order::v1::OrderStatus, user::v1::UserStatus};

use crate::support::*;

const TABLES: [&str; 5] = [
    "orders",
    "order_items",
    "sagas",
    "stock_reservations",
    "products",
];

/// Logs every row written to the order service's tables with the id of
/// the transaction that wrote it.
async fn log_writes(db: &mercato_database::Database) {
    for statement in [
        "CREATE TABLE write_log (txid BIGINT NOT NULL, table_name TEXT NOT NULL)",
        "CREATE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN INSERT INTO write_log VALUES (txid_current(), TG_TABLE_NAME); RETURN NULL; END $$",
    ] {
        sqlx::query(statement).execute(&db.pool).await.unwrap();
    }
    for table in TABLES {
        sqlx::query(&format!(
            "CREATE TRIGGER log_{table} AFTER INSERT OR UPDATE OR DELETE ON {table} \
             FOR EACH ROW EXECUTE FUNCTION log_write()"
        ))
        .execute(&db.pool)
        .await
        .unwrap();
    }
}

async fn count(db: &mercato_database::Database, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

/// Four commits, each also recording the saga's progress: the order with
/// its saga, the stock reservation, the payment id, the confirmation.
/// (Before each local step committed with its saga-state write, it was
/// eight: a separate save after every step.) Shipped timing, so no lease
/// renewal falls inside a step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_order_costs_four_commits_on_the_order_database() {
    let mut s = Suite::start_with(Db::Postgres, Timing::ShippedDefaults, None, |_| {}).await;
    let user = s.user("commits@example.com", UserStatus::Active).await;
    s.product("apple", 120, 10).await;
    let db = s.order_db.connect().await;
    log_writes(&db).await;

    let order = s
        .place("commits-1", &user, &[("apple", 2)], "pm_approve")
        .await
        .unwrap();
    assert_eq!(order.status(), OrderStatus::Confirmed, "{order:?}");

    let commits = count(&db, "SELECT count(DISTINCT txid) FROM write_log").await;
    let saga_commits = count(
        &db,
        "SELECT count(DISTINCT txid) FROM write_log WHERE table_name = 'sagas'",
    )
    .await;
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT txid, table_name FROM write_log")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(commits, 4, "writing transactions per order: {rows:?}");
    assert_eq!(
        saga_commits, 4,
        "each of them records the saga's progress: {rows:?}"
    );
    let saga: (String, i64) = sqlx::query_as("SELECT status, step FROM sagas")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(saga, ("completed".to_owned(), 4));
}
