//! Provider answers that come late or never, and refunds of "what is left":
//! a slow provider is never called twice for one key, an unknown outcome is
//! never taken for "nothing captured", and every refusal says why.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use mercato_proto::payment::v1::{PaymentStatus, RefundRequest};
use tokio::{sync::Semaphore, time::Instant};
use tonic::Code;
use tonic_types::StatusExt;

use crate::{providers::Counting, support::*};

mercato_testkit::on_both_backends!(
    a_provider_slower_than_the_lease_is_called_once,
    refunds_of_what_is_left_and_why_they_are_refused
);

fn reason(status: &tonic::Status) -> Option<String> {
    status.get_details_error_info().map(|i| i.reason)
}

/// Retries a charge as a client would until it is answered, for `limit`.
async fn charge_until_answered(
    app: &TestApp,
    key: &str,
    limit: Duration,
) -> (
    mercato_proto::payment::v1::Payment,
    Vec<(Code, Option<String>)>,
) {
    let started = Instant::now();
    let mut refusals = Vec::new();
    loop {
        match app
            .client
            .clone()
            .charge(charge_req(key, "o-slow", 500, "pm_slow"))
            .await
        {
            Ok(answer) => return (answer.into_inner().payment.unwrap(), refusals),
            Err(status) => {
                refusals.push((status.code(), reason(&status)));
                assert!(started.elapsed() < limit, "no answer: {refusals:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The provider needs 3 s, the key's lease is 1 s and provider calls time
/// out after 0.4 s: the first call's outcome is unknown, the key stays
/// locked, and the retry that takes it over after the lease learns the
/// capture from the provider's records — the provider is asked once.
async fn a_provider_slower_than_the_lease_is_called_once(db: Db) {
    let (provider, calls) = Counting::provider(Duration::from_secs(3), None);
    let app = TestApp::spawn_with_provider(db, quick_takeover, Some(provider)).await;
    let (payment, refusals) = charge_until_answered(&app, "k-slow", Duration::from_secs(10)).await;
    assert_eq!(payment.status(), PaymentStatus::Captured);
    assert_eq!(
        refusals.first(),
        Some(&(
            Code::Unavailable,
            Some("PROVIDER_OUTCOME_UNKNOWN".to_owned())
        )),
        "an unknown outcome, never `nothing captured`: {refusals:?}"
    );
    assert!(
        refusals
            .iter()
            .all(|(code, reason)| *code != Code::Unavailable
                || reason.as_deref() != Some("PROVIDER_UNAVAILABLE")),
        "{refusals:?}"
    );
    assert_eq!(
        calls.charges.load(Ordering::SeqCst),
        1,
        "the provider was asked once"
    );
    assert_eq!(calls.most_at_once.load(Ordering::SeqCst), 1);
    assert_eq!(
        app.ledger(&payment.payment_id).await,
        [("CAPTURE".to_owned(), 500)]
    );
}

/// The same with every shipped default: the provider takes longer than the
/// default provider timeout (5 s); the lease (15 s) runs out and the key is
/// settled from the provider's records, by a retry or by the sweeper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_slower_than_its_shipped_timeout_is_called_once() {
    let (provider, calls) = Counting::provider(Duration::from_secs(7), None);
    let app = TestApp::spawn_with_provider(Db::Postgres, |_| {}, Some(provider)).await;
    let defaults = mercato_payment::Settings::default();
    assert!(Duration::from_millis(defaults.provider_timeout_ms) < Duration::from_secs(7));
    let (payment, refusals) =
        charge_until_answered(&app, "k-slower", Duration::from_secs(40)).await;
    assert_eq!(payment.status(), PaymentStatus::Captured);
    assert_eq!(
        refusals.first().map(|r| r.1.as_deref()),
        Some(Some("PROVIDER_OUTCOME_UNKNOWN")),
        "{refusals:?}"
    );
    assert_eq!(calls.charges.load(Ordering::SeqCst), 1);
    assert_eq!(
        app.ledger(&payment.payment_id).await,
        [("CAPTURE".to_owned(), 500)]
    );
}

fn rest(key: &str, payment_id: &str) -> RefundRequest {
    RefundRequest {
        idempotency_key: key.into(),
        payment_id: payment_id.into(),
        amount: None,
    }
}

fn exactly(key: &str, payment_id: &str, minor: i64) -> RefundRequest {
    RefundRequest {
        amount: usd(minor),
        ..rest(key, payment_id)
    }
}

async fn refunds_of_what_is_left_and_why_they_are_refused(db: Db) {
    let held = Arc::new(Semaphore::new(0));
    let (provider, _) = Counting::provider(Duration::from_millis(300), Some(held.clone()));
    let mut app = TestApp::spawn_with_provider(db, |_| {}, Some(provider)).await;
    held.add_permits(100);
    let paid = charge(&mut app, "c", "o", 1000, "pm_approve").await;
    let client = app.client.clone();
    let refund = |req: RefundRequest| {
        let mut client = client.clone();
        async move {
            client
                .refund(req)
                .await
                .map(|r| r.into_inner().payment.unwrap())
        }
    };

    let part = refund(exactly("r-300", &paid.payment_id, 300))
        .await
        .unwrap();
    assert_eq!(part.refunded_amount, usd(300));
    let too_much = refund(exactly("r-800", &paid.payment_id, 800))
        .await
        .unwrap_err();
    assert_eq!(too_much.code(), Code::FailedPrecondition);
    let info = too_much.get_details_error_info().unwrap();
    assert_eq!(info.reason, "AMOUNT_EXCEEDS_REFUNDABLE");
    assert_eq!(
        info.metadata.get("refundable_minor").map(String::as_str),
        Some("700")
    );

    let the_rest = refund(rest("r-rest", &paid.payment_id)).await.unwrap();
    assert_eq!(the_rest.status(), PaymentStatus::Refunded);
    assert_eq!(the_rest.refunded_amount, usd(1000), "300 + the 700 left");
    assert_eq!(
        refund(rest("r-rest", &paid.payment_id))
            .await
            .unwrap()
            .refunded_amount,
        usd(1000),
        "replaying the key refunds nothing more"
    );
    let nothing = refund(rest("r-again", &paid.payment_id)).await.unwrap_err();
    assert_eq!(reason(&nothing).as_deref(), Some("NOTHING_LEFT_TO_REFUND"));

    let declined = charge(&mut app, "d", "o-2", 1000, "pm_decline").await;
    let not_captured = refund(rest("r-d", &declined.payment_id)).await.unwrap_err();
    assert_eq!(
        reason(&not_captured).as_deref(),
        Some("PAYMENT_NOT_CAPTURED")
    );

    // A refund of everything still at the provider holds what is left.
    let second = charge(&mut app, "c2", "o-3", 1000, "pm_approve").await;
    let permits = held.available_permits();
    held.forget_permits(permits);
    let in_flight = tokio::spawn(refund(rest("r-held", &second.payment_id)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pending = refund(rest("r-other", &second.payment_id))
        .await
        .unwrap_err();
    assert_eq!(reason(&pending).as_deref(), Some("REFUND_PENDING"));
    held.add_permits(1);
    assert_eq!(in_flight.await.unwrap().unwrap().refunded_amount, usd(1000));
    assert_eq!(
        app.ledger(&second.payment_id).await,
        [("CAPTURE".to_owned(), 1000), ("REFUND".to_owned(), 1000)]
    );
}
