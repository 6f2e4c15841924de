//! A key's lease is stamped by the database in the statement that claims
//! it (issue 33, finding 4), not computed before the statement waited for
//! a connection or on a replica's own clock: a claim is never born
//! expired, so no second claimant takes it over while its owner works.

use std::{sync::Arc, time::Duration};

use mercato_activity::ActivityFeed;
use mercato_api::Money;
use mercato_database::{Database, DbClock};
use mercato_payment::{
    domain::{ChargeCommand, PaymentStatus},
    error::PaymentError,
    payments::{PaymentMetrics, Payments},
    provider::{NewIntent, PaymentProvider},
    reconcile::Voided,
    store::{Claim, PaymentStore},
};

use crate::{
    providers::{Held, Late, SlowLookUps},
    support::*,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claims_lease_is_stamped_by_the_database_not_by_its_claimant() {
    let test = TestDatabase::create(Db::Postgres).await;
    let db = test.connect().await;
    db.migrate(&mercato_payment::store::MIGRATIONS)
        .await
        .unwrap();
    // A replica a minute behind that has not synced its clock yet: to the
    // key, the same as a claim that waited a minute for a connection.
    let behind = Database {
        clock: DbClock::with_local_skew(db.pool.clone(), db.backend, -60_000_000),
        ..db.clone()
    };
    let lease = Duration::from_secs(15);
    let cmd = charge_of("k-1");
    let claim = PaymentStore::new(&behind, lease)
        .claim_charge(&cmd, None)
        .await
        .unwrap();
    assert!(matches!(claim, Claim::Owned(_)), "{claim:?}");

    let (locked_until, now): (i64, i64) = sqlx::query_as(
        "SELECT locked_until_us, CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT) \
         FROM idempotency_keys WHERE idempotency_key = 'k-1'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        (locked_until - (now + 15_000_000)).abs() < 1_000_000,
        "the lease ends {} µs from now",
        locked_until - now
    );
    let second = PaymentStore::new(&db, lease).claim_charge(&cmd, None).await;
    assert!(
        matches!(second, Err(PaymentError::KeyInProgress)),
        "{second:?}"
    );
}

fn charge_of(key: &str) -> ChargeCommand {
    ChargeCommand {
        idempotency_key: key.into(),
        order_id: "o-1".into(),
        user_id: "u-1".into(),
        amount: Money {
            currency: "USD".into(),
            minor: 1000,
        },
        payment_method: "pm_approve".into(),
    }
}

/// A migrated database.
async fn migrated() -> (TestDatabase, Database) {
    let test = TestDatabase::create(Db::Postgres).await;
    let db = test.connect().await;
    db.migrate(&mercato_payment::store::MIGRATIONS)
        .await
        .unwrap();
    (test, db)
}

/// Charge key `key` claimed by an owner that created and recorded its
/// intent at `provider`, then died (its lease already over).
async fn abandon_charge(db: &Database, provider: &SlowLookUps, key: &str) {
    let cmd = charge_of(key);
    let Claim::Owned(mut claim) = PaymentStore::new(db, Duration::from_millis(1))
        .claim_charge(&cmd, None)
        .await
        .unwrap()
    else {
        panic!("a fresh key is owned");
    };
    let intent = provider
        .create_intent(NewIntent {
            idempotency_key: key,
            order_id: &cmd.order_id,
            amount: &cmd.amount,
            payment_method: &cmd.payment_method,
        })
        .await
        .unwrap();
    PaymentStore::new(db, Duration::from_millis(1))
        .record_intent(&mut claim, &intent.id)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// The payment use cases over `db` with a 1 s key lease and `provider`
/// (calls time out after 2 s, longer than these tests' look-ups).
fn payments(db: &Database, provider: Arc<SlowLookUps>) -> Payments {
    Payments::new(
        PaymentStore::new(db, Duration::from_secs(1)),
        provider,
        ActivityFeed::in_process(),
        PaymentMetrics::default(),
        Duration::from_secs(2),
    )
}

/// Issue 33: the owner's whole work fits its lease. A taken-over key's
/// intent is first looked up at the provider; the confirm that follows
/// starts with a whole lease again, not with what the look-up left of it
/// (before the fix: 0.4 s of 1 s after a 0.6 s look-up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_after_a_look_up_starts_with_a_whole_lease() {
    let (_test, db) = migrated().await;
    let provider = Arc::new(SlowLookUps::new(&db, &[Duration::from_millis(600)]));
    abandon_charge(&db, &provider, "k-look").await;
    let payment = payments(&db, provider.clone())
        .charge(charge_of("k-look"))
        .await
        .unwrap();
    assert_eq!(payment.status, PaymentStatus::Captured);
    let left = provider.lease_left_us.lock().unwrap().clone();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        left[0] > 800_000,
        "the confirm reached the provider with {} µs of its 1 s lease left",
        left[0]
    );
}

/// An owner whose look-up outlived its lease lost the key to a retry,
/// which charged; the first owner's look-up (read before that charge) says
/// "still open", and the owner must not confirm again: extending its lost
/// claim fails first. Before the fix the provider was asked twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_lost_its_key_during_a_look_up_does_not_charge() {
    let (_test, db) = migrated().await;
    let provider = Arc::new(SlowLookUps::new(
        &db,
        &[Duration::from_millis(1500), Duration::ZERO],
    ));
    abandon_charge(&db, &provider, "k-lost").await;
    let payments = payments(&db, provider.clone());
    let first = tokio::spawn({
        let payments = payments.clone();
        async move { payments.charge(charge_of("k-lost")).await }
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let retry = payments.charge(charge_of("k-lost")).await.unwrap();
    assert_eq!(retry.status, PaymentStatus::Captured);
    let first = first.await.unwrap();
    assert!(
        matches!(first, Err(PaymentError::KeyInProgress)),
        "{first:?}"
    );
    assert_eq!(
        provider.lease_left_us.lock().unwrap().len(),
        1,
        "confirms at the provider"
    );
}

/// The settings refuse a lease that a claim, a provider call and its
/// record may outlast; the shipped defaults (5 + 5 + 5 s in 15 s) fit.
#[test]
fn the_settings_keep_an_owners_work_within_its_lease() {
    let shipped = mercato_payment::Settings::default();
    shipped.validate().unwrap();
    for (statement_ms, provider_ms) in [(5001, 5000), (5000, 5001), (1, 15_000), (1, 0)] {
        let mut s = shipped.clone();
        s.database.database_statement_timeout_ms = statement_ms;
        s.provider_timeout_ms = provider_ms;
        let refused = s.validate().unwrap_err().to_string();
        assert!(
            refused.contains("provider_timeout_ms") && refused.contains("idempotency_lease_secs"),
            "{statement_ms} + {provider_ms}: {refused}"
        );
    }
    let mut quick = shipped.clone();
    quick_takeover(&mut quick);
    quick.validate().unwrap();
}

/// An owner that records its intent (renewing its lease) while a void is
/// between reading the key (lease over, no intent) and taking it over:
/// the takeover checks the lease again in its own statement and steps
/// back (ABORTED). Before the fix it took the key over with what it had
/// read — no intent — and voided the key without cancelling the intent,
/// which its owner then confirmed: money taken under a voided key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_never_takes_over_a_key_whose_owner_just_renewed_it() {
    let app = TestApp::spawn(Db::Postgres).await;
    let db = app.database.connect().await;
    sqlx::query(
        "INSERT INTO idempotency_keys (operation, idempotency_key, fingerprint, payment_id, amount_minor, \
           recovery_point, lock_token, locked_until_us, created_at_us, request) \
         VALUES ('charge', 'k-race', 'f', 'p-race', 500, 'started', 'owner', 0, 0, \
           '{\"order_id\":\"o\",\"user_id\":\"u\",\"currency\":\"USD\",\"amount_minor\":500,\"payment_method\":\"pm_approve\"}')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // The owner's session: holding the row while it records its intent.
    let mut owner = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM idempotency_keys WHERE idempotency_key = 'k-race' FOR UPDATE")
        .execute(&mut *owner)
        .await
        .unwrap();
    let void = tokio::spawn({
        let mut client = app.client.clone();
        async move {
            client
                .void_charge(mercato_proto::payment::v1::VoidChargeRequest {
                    idempotency_key: "k-race".into(),
                })
                .await
        }
    });
    // The void has read the row (a plain read waits for nobody) and waits
    // on the owner's lock to take it over.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query(
        "UPDATE idempotency_keys SET intent_id = 'sim_pi_k-race', \
           locked_until_us = CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT) + 15000000 \
         WHERE idempotency_key = 'k-race' AND lock_token = 'owner'",
    )
    .execute(&mut *owner)
    .await
    .unwrap();
    owner.commit().await.unwrap();

    let answer = void.await.unwrap();
    assert_eq!(
        answer.as_ref().map_err(tonic::Status::code).err(),
        Some(tonic::Code::Aborted),
        "{answer:?}"
    );
    let (point, token): (String, String) = sqlx::query_as(
        "SELECT recovery_point, lock_token FROM idempotency_keys WHERE idempotency_key = 'k-race'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((point.as_str(), token.as_str()), ("started", "owner"));
}

/// A charge named by its key is held on the wire (a partition); past its
/// lease, the retry takes the key over, finds no intent yet, and is refused
/// a connection (nothing sent). The key must stay — unlocked, with its
/// intent id — so that the void fences the intent at the provider. Before
/// the fix the retry released the key, the void tombstoned it without a
/// provider call, and the held charge then took the money of a voided key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_over_charge_the_network_refuses_keeps_its_key_for_the_fence() {
    let (_test, db) = migrated().await;
    let (factory, gate, late) = Late::provider(Held::NamedCharges);
    // No sweeper here: the retry, not the sweeper, takes the key over.
    let payments = Payments::new(
        PaymentStore::new(&db, Duration::from_secs(1)),
        factory(&db),
        ActivityFeed::in_process(),
        PaymentMetrics::default(),
        Duration::from_millis(400),
    );
    let cmd = charge_of("k-held");
    let first = payments.charge(cmd.clone()).await;
    assert!(
        matches!(first, Err(PaymentError::OutcomeUnknown(_))),
        "{first:?}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let retry = payments.charge(cmd.clone()).await;
    assert!(
        matches!(retry, Err(PaymentError::ProviderUnavailable(_))),
        "{retry:?}"
    );
    let key: Option<(String, String)> = sqlx::query_as(
        "SELECT recovery_point, intent_id FROM idempotency_keys WHERE idempotency_key = 'k-held'",
    )
    .fetch_optional(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        key,
        Some(("started".to_owned(), "sim_pi_k-held".to_owned())),
        "a taken-over key whose first call may still land is kept"
    );

    let voided = payments.void_charge("k-held").await.unwrap();
    assert!(matches!(voided, Voided::Void), "{voided:?}");
    gate.open_and_land().await;
    assert!(
        !late.get().unwrap().charged("k-held").await,
        "the held charge took the money of a voided key"
    );
}
