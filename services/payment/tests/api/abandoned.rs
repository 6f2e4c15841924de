//! Keys whose owner died mid-call: their reservations come back once their
//! lease is over, without anyone retrying them — also while another key's
//! row is held by a session that froze.

use std::time::Duration;

use mercato_proto::payment::v1::{Payment, PaymentStatus, RefundRequest};
use sqlx::Connection;

use crate::support::*;

mercato_testkit::on_both_backends!(an_abandoned_refund_key_is_swept_and_its_reservation_returned);

async fn an_abandoned_refund_key_is_swept_and_its_reservation_returned(db: Db) {
    let mut app = TestApp::spawn_with(db, quick_takeover).await;
    let paid = charge(&mut app, "c", "o", 1000, "pm_approve").await;
    // A refund of 300 claimed its key and reserved its amount, then its
    // process died before calling the provider: the row says `started`,
    // its lease ran out a moment ago, and nobody will retry that key.
    let db = app.database.connect().await;
    abandon_refund(&db, "abandoned-1", &paid.payment_id, 300, 1_000).await;

    // The whole capture becomes refundable again by itself.
    let refunded =
        refund_whole_when_free(&mut app, &paid.payment_id, Duration::from_secs(10)).await;
    assert_eq!(refunded.status(), PaymentStatus::Refunded);
    assert_eq!(
        app.ledger(&paid.payment_id).await,
        [("CAPTURE".to_owned(), 1000), ("REFUND".to_owned(), 1000)],
        "the abandoned refund never reached the provider, so it is not in the ledger"
    );
}

/// Two abandoned keys, the older one's row held by another session (an
/// owner frozen inside its transaction): the sweeper settles the other
/// instead of waiting for it (before, every pass stopped at the held row),
/// and the held one once it is let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_passes_over_a_key_another_session_holds() {
    let mut app = TestApp::spawn_with(Db::Postgres, quick_takeover).await;
    let held = charge(&mut app, "c-held", "o-held", 1000, "pm_approve").await;
    let free = charge(&mut app, "c-free", "o-free", 1000, "pm_approve").await;
    let db = app.database.connect().await;
    abandon_refund(&db, "abandoned-held", &held.payment_id, 300, 2_000).await;
    abandon_refund(&db, "abandoned-free", &free.payment_id, 300, 1_000).await;
    let mut outsider = sqlx::PgConnection::connect(&app.database.url)
        .await
        .unwrap();
    let mut holding = outsider.begin().await.unwrap();
    sqlx::query(
        "SELECT 1 FROM idempotency_keys WHERE idempotency_key = 'abandoned-held' FOR UPDATE",
    )
    .execute(&mut *holding)
    .await
    .unwrap();

    let refunded = refund_whole_when_free(&mut app, &free.payment_id, Duration::from_secs(5)).await;
    assert_eq!(refunded.status(), PaymentStatus::Refunded);

    holding.rollback().await.unwrap();
    let refunded = refund_whole_when_free(&mut app, &held.payment_id, Duration::from_secs(5)).await;
    assert_eq!(refunded.status(), PaymentStatus::Refunded);
}

/// A refund key of `amount` on `payment_id` claimed by an owner that died
/// before calling the provider, its lease over `ago_us` ago, and its
/// reservation taken.
async fn abandon_refund(
    db: &mercato_database::Database,
    key: &str,
    payment_id: &str,
    amount: i64,
    ago_us: i64,
) {
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
         VALUES ('refund', $1, $2, $3, $4, 'started', 'dead-owner', $5, $5)",
    )
    .bind(key)
    .bind(format!("refund|{payment_id}|USD|{amount}"))
    .bind(payment_id)
    .bind(amount)
    .bind(now_us - ago_us)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE payments SET refund_pending_minor = refund_pending_minor + $2 WHERE payment_id = $1",
    )
    .bind(payment_id)
    .bind(amount)
    .execute(&db.pool)
    .await
    .unwrap();
}

/// Refunds the whole capture (1000) of `payment_id` as soon as no
/// reservation stands in the way, within `within`.
async fn refund_whole_when_free(app: &mut TestApp, payment_id: &str, within: Duration) -> Payment {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let answer = app
            .client
            .refund(RefundRequest {
                idempotency_key: format!("full-{}", uuid::Uuid::now_v7()),
                payment_id: payment_id.to_owned(),
                amount: usd(1000),
            })
            .await;
        match answer {
            Ok(answer) => return answer.into_inner().payment.unwrap(),
            Err(status) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the abandoned reservation was never returned: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
