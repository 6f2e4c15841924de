//! The Stripe adapter against localstripe, a stateful Stripe emulator
//! (issue 34): through the payment service's API where a client can reach
//! it, and through the adapter itself where only a fault can (a confirm
//! held by a frozen provider, a confirm arriving after its intent was
//! cancelled).

use std::time::Duration;

use mercato_api::Money;
use mercato_payment::provider::{
    IntentState, NewIntent, PaymentProvider, ProviderError, StripeProvider, StripeSettings,
};
use mercato_proto::payment::v1::{PaymentStatus, RefundRequest, mismatch::Kind};
use mercato_testkit::localstripe::LocalStripe;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::*;

/// localstripe, a directory for its log and key, and the adapter's settings.
struct Emulator {
    stripe: LocalStripe,
    settings: StripeSettings,
    _dir: tempfile::TempDir,
}

impl Emulator {
    async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("mercato-localstripe-")
            .tempdir()
            .unwrap();
        let stripe = LocalStripe::start(dir.path()).await;
        let settings = StripeSettings {
            stripe_api_base: stripe.base_url(),
            stripe_secret_key_file: LocalStripe::key_file(dir.path())
                .to_string_lossy()
                .into_owned(),
        };
        Self {
            stripe,
            settings,
            _dir: dir,
        }
    }

    /// The adapter on its own, each call bounded by `timeout` as the service bounds it.
    fn adapter(&self) -> StripeProvider {
        StripeProvider::new(&self.settings, Duration::from_secs(1)).unwrap()
    }

    /// A payment service on `db` that pays through this emulator; its key
    /// lease (3 s) fits a 1 s statement, a 1 s call and a 1 s statement.
    async fn service(&self, db: Db) -> TestApp {
        let stripe = self.settings.clone();
        TestApp::spawn_with(db, move |s| {
            s.payment_provider = mercato_payment::app::ProviderKind::Stripe;
            s.stripe = stripe;
            s.idempotency_lease_secs = 3.0;
            s.provider_timeout_ms = 1000;
            s.database.database_statement_timeout_ms = 1000;
            s.database.database_idle_in_transaction_timeout_ms = 3000;
        })
        .await
    }
}

fn usd_money(minor: i64) -> Money {
    Money {
        currency: "USD".into(),
        minor,
    }
}

fn reason(status: &tonic::Status) -> Option<String> {
    status.get_details_error_info().map(|i| i.reason)
}

/// The provider's intent a payment captured (its ledger's reference).
async fn intent_of(app: &TestApp, payment_id: &str) -> String {
    let db = app.database.connect().await;
    sqlx::query_scalar(
        "SELECT provider_reference FROM payment_ledger WHERE payment_id = $1 AND kind = 'CAPTURE'",
    )
    .bind(payment_id)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_declines_and_refunds_move_money_at_the_emulator() {
    let emulator = Emulator::start().await;
    let mut app = emulator.service(Db::Postgres).await;
    let stripe = emulator.adapter();

    let paid = charge(&mut app, "k-visa", "o-1", 1250, "pm_card_visa").await;
    assert_eq!(paid.status(), PaymentStatus::Captured);
    let intent_id = intent_of(&app, &paid.payment_id).await;
    assert!(intent_id.starts_with("pi_"), "{intent_id}");
    let intent = stripe.intent(&intent_id).await.unwrap().unwrap();
    assert_eq!(
        (intent.state, intent.amount),
        (IntentState::Succeeded, usd_money(1250)),
        "the emulator took the money"
    );
    // A replay answers the payment on record; the emulator is not asked.
    let posts = || {
        std::fs::read_to_string(emulator.stripe.log())
            .unwrap()
            .matches("\"POST ")
            .count()
    };
    let posts_before = posts();
    let again = charge(&mut app, "k-visa", "o-1", 1250, "pm_card_visa").await;
    assert_eq!(again.payment_id, paid.payment_id);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        posts(),
        posts_before,
        "a replay sends nothing to the provider"
    );

    let declined = charge(&mut app, "k-fail", "o-2", 900, "pm_card_chargeCustomerFail").await;
    assert_eq!(declined.status(), PaymentStatus::Declined);
    assert!(
        declined.decline_reason.starts_with("card_declined"),
        "{}",
        declined.decline_reason
    );

    // Not a PaymentMethod id at all: refused here. One Stripe does not
    // know: refused there, nothing taken, the key released.
    let invalid = app
        .client
        .charge(charge_req("k-bad", "o-3", 900, "card_123"))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument, "{invalid:?}");
    let unknown = app
        .client
        .charge(charge_req("k-unknown", "o-3", 900, "pm_approve"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::FailedPrecondition, "{unknown:?}");
    assert_eq!(reason(&unknown).as_deref(), Some("PROVIDER_REFUSED"));

    let refund = |key: &str, minor: i64| RefundRequest {
        idempotency_key: key.into(),
        payment_id: paid.payment_id.clone(),
        amount: usd(minor),
    };
    let partly = app
        .client
        .refund(refund("r-1", 500))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        partly.payment.unwrap().status(),
        PaymentStatus::PartiallyRefunded
    );
    let whole = app
        .client
        .refund(refund("r-2", 750))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(whole.payment.unwrap().status(), PaymentStatus::Refunded);
    for (key, minor) in [("r-1", 500), ("r-2", 750)] {
        let found = stripe.find_refund(key, &intent_id).await.unwrap();
        assert_eq!(found.map(|r| r.amount_minor), Some(minor), "{key}");
    }
    assert_eq!(
        app.ledger(&paid.payment_id).await,
        [
            ("CAPTURE".to_owned(), 1250),
            ("REFUND".to_owned(), 500),
            ("REFUND".to_owned(), 750)
        ]
    );

    // Reconciled with the emulator's records: they agree. (The intent the
    // unknown payment method never made is no record; k-fail's declined
    // one is, and agrees.)
    let agreed = reconcile_now(&mut app).await;
    assert!(agreed.mismatches.is_empty(), "{agreed:#?}");
    assert_eq!(agreed.provider_records, 2, "{agreed:#?}");
    // Money taken at the provider under one of our keys, never recorded.
    let stray = stripe
        .create_intent(NewIntent {
            idempotency_key: "k-stray",
            order_id: "o-stray",
            amount: &usd_money(333),
            payment_method: "pm_card_visa",
        })
        .await
        .unwrap();
    stripe.confirm(&stray.id).await.unwrap();
    let found = reconcile_now(&mut app).await;
    assert_eq!(found.mismatches.len(), 1, "{found:#?}");
    let stray_found = &found.mismatches[0];
    assert_eq!(
        (stray_found.kind(), stray_found.provider_reference.as_str()),
        (Kind::ProviderOnly, stray.id.as_str())
    );
}

/// Voiding a key whose owner died after recording its intent cancels the
/// intent at the emulator; the confirm that arrives afterwards (sent
/// before a partition, say) is refused there and takes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_cancels_the_intent_and_a_late_confirm_is_refused() {
    let emulator = Emulator::start().await;
    let mut app = emulator.service(Db::Postgres).await;
    let stripe = emulator.adapter();
    let intent = stripe
        .create_intent(NewIntent {
            idempotency_key: "k-void",
            order_id: "o-void",
            amount: &usd_money(700),
            payment_method: "pm_card_visa",
        })
        .await
        .unwrap();
    assert_eq!(intent.state, IntentState::Open);
    let db = app.database.connect().await;
    sqlx::query(
        "INSERT INTO idempotency_keys (operation, idempotency_key, fingerprint, payment_id, amount_minor, \
           recovery_point, lock_token, locked_until_us, created_at_us, request, intent_id) \
         VALUES ('charge', 'k-void', 'f', 'p-void', 700, 'started', 'dead-owner', 0, 0, \
           '{\"order_id\":\"o-void\",\"user_id\":\"u\",\"currency\":\"USD\",\"amount_minor\":700,\"payment_method\":\"pm_card_visa\"}', $1)",
    )
    .bind(&intent.id)
    .execute(&db.pool)
    .await
    .unwrap();

    let voided = void_when_free(&app, "k-void").await;
    assert!(voided.voided, "{voided:?}");
    assert_eq!(
        stripe.intent(&intent.id).await.unwrap().unwrap().state,
        IntentState::Canceled
    );

    let late = stripe.confirm(&intent.id).await.unwrap();
    assert_eq!(late.state, IntentState::Canceled, "the emulator refused it");
    let refused = app
        .client
        .charge(charge_req("k-void", "o-void", 700, "pm_card_visa"))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused).as_deref(), Some("CHARGE_VOIDED"));
    assert!(payments_of_order(&mut app, "o-void").await.is_empty());
}

/// The emulator frozen while it confirms: the call's outcome is unknown
/// (no answer), and once it thaws its records say what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_to_a_frozen_emulator_is_unknown_then_read_back() {
    let emulator = Emulator::start().await;
    let stripe = emulator.adapter();
    let intent = stripe
        .create_intent(NewIntent {
            idempotency_key: "k-frozen",
            order_id: "o-frozen",
            amount: &usd_money(300),
            payment_method: "pm_card_visa",
        })
        .await
        .unwrap();
    emulator.stripe.freeze();
    let held = tokio::time::timeout(Duration::from_secs(1), stripe.confirm(&intent.id)).await;
    assert!(held.is_err(), "a frozen emulator answers nothing: {held:?}");
    emulator.stripe.thaw();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = stripe.intent(&intent.id).await.unwrap().unwrap();
        if now.state == IntentState::Succeeded {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The emulator frozen during a charge: the caller learns the outcome is
/// unknown; after it thaws, the retry with the same key charges once —
/// although localstripe ignores `Idempotency-Key` and makes a second
/// intent for the repeated creation (the first stays open, taking nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_to_a_frozen_emulator_is_retried_into_one_charge() {
    let emulator = Emulator::start().await;
    let mut app = emulator.service(Db::Postgres).await;
    emulator.stripe.freeze();
    let unknown = app
        .client
        .charge(charge_req("k-ice", "o-ice", 400, "pm_card_visa"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unavailable, "{unknown:?}");
    assert_eq!(
        reason(&unknown).as_deref(),
        Some("PROVIDER_OUTCOME_UNKNOWN")
    );
    emulator.stripe.thaw();

    let paid = charge_when_free(&app, charge_req("k-ice", "o-ice", 400, "pm_card_visa")).await;
    assert_eq!(paid.status(), PaymentStatus::Captured);
    assert_eq!(payments_of_order(&mut app, "o-ice").await.len(), 1);
}

/// localstripe restarted keeps nothing: a refund of a payment whose intent
/// it forgot is refused with a clear error, the ledger is untouched and
/// the reservation comes back; new charges go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_emulator_gives_clear_errors_and_keeps_the_ledger_whole() {
    let mut emulator = Emulator::start().await;
    let mut app = emulator.service(Db::Postgres).await;
    let paid = charge(&mut app, "k-before", "o-before", 800, "pm_card_visa").await;
    emulator.stripe.restart().await;

    let refused = app
        .client
        .refund(RefundRequest {
            idempotency_key: "r-forgotten".into(),
            payment_id: paid.payment_id.clone(),
            amount: usd(800),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(reason(&refused).as_deref(), Some("PROVIDER_REFUSED"));
    assert!(refused.message().contains("404"), "{}", refused.message());
    assert_eq!(
        app.ledger(&paid.payment_id).await,
        [("CAPTURE".to_owned(), 800)]
    );
    let db = app.database.connect().await;
    let pending: i64 =
        sqlx::query_scalar("SELECT refund_pending_minor FROM payments WHERE payment_id = $1")
            .bind(&paid.payment_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(pending, 0, "the refused refund's reservation came back");

    let after = charge(&mut app, "k-after", "o-after", 500, "pm_card_visa").await;
    assert_eq!(after.status(), PaymentStatus::Captured);
}

/// A refused provider call is an answer: the adapter says so, with
/// Stripe's reason; a connection refused is "nothing sent".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapter_tells_refusals_from_outages() {
    let mut emulator = Emulator::start().await;
    let stripe = emulator.adapter();
    let forgotten = stripe
        .refund("r-x", "pi_nothing", &usd_money(100))
        .await
        .unwrap_err();
    assert!(
        matches!(forgotten, ProviderError::Refused(_)),
        "{forgotten:?}"
    );
    assert_eq!(stripe.intent("pi_nothing").await.unwrap(), None);
    emulator.stripe.stop();
    let down = stripe.intent("pi_nothing").await.unwrap_err();
    assert!(matches!(down, ProviderError::Unavailable(_)), "{down:?}");
}
