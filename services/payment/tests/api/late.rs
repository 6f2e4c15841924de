//! Provider calls that land after we stopped waiting for them (issue 34):
//! a call written to the wire before a partition arrives when it heals,
//! whatever we concluded meanwhile. Money and ledger must still agree.

use std::time::Duration;

use mercato_proto::payment::v1::{PaymentStatus, RefundRequest};
use tonic::Code;
use tonic_types::StatusExt;

use crate::{
    providers::{Held, Late},
    support::*,
};

/// A charge held on the wire past our timeout; the order is given up and
/// its key voided; then the charge reaches the provider. Before the fix
/// the void was a guess from the provider's silence ("no record, so it
/// will never charge") and the late charge took the money of a voided key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_that_lands_after_its_key_was_voided_takes_no_money() {
    late_charge_after_a_void(Held::Charges).await;
}

/// The same with the intent named by our key and created with its
/// confirm (the simulated provider as shipped): the void cancels an
/// intent that does not exist yet, and its creation, landing later, is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_named_by_its_key_that_lands_after_a_void_takes_no_money() {
    late_charge_after_a_void(Held::NamedCharges).await;
}

async fn late_charge_after_a_void(held: Held) {
    let (provider, gate, late) = Late::provider(held);
    let mut app = TestApp::spawn_with_provider(Db::Postgres, quick_takeover, Some(provider)).await;
    let unknown = app
        .client
        .charge(charge_req("k-late", "o-1", 700, "pm_approve"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unavailable, "{unknown:?}");

    let voided = void_when_free(&app, "k-late").await;
    assert!(voided.voided, "{voided:?}");

    gate.open_and_land().await;
    let late = late.get().unwrap();
    assert!(
        !late.charged("k-late").await,
        "the provider took money under a voided key"
    );
    assert!(payments_of_order(&mut app, "o-1").await.is_empty());
    let reconciled = reconcile_now(&mut app).await;
    assert!(reconciled.mismatches.is_empty(), "{reconciled:#?}");
}

/// A charge named by its key held on the wire past its key's lease, and
/// nobody comes back for it: the sweeper finds no intent under the key and
/// fences it at the provider (never "no record, so free the key"); the
/// charge then lands and takes no money, and a retry is told the key is void.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_that_lands_after_the_sweeper_fenced_its_key_takes_no_money() {
    let (provider, gate, late) = Late::provider(Held::NamedCharges);
    let mut app = TestApp::spawn_with_provider(Db::Postgres, quick_takeover, Some(provider)).await;
    let unknown = app
        .client
        .charge(charge_req("k-swept", "o-4", 600, "pm_approve"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unavailable, "{unknown:?}");
    let db = app.database.connect().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let point: String = sqlx::query_scalar(
            "SELECT recovery_point FROM idempotency_keys WHERE idempotency_key = 'k-swept'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if point == "voided" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {point}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    gate.open_and_land().await;
    assert!(
        !late.get().unwrap().charged("k-swept").await,
        "the provider took money under a swept key"
    );
    let retried = app
        .client
        .charge(charge_req("k-swept", "o-4", 600, "pm_approve"))
        .await
        .unwrap_err();
    assert_eq!(retried.code(), Code::FailedPrecondition, "{retried:?}");
    assert!(payments_of_order(&mut app, "o-4").await.is_empty());
    let reconciled = reconcile_now(&mut app).await;
    assert!(reconciled.mismatches.is_empty(), "{reconciled:#?}");
}

/// A refund held on the wire past our timeout and past its key's lease:
/// the sweeper must not give its reservation back (before the fix it did,
/// a second refund took the same money, and the late one then made the
/// provider refund twice what was captured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_that_lands_late_is_recorded_not_refunded_twice() {
    let (provider, gate, late) = Late::provider(Held::Refunds);
    let mut app = TestApp::spawn_with_provider(Db::Postgres, quick_takeover, Some(provider)).await;
    let paid = charge(&mut app, "k-paid", "o-2", 900, "pm_approve").await;
    let refund = |key: &str| RefundRequest {
        idempotency_key: key.into(),
        payment_id: paid.payment_id.clone(),
        amount: usd(900),
    };
    let unknown = app.client.refund(refund("r-1")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::Unavailable, "{unknown:?}");
    // Past the lease, with the sweeper running every 0.5 s.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let second = app.client.refund(refund("r-2")).await;
    gate.open_and_land().await;
    let late = late.get().unwrap();
    let refunded_at_provider = [
        late.refunded("r-1", "k-paid").await,
        late.refunded("r-2", "k-paid").await,
    ]
    .iter()
    .filter(|r| **r)
    .count();
    assert_eq!(
        refunded_at_provider, 1,
        "refunds of the whole 900 the provider made (second refund: {second:?})"
    );
    // The late refund is recorded once the sweeper finds it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ledger = app.ledger(&paid.payment_id).await;
        if ledger.iter().any(|(kind, _)| kind == "REFUND") {
            assert_eq!(
                ledger,
                [("CAPTURE".to_owned(), 900), ("REFUND".to_owned(), 900)]
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{ledger:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reconciled = reconcile_now(&mut app).await;
    assert!(reconciled.mismatches.is_empty(), "{reconciled:#?}");
}

/// The simulated provider loses its reply while it confirms a charge (its
/// connection to its records is cut while the statement runs): that is an
/// unknown outcome, never "nothing happened" — before the fix the key was
/// released as if the provider had refused the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_from_the_provider_is_an_unknown_outcome() {
    let mut app = TestApp::spawn_with(Db::Postgres, quick_takeover).await;
    let db = app.database.connect().await;
    // The provider's write stalls, so that its session can be cut mid-statement.
    sqlx::raw_sql(
        "CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN PERFORM pg_sleep(2); RETURN NEW; END $$; \
         CREATE TRIGGER stall AFTER INSERT OR UPDATE ON simulated_provider_intents \
           FOR EACH ROW EXECUTE FUNCTION stall();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let cut = tokio::spawn({
        let pool = db.pool.clone();
        async move {
            loop {
                let cut: Option<bool> = sqlx::query_scalar(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE (query LIKE 'INSERT INTO simulated_provider_intents%' \
                        OR query LIKE 'UPDATE simulated_provider_intents%') AND state = 'active' LIMIT 1",
                )
                .fetch_optional(&pool)
                .await
                .unwrap();
                if cut == Some(true) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let lost = app
        .client
        .charge(charge_req("k-lost", "o-3", 300, "pm_approve"))
        .await
        .unwrap_err();
    cut.await.unwrap();
    assert_eq!(lost.code(), Code::Unavailable, "{lost:?}");
    assert_eq!(
        lost.get_details_error_info().map(|i| i.reason).as_deref(),
        Some("PROVIDER_OUTCOME_UNKNOWN"),
        "{lost:?}"
    );
    let key: Option<String> = sqlx::query_scalar(
        "SELECT recovery_point FROM idempotency_keys WHERE idempotency_key = 'k-lost'",
    )
    .fetch_optional(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        key.as_deref(),
        Some("started"),
        "the key is kept until the outcome is known"
    );

    // Once the provider answers again, the retry learns what it did: one
    // charge, recorded; the ledger and the provider agree.
    sqlx::raw_sql("DROP TRIGGER stall ON simulated_provider_intents")
        .execute(&db.pool)
        .await
        .unwrap();
    let paid = charge_when_free(&app, charge_req("k-lost", "o-3", 300, "pm_approve")).await;
    assert_eq!(paid.status(), PaymentStatus::Captured);
    let reconciled = reconcile_now(&mut app).await;
    assert!(reconciled.mismatches.is_empty(), "{reconciled:#?}");
}
