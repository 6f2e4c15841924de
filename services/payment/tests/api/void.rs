//! VoidCharge: what a charge key did, learnt without asking the provider to
//! charge — and, when it never charged, closed for good.

use std::time::Duration;

use mercato_proto::payment::v1::{PaymentStatus, VoidChargeRequest, VoidChargeResponse};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::*;

mercato_testkit::on_both_backends!(
    void_closes_unused_keys_and_reports_used_ones,
    void_settles_an_abandoned_key_from_the_providers_records
);

async fn void(app: &mut TestApp, key: &str) -> Result<VoidChargeResponse, tonic::Status> {
    app.client
        .void_charge(VoidChargeRequest {
            idempotency_key: key.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn reason(status: &tonic::Status) -> Option<String> {
    status.get_details_error_info().map(|i| i.reason)
}

async fn void_closes_unused_keys_and_reports_used_ones(db: Db) {
    let mut app = TestApp::spawn(db).await;

    // Never used: voided, for good — a later Charge with it cannot capture.
    let unused = void(&mut app, "k-unused").await.unwrap();
    assert!(unused.voided && unused.payment.is_none());
    assert!(
        void(&mut app, "k-unused").await.unwrap().voided,
        "idempotent"
    );
    let late = app
        .client
        .charge(charge_req("k-unused", "o-1", 100, "pm_approve"))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert_eq!(reason(&late).as_deref(), Some("CHARGE_VOIDED"));
    assert!(payments_of_order(&mut app, "o-1").await.is_empty());

    // A capture is reported, not undone: refunding is the caller's call.
    let paid = charge(&mut app, "k-paid", "o-2", 250, "pm_approve").await;
    let answer = void(&mut app, "k-paid").await.unwrap();
    assert!(!answer.voided);
    let payment = answer.payment.unwrap();
    assert_eq!(
        (payment.payment_id.as_str(), payment.status()),
        (paid.payment_id.as_str(), PaymentStatus::Captured)
    );
    let declined = charge(&mut app, "k-declined", "o-3", 250, "pm_decline").await;
    let answer = void(&mut app, "k-declined").await.unwrap();
    assert_eq!(answer.payment.unwrap().payment_id, declined.payment_id);

    // The provider refused (nothing moved, key released): voidable.
    let refused = app
        .client
        .charge(charge_req("k-error", "o-4", 250, "pm_error"))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused).as_deref(), Some("PROVIDER_UNAVAILABLE"));
    assert!(void(&mut app, "k-error").await.unwrap().voided);

    // In flight: ABORTED, then the capture once it is recorded.
    let mut client = app.client.clone();
    let slow = tokio::spawn(async move {
        client
            .charge(charge_req("k-slow", "o-5", 250, "pm_slow"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        void(&mut app, "k-slow").await.unwrap_err().code(),
        Code::Aborted
    );
    let slow = slow.await.unwrap().unwrap().into_inner().payment.unwrap();
    let answer = settle(|| {
        let mut client = app.client.clone();
        async move {
            client
                .void_charge(VoidChargeRequest {
                    idempotency_key: "k-slow".into(),
                })
                .await
        }
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(answer.payment.unwrap().payment_id, slow.payment_id);

    let invalid = void(&mut app, "").await.unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
}

async fn void_settles_an_abandoned_key_from_the_providers_records(db: Db) {
    let mut app = TestApp::spawn(db).await;
    let database = app.database.connect().await;
    // Three charges whose owners died: the first confirmed its intent (the
    // provider took the money), the second created and recorded its intent
    // but never confirmed it (or its confirm is still on the wire), the
    // third never recorded an intent.
    for (key, order, intent) in [
        ("k-taken", "o-taken", "sim_pi_k-taken"),
        ("k-open", "o-open", "sim_pi_k-open"),
        ("k-lost", "o-lost", ""),
    ] {
        sqlx::query(
            "INSERT INTO idempotency_keys (operation, idempotency_key, fingerprint, payment_id, amount_minor, \
               recovery_point, lock_token, locked_until_us, created_at_us, request, intent_id) \
             VALUES ('charge', $1, 'f', $2, 400, 'started', 'dead-owner', 0, 0, $3, $4)",
        )
        .bind(key)
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(format!(
            r#"{{"order_id":"{order}","user_id":"user-1","currency":"USD","amount_minor":400,"payment_method":"pm_approve"}}"#
        ))
        .bind(intent)
        .execute(&database.pool)
        .await
        .unwrap();
    }
    for (key, status) in [("k-taken", "succeeded"), ("k-open", "open")] {
        sqlx::query(
            "INSERT INTO simulated_provider_intents (intent_id, idempotency_key, order_id, currency, amount_minor, \
               payment_method, status, created_at_us) VALUES ($1, $2, 'o', 'USD', 400, 'pm_approve', $3, 0)",
        )
        .bind(format!("sim_pi_{key}"))
        .bind(key)
        .bind(status)
        .execute(&database.pool)
        .await
        .unwrap();
    }

    let taken = void(&mut app, "k-taken").await.unwrap();
    assert!(!taken.voided, "the provider's record wins: money was taken");
    let payment = taken.payment.unwrap();
    assert_eq!(payment.status(), PaymentStatus::Captured);
    assert_eq!(
        app.ledger(&payment.payment_id).await,
        [("CAPTURE".to_owned(), 400)]
    );
    // The open intent is cancelled at the provider: a confirm landing
    // later is refused there.
    let open = void(&mut app, "k-open").await.unwrap();
    assert!(open.voided && open.payment.is_none());
    let status: String = sqlx::query_scalar(
        "SELECT status FROM simulated_provider_intents WHERE intent_id = 'sim_pi_k-open'",
    )
    .fetch_one(&database.pool)
    .await
    .unwrap();
    assert_eq!(status, "canceled");
    let lost = void(&mut app, "k-lost").await.unwrap();
    assert!(lost.voided && lost.payment.is_none());
    for order in ["o-open", "o-lost"] {
        assert!(payments_of_order(&mut app, order).await.is_empty());
    }
}
