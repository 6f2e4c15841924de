//! What one charge costs the payment database on Postgres: every row
//! written is logged by triggers with its transaction and its client
//! statement.

use mercato_testkit::writes::{log_writes, logged, writing_statements, writing_transactions};

use crate::support::*;

/// Three commits, each one statement: the key claimed by its insert (with
/// the id of its intent: the simulated provider names intents by our key),
/// the intent created and confirmed at once (a stand-in for the provider's
/// own work), then the payment, its ledger entry and the finished key
/// together. (Issue 34 first made it five — create the intent, record its
/// id, confirm it — which cost a third of CreateOrder's throughput.) A
/// repeated charge writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_costs_three_one_statement_commits() {
    let mut app = TestApp::spawn(Db::Postgres).await;
    let db = app.database.connect().await;
    log_writes(
        &db,
        &[
            "idempotency_keys",
            "payments",
            "payment_ledger",
            "simulated_provider_intents",
        ],
    )
    .await;

    let payment = charge(&mut app, "statements-1", "order-1", 500, "pm_approve").await;
    assert_eq!(payment.amount.as_ref().map(|m| m.amount_minor), Some(500));
    let rows = logged(&db).await;
    assert_eq!(writing_transactions(&db).await, 3, "{rows:?}");
    assert_eq!(writing_statements(&db).await, 3, "{rows:?}");
    assert_eq!(
        app.ledger(&payment.payment_id).await,
        [("CAPTURE".to_owned(), 500)]
    );

    let again = charge(&mut app, "statements-1", "order-1", 500, "pm_approve").await;
    assert_eq!(again.payment_id, payment.payment_id);
    assert_eq!(logged(&db).await, rows, "a repeated charge writes nothing");
}
