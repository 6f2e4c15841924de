//! Refund: partial and full, never more than captured, idempotent, validated.

use mercato_proto::{
    common::v1::Money,
    payment::v1::{PaymentStatus, RefundRequest},
};
use tonic::Code;

use crate::support::*;

mercato_testkit::on_both_backends!(
    partial_then_full_refund_and_replays,
    concurrent_refunds_never_exceed_the_capture,
    refunds_that_cannot_happen
);

async fn refund(app: &mut TestApp, request: RefundRequest) -> mercato_proto::payment::v1::Payment {
    app.client
        .refund(request)
        .await
        .expect("refund")
        .into_inner()
        .payment
        .expect("payment")
}

fn refund_req(key: &str, payment_id: &str, minor: i64) -> RefundRequest {
    RefundRequest {
        idempotency_key: key.into(),
        payment_id: payment_id.into(),
        amount: usd(minor),
    }
}

async fn partial_then_full_refund_and_replays(db: Db) {
    let mut app = TestApp::spawn(db).await;
    let paid = charge(&mut app, "c", "o", 1000, "pm_approve").await;
    let partial = refund(&mut app, refund_req("r1", &paid.payment_id, 400)).await;
    assert_eq!(partial.status(), PaymentStatus::PartiallyRefunded);
    assert_eq!(partial.refunded_amount, usd(400));
    // The same key again does not refund twice.
    let replay = refund(&mut app, refund_req("r1", &paid.payment_id, 400)).await;
    assert_eq!(replay.refunded_amount, usd(400));
    let status = app
        .client
        .refund(refund_req("r1", &paid.payment_id, 401))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);

    let full = refund(&mut app, refund_req("r2", &paid.payment_id, 600)).await;
    assert_eq!(full.status(), PaymentStatus::Refunded);
    assert_eq!(full.refunded_amount, usd(1000));
    assert_eq!(
        app.ledger(&paid.payment_id).await,
        [
            ("CAPTURE".to_owned(), 1000),
            ("REFUND".to_owned(), 400),
            ("REFUND".to_owned(), 600)
        ]
    );
    assert_eq!(
        app.drain_events(),
        ["payment.captured", "payment.refunded", "payment.refunded"]
    );
}

async fn concurrent_refunds_never_exceed_the_capture(db: Db) {
    let mut app = TestApp::spawn(db).await;
    let paid = charge(&mut app, "c", "o", 100, "pm_approve").await;
    let calls = (0..10)
        .map(|i| {
            let client = app.client.clone();
            let req = refund_req(&format!("r{i}"), &paid.payment_id, 30);
            tokio::spawn(async move {
                settle(|| {
                    let mut client = client.clone();
                    let req = req.clone();
                    async move { client.refund(req).await }
                })
                .await
            })
        })
        .collect::<Vec<_>>();
    let mut ok = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) => assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}"),
        }
    }
    assert_eq!(ok, 3, "3 × 30 fit into 100, a fourth would not");
    let payment = app
        .client
        .get_payment(mercato_proto::payment::v1::GetPaymentRequest {
            payment_id: paid.payment_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(payment.refunded_amount, usd(90));
    let refunded: i64 = app
        .ledger(&paid.payment_id)
        .await
        .iter()
        .filter(|(k, _)| k == "REFUND")
        .map(|(_, a)| a)
        .sum();
    assert_eq!(refunded, 90, "ledger and balance agree");
}

async fn refunds_that_cannot_happen(db: Db) {
    let mut app = TestApp::spawn(db).await;
    let paid = charge(&mut app, "c", "o", 100, "pm_approve").await;
    let declined = charge(&mut app, "d", "o2", 100, "pm_decline").await;
    let cases = [
        (
            refund_req("x1", &paid.payment_id, 101),
            Code::FailedPrecondition,
        ),
        (
            refund_req("x2", &declined.payment_id, 1),
            Code::FailedPrecondition,
        ),
        (
            refund_req("x3", &uuid::Uuid::now_v7().to_string(), 1),
            Code::NotFound,
        ),
        (refund_req("x4", &paid.payment_id, 0), Code::InvalidArgument),
        (refund_req("", "not-a-uuid", 1), Code::InvalidArgument),
        (
            RefundRequest {
                amount: Some(Money {
                    currency_code: "EUR".into(),
                    amount_minor: 1,
                }),
                ..refund_req("x5", &paid.payment_id, 1)
            },
            Code::InvalidArgument,
        ),
    ];
    for (req, code) in cases {
        let status = app.client.refund(req.clone()).await.unwrap_err();
        assert_eq!(status.code(), code, "{req:?}: {status:?}");
    }
    // Refused refunds leave nothing behind: the whole amount is still refundable.
    let full = refund(&mut app, refund_req("x1", &paid.payment_id, 100)).await;
    assert_eq!(full.status(), PaymentStatus::Refunded);
}
