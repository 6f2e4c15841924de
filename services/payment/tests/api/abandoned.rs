//! Keys whose owner died mid-call: what the provider did is recorded once
//! their lease is over, without anyone retrying them — also while another
//! key's row is held by a session that froze; what it has no record of
//! keeps its reservation (it may still land) until the caller retries.

use std::time::Duration;

use mercato_proto::payment::v1::{PaymentStatus, RefundRequest};
use sqlx::Connection;

use crate::support::*;

mercato_testkit::on_both_backends!(abandoned_refund_keys_are_settled_from_the_providers_records);

/// A canary runs with `BACKGROUND_WORKERS=false`: it serves its calls but
/// settles no abandoned key, whoever abandoned it; a stable replica on the
/// same database does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_background_workers_leaves_abandoned_keys_to_the_others() {
    let mut canary = TestApp::spawn_with(Db::Postgres, |s| {
        quick_takeover(s);
        s.background_workers = false;
    })
    .await;
    let paid = charge(&mut canary, "c", "o", 1000, "pm_approve").await;
    let db = canary.database.connect().await;
    abandon_refund(&db, "landed", &paid.payment_id, "c", 300, Landed::Yes).await;
    // Well past the lease and the stable's sweep interval (0.5 s here).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        canary.ledger(&paid.payment_id).await,
        [("CAPTURE".to_owned(), 1000)],
        "a replica without background workers swept"
    );

    let mut settings = mercato_payment::Settings {
        server: mercato_platform::ServerSettings::ephemeral(),
        auth: mercato_testkit::auth::settings(),
        database: canary.database.settings(),
        ..mercato_payment::Settings::default()
    };
    quick_takeover(&mut settings);
    let mut stable = mercato_platform::Server::bind(settings.server.clone())
        .await
        .unwrap();
    let feed = mercato_activity::ActivityFeed::in_process();
    mercato_payment::install(&mut stable, &settings, feed)
        .await
        .unwrap();
    stable.protect(&settings.auth, None).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(stable.run(stop.clone().cancelled_owned()));
    let ledger = ledger_when(&canary, &paid.payment_id, 2).await;
    assert_eq!(
        ledger,
        [("CAPTURE".to_owned(), 1000), ("REFUND".to_owned(), 300)]
    );
    stop.cancel();
    running.await.unwrap().unwrap();
}

async fn abandoned_refund_keys_are_settled_from_the_providers_records(db: Db) {
    let mut app = TestApp::spawn_with(db, quick_takeover).await;
    let paid = charge(&mut app, "c", "o", 1000, "pm_approve").await;
    // Two refunds claimed their keys and reserved their amounts, then their
    // process died: the provider made the first (300), has no record of
    // the second (200: never sent, or still on the wire).
    let db = app.database.connect().await;
    abandon_refund(&db, "landed", &paid.payment_id, "c", 300, Landed::Yes).await;
    abandon_refund(&db, "unheard", &paid.payment_id, "c", 200, Landed::No).await;

    // The sweeper records the first by itself.
    let ledger = ledger_when(&app, &paid.payment_id, 2).await;
    assert_eq!(
        ledger,
        [("CAPTURE".to_owned(), 1000), ("REFUND".to_owned(), 300)]
    );
    // The second keeps its reservation: only 500 are left to refund.
    let refused = app
        .client
        .refund(refund_of(&paid.payment_id, "more", 700))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    // Its caller's retry finishes it (once the sweeper's look-up, which
    // holds the key for a lease, is over); the rest can be refunded.
    let retried = settle(|| {
        let mut client = app.client.clone();
        let request = refund_of(&paid.payment_id, "unheard", 200);
        async move { client.refund(request).await }
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        retried
            .payment
            .unwrap()
            .refunded_amount
            .unwrap()
            .amount_minor,
        500
    );
    let rest = app
        .client
        .refund(refund_of(&paid.payment_id, "rest", 500))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.payment.unwrap().status(), PaymentStatus::Refunded);
    assert_eq!(
        app.ledger(&paid.payment_id).await,
        [
            ("CAPTURE".to_owned(), 1000),
            ("REFUND".to_owned(), 300),
            ("REFUND".to_owned(), 200),
            ("REFUND".to_owned(), 500)
        ],
    );
}

/// Two abandoned keys, one's row held by another session (an owner frozen
/// inside its transaction): the sweeper settles the other instead of
/// waiting for it (before, every pass stopped at the held row), and the
/// held one once it is let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_passes_over_a_key_another_session_holds() {
    let mut app = TestApp::spawn_with(Db::Postgres, quick_takeover).await;
    let held = charge(&mut app, "c-held", "o-held", 1000, "pm_approve").await;
    let free = charge(&mut app, "c-free", "o-free", 1000, "pm_approve").await;
    let db = app.database.connect().await;
    abandon_refund(
        &db,
        "abandoned-held",
        &held.payment_id,
        "c-held",
        300,
        Landed::Yes,
    )
    .await;
    abandon_refund(
        &db,
        "abandoned-free",
        &free.payment_id,
        "c-free",
        300,
        Landed::Yes,
    )
    .await;
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

    ledger_when(&app, &free.payment_id, 2).await;
    assert_eq!(
        app.ledger(&held.payment_id).await.len(),
        1,
        "held, not settled"
    );

    holding.rollback().await.unwrap();
    ledger_when(&app, &held.payment_id, 2).await;
}

fn refund_of(payment_id: &str, key: &str, minor: i64) -> RefundRequest {
    RefundRequest {
        idempotency_key: key.into(),
        payment_id: payment_id.to_owned(),
        amount: usd(minor),
    }
}

/// The ledger of `payment_id` once it has `entries` entries (within 10 s).
async fn ledger_when(app: &TestApp, payment_id: &str, entries: usize) -> Vec<(String, i64)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ledger = app.ledger(payment_id).await;
        if ledger.len() >= entries {
            return ledger;
        }
        assert!(tokio::time::Instant::now() < deadline, "{ledger:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether an abandoned refund reached the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Landed {
    Yes,
    No,
}

/// A refund key of `amount` on `payment_id` (charged with `charge_key`)
/// claimed by an owner that died, its lease over a moment ago, and its
/// reservation taken; the provider made the refund if `landed`.
async fn abandon_refund(
    db: &mercato_database::Database,
    key: &str,
    payment_id: &str,
    charge_key: &str,
    amount: i64,
    landed: Landed,
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
    .bind(now_us - 1_000)
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
    if landed == Landed::Yes {
        let intent = format!("sim_pi_{charge_key}");
        sqlx::query(
            "INSERT INTO simulated_provider_refunds (refund_id, idempotency_key, intent_id, amount_minor, created_at_us) \
             VALUES ($1, $2, $3, $4, 0)",
        )
        .bind(format!("sim_re_{key}"))
        .bind(key)
        .bind(&intent)
        .bind(amount)
        .execute(&db.pool)
        .await
        .unwrap();
        sqlx::query(
            "UPDATE simulated_provider_intents SET refunded_minor = refunded_minor + $2 WHERE intent_id = $1",
        )
        .bind(&intent)
        .bind(amount)
        .execute(&db.pool)
        .await
        .unwrap();
    }
}
