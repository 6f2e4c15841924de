//! Charge: outcomes, idempotency (replay, mismatch, concurrency, takeover), validation.

use mercato_api::Money as DomainMoney;
use mercato_payment::domain::ChargeCommand;
use mercato_proto::payment::v1::{
    ListPaymentsRequest, PaymentStatus, list_payments_request::Filter,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::*;

mercato_testkit::on_both_backends!(
    approve_decline_error_and_slow,
    same_key_replays_and_different_parameters_conflict,
    concurrent_requests_with_one_key_capture_once,
    abandoned_key_is_taken_over_after_its_lease,
    validation_and_listing,
);

async fn approve_decline_error_and_slow(db: Db) {
    let mut app = TestApp::spawn(db).await;
    let captured = charge(&mut app, "k-approve", "o-1", 1500, "pm_approve").await;
    assert_eq!(captured.status(), PaymentStatus::Captured);
    assert_eq!(captured.amount, usd(1500));
    assert_eq!(captured.refunded_amount, usd(0));
    assert_eq!(
        app.ledger(&captured.payment_id).await,
        [("CAPTURE".to_owned(), 1500)]
    );

    let declined = charge(&mut app, "k-decline", "o-2", 1500, "pm_decline").await;
    assert_eq!(
        declined.status(),
        PaymentStatus::Declined,
        "a decline is a recorded payment, returned OK"
    );
    assert_eq!(declined.decline_reason, "card declined");
    assert_eq!(
        app.ledger(&declined.payment_id).await,
        [("DECLINE".to_owned(), 0)]
    );

    for _ in 0..2 {
        let status = app
            .client
            .charge(charge_req("k-error", "o-3", 1500, "pm_error"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(
            info.reason, "PROVIDER_UNAVAILABLE",
            "the client learns nothing was captured"
        );
    }
    assert!(
        payments_of_order(&mut app, "o-3").await.is_empty(),
        "pm_error records nothing"
    );

    let started = std::time::Instant::now();
    let slow = charge(&mut app, "k-slow", "o-4", 10, "pm_slow").await;
    assert_eq!(slow.status(), PaymentStatus::Captured);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    assert_eq!(
        app.drain_events(),
        ["payment.captured", "payment.declined", "payment.captured"]
    );
}

async fn same_key_replays_and_different_parameters_conflict(db: Db) {
    let mut app = TestApp::spawn(db).await;
    let first = charge(&mut app, "k", "o-1", 700, "pm_approve").await;
    let again = charge(&mut app, "k", "o-1", 700, "pm_approve").await;
    assert_eq!(again, first, "the stored result is replayed");
    assert_eq!(payments_of_order(&mut app, "o-1").await.len(), 1);
    assert_eq!(app.ledger(&first.payment_id).await.len(), 1, "one capture");

    for different in [
        charge_req("k", "o-1", 701, "pm_approve"),
        charge_req("k", "o-2", 700, "pm_approve"),
        charge_req("k", "o-1", 700, "pm_decline"),
    ] {
        let status = app.client.charge(different).await.unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    }
    // A declined result is replayed too, not retried into a capture.
    let declined = charge(&mut app, "kd", "o-3", 5, "pm_decline").await;
    assert_eq!(
        charge(&mut app, "kd", "o-3", 5, "pm_decline").await,
        declined
    );
}

async fn concurrent_requests_with_one_key_capture_once(db: Db) {
    let app = TestApp::spawn(db).await;
    let calls = (0..20)
        .map(|_| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                client
                    .charge(charge_req("hot-key", "o-hot", 999, "pm_slow"))
                    .await
            })
        })
        .collect::<Vec<_>>();
    let mut ids = std::collections::HashSet::new();
    let mut aborted = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(r) => {
                ids.insert(r.into_inner().payment.unwrap().payment_id);
            }
            Err(s) if s.code() == Code::Aborted => aborted += 1,
            Err(s) => panic!("unexpected {s:?}"),
        }
    }
    assert_eq!(ids.len(), 1, "every success is the same payment");
    assert!(
        aborted > 0,
        "requests overlapping the first one were told to retry"
    );
    let mut app = app;
    let payments = payments_of_order(&mut app, "o-hot").await;
    assert_eq!(payments.len(), 1);
    assert_eq!(
        app.ledger(&payments[0].payment_id).await,
        [("CAPTURE".to_owned(), 999)],
        "never two captures"
    );
}

async fn abandoned_key_is_taken_over_after_its_lease(db: Db) {
    let mut app = TestApp::spawn(db).await;
    // A request that claimed the key and died before recording anything.
    let cmd = ChargeCommand {
        idempotency_key: "k-dead".into(),
        order_id: "o-dead".into(),
        user_id: "user-1".into(),
        amount: DomainMoney {
            currency: "USD".into(),
            minor: 300,
        },
        payment_method: "pm_approve".into(),
    };
    let db = app.database.connect().await;
    for (locked_until, expect) in [(i64::MAX, Code::Aborted), (0, Code::Ok)] {
        sqlx::query("DELETE FROM idempotency_keys")
            .execute(&db.pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO idempotency_keys (operation, idempotency_key, fingerprint, payment_id, amount_minor, \
               recovery_point, lock_token, locked_until_us, created_at_us) \
             VALUES ('charge', 'k-dead', $1, '0190f000-0000-7000-8000-000000000001', 300, 'started', 'dead-owner', $2, 0)",
        )
        .bind(cmd.fingerprint())
        .bind(locked_until)
        .execute(&db.pool)
        .await
        .unwrap();
        let result = app
            .client
            .charge(charge_req("k-dead", "o-dead", 300, "pm_approve"))
            .await;
        assert_eq!(
            result.as_ref().map_or_else(|s| s.code(), |_| Code::Ok),
            expect,
            "{result:?}"
        );
    }
    let payments = payments_of_order(&mut app, "o-dead").await;
    assert_eq!(payments.len(), 1);
    assert_eq!(
        payments[0].payment_id, "0190f000-0000-7000-8000-000000000001",
        "the claimed id is kept"
    );
}

async fn validation_and_listing(db: Db) {
    let mut app = TestApp::spawn(db).await;
    let mut bad = charge_req("", "", 0, "pm_unknown");
    bad.amount.as_mut().unwrap().currency_code = "usd".into();
    let status = app.client.charge(bad).await.unwrap_err();
    let fields: Vec<_> = status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        [
            "idempotency_key",
            "order_id",
            "amount.currency_code",
            "payment_method"
        ]
    );
    let status = app
        .client
        .charge(charge_req("k", "o", -5, "pm_approve"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let status = app
        .client
        .list_payments(ListPaymentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "filter"
    );
    let status = app
        .client
        .get_payment(mercato_proto::payment::v1::GetPaymentRequest {
            payment_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = app
        .client
        .get_payment(mercato_proto::payment::v1::GetPaymentRequest {
            payment_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let mut made = Vec::new();
    for i in 0..5 {
        made.push(
            charge(
                &mut app,
                &format!("k{i}"),
                &format!("o{i}"),
                100 + i,
                "pm_approve",
            )
            .await
            .payment_id,
        );
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .client
            .list_payments(ListPaymentsRequest {
                filter: Some(Filter::UserId("user-1".into())),
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.payments.into_iter().map(|p| p.payment_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    made.reverse();
    assert_eq!(seen, made, "newest first, each once");
}
