//! Keys whose owner died mid-call: their reservations come back once their
//! lease is over, without anyone retrying them.

use std::time::Duration;

use mercato_proto::payment::v1::{PaymentStatus, RefundRequest};

use crate::support::*;

mercato_testkit::on_both_backends!(an_abandoned_refund_key_is_swept_and_its_reservation_returned);

async fn an_abandoned_refund_key_is_swept_and_its_reservation_returned(db: Db) {
    let mut app = TestApp::spawn_with(db, |s| {
        s.idempotency_lease_secs = 1.0;
        s.provider_timeout_ms = 500;
    })
    .await;
    let paid = charge(&mut app, "c", "o", 1000, "pm_approve").await;
    // A refund of 300 claimed its key and reserved its amount, then its
    // process died before calling the provider: the row says `started`,
    // its lease ran out a moment ago, and nobody will retry that key.
    let db = app.database.connect().await;
    let now_us = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap();
    sqlx::query(
        "INSERT INTO idempotency_keys (operation, idempotency_key, fingerprint, payment_id, amount_minor, \
           recovery_point, lock_token, locked_until_us, created_at_us) \
         VALUES ('refund', 'abandoned-1', $1, $2, 300, 'started', 'dead-owner', $3, $3)",
    )
    .bind(format!("refund|{}|USD|300", paid.payment_id))
    .bind(&paid.payment_id)
    .bind(now_us - 1_000)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE payments SET refund_pending_minor = 300 WHERE payment_id = $1")
        .bind(&paid.payment_id)
        .execute(&db.pool)
        .await
        .unwrap();

    // The whole capture becomes refundable again by itself.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let refunded = loop {
        let answer = app
            .client
            .refund(RefundRequest {
                idempotency_key: format!("full-{}", uuid::Uuid::now_v7()),
                payment_id: paid.payment_id.clone(),
                amount: usd(1000),
            })
            .await;
        match answer {
            Ok(answer) => break answer.into_inner().payment.unwrap(),
            Err(status) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the abandoned reservation was never returned: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(refunded.status(), PaymentStatus::Refunded);
    assert_eq!(
        app.ledger(&paid.payment_id).await,
        [("CAPTURE".to_owned(), 1000), ("REFUND".to_owned(), 1000)],
        "the abandoned refund never reached the provider, so it is not in the ledger"
    );
}
