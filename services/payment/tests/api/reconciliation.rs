//! Reconciliation (issue 34): the ledger against the provider's own
//! records, every disagreement reported by kind — by the `Reconcile` RPC
//! and by the gauge each replica sets on its own schedule.

use std::time::Duration;

use mercato_proto::payment::v1::{
    ReconcileRequest, ReconcileResponse, RefundRequest, mismatch::Kind,
    payment_service_client::PaymentServiceClient,
};
use mercato_testkit::metrics::Scrape;
use tonic::Code;

use crate::support::*;

mercato_testkit::on_both_backends!(every_disagreement_is_reported_by_kind);

fn now_us() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

fn kinds(answer: &ReconcileResponse) -> Vec<(Kind, String)> {
    let mut found: Vec<_> = answer
        .mismatches
        .iter()
        .map(|m| (m.kind(), m.idempotency_key.clone()))
        .collect();
    found.sort();
    found
}

async fn every_disagreement_is_reported_by_kind(db: Db) {
    let mut app = TestApp::spawn(db).await;
    let paid = charge(&mut app, "k-paid", "o-1", 1000, "pm_approve").await;
    charge(&mut app, "k-declined", "o-2", 500, "pm_decline").await;
    charge(&mut app, "k-forgotten", "o-3", 200, "pm_approve").await;
    charge(&mut app, "k-cancelled", "o-4", 300, "pm_approve").await;
    app.client
        .refund(RefundRequest {
            idempotency_key: "r-1".into(),
            payment_id: paid.payment_id.clone(),
            amount: usd(300),
        })
        .await
        .unwrap();

    let agreed = reconcile_now(&mut app).await;
    assert!(agreed.mismatches.is_empty(), "{agreed:?}");
    assert_eq!((agreed.provider_records, agreed.ledger_payments), (4, 4));

    // Now make them disagree, one way each.
    let db = app.database.connect().await;
    for sql in [
        // Money the ledger never heard of (a charge landing after its void, say).
        format!(
            "INSERT INTO simulated_provider_intents (intent_id, idempotency_key, order_id, currency, amount_minor, \
               payment_method, status, created_at_us) VALUES ('sim_pi_k-stray', 'k-stray', 'o-5', 'USD', 700, \
               'pm_approve', 'succeeded', {})",
            now_us()
        ),
        // A refund the provider made twice.
        "UPDATE simulated_provider_intents SET refunded_minor = 600 WHERE idempotency_key = 'k-paid'".into(),
        // A capture the provider lost, and one it cancelled.
        "DELETE FROM simulated_provider_intents WHERE idempotency_key = 'k-forgotten'".into(),
        "UPDATE simulated_provider_intents SET status = 'canceled' WHERE idempotency_key = 'k-cancelled'".into(),
        // A refund whose outcome nobody knows yet.
        format!(
            "INSERT INTO idempotency_keys (operation, idempotency_key, fingerprint, payment_id, amount_minor, \
               recovery_point, lock_token, locked_until_us, created_at_us) \
             VALUES ('refund', 'r-unknown', 'f', '{}', 100, 'started', 't', 0, {})",
            paid.payment_id,
            now_us() - 1_000_000
        ),
    ] {
        sqlx::query(&sql).execute(&db.pool).await.unwrap();
    }
    let found = reconcile_now(&mut app).await;
    assert_eq!(
        kinds(&found),
        [
            (Kind::ProviderOnly, "k-stray".to_owned()),
            (Kind::LedgerOnly, "k-forgotten".to_owned()),
            (Kind::Amount, "k-paid".to_owned()),
            (Kind::Status, "k-cancelled".to_owned()),
            (Kind::UnsettledKey, "r-unknown".to_owned()),
        ],
        "{found:#?}"
    );
    let amount = found
        .mismatches
        .iter()
        .find(|m| m.kind() == Kind::Amount)
        .unwrap();
    assert_eq!(amount.payment_id, paid.payment_id);
    assert!(
        amount.detail.contains("refunded 600") && amount.detail.contains("ledger 300"),
        "{}",
        amount.detail
    );
}

/// Only admins reconcile; a window must be a window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_is_for_admins_and_checks_its_window() {
    let mut app = TestApp::spawn(Db::Postgres).await;
    let mut user = PaymentServiceClient::new(auth::with_token(
        channel(app.addr).await,
        &auth::token("u-1", &["user"]),
    ));
    let denied = user
        .reconcile(ReconcileRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    let backwards = app
        .client
        .reconcile(ReconcileRequest {
            start_time: Some(prost_types::Timestamp {
                seconds: 2_000_000_000,
                nanos: 0,
            }),
            end_time: Some(prost_types::Timestamp {
                seconds: 1_000_000_000,
                nanos: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(backwards.code(), Code::InvalidArgument, "{backwards:?}");
    // By default: the day before two leases ago.
    let default = app
        .client
        .reconcile(ReconcileRequest::default())
        .await
        .unwrap()
        .into_inner();
    let (start, end) = (default.start_time.unwrap(), default.end_time.unwrap());
    assert_eq!(end.seconds - start.seconds, 86_400);
    let lag = now_us() / 1_000_000 - end.seconds;
    assert!(
        (29..=32).contains(&lag),
        "ends {lag} s ago (two 15 s leases)"
    );
}

/// Each replica reconciles on its own schedule and sets the gauge the
/// alert watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gauge_counts_what_the_last_run_found() {
    let app = TestApp::spawn_with(Db::Postgres, |s| {
        quick_takeover(s);
        s.reconcile_interval_secs = 1;
    })
    .await;
    let gauge = |scrape: &Scrape| {
        scrape.value(
            "payment_reconciliation_mismatches",
            &[("kind", "provider_only")],
        )
    };
    assert_eq!(gauge(&Scrape::from(app.metrics).await), 0.0);
    let db = app.database.connect().await;
    sqlx::query(&format!(
        "INSERT INTO simulated_provider_intents (intent_id, idempotency_key, order_id, currency, amount_minor, \
           payment_method, status, created_at_us) VALUES ('sim_pi_k-stray', 'k-stray', 'o', 'USD', 700, \
           'pm_approve', 'succeeded', {})",
        now_us() - 10_000_000
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gauge(&Scrape::from(app.metrics).await) != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gauge never rose"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
