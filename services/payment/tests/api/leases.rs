//! A key's lease is stamped by the database in the statement that claims
//! it (issue 33, finding 4), not computed before the statement waited for
//! a connection or on a replica's own clock: a claim is never born
//! expired, so no second claimant takes it over while its owner works.

use std::time::Duration;

use mercato_api::Money;
use mercato_database::{Database, DbClock};
use mercato_payment::{
    domain::ChargeCommand,
    error::PaymentError,
    store::{Claim, PaymentStore},
};

use crate::support::*;

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
    let cmd = ChargeCommand {
        idempotency_key: "k-1".into(),
        order_id: "o-1".into(),
        user_id: "u-1".into(),
        amount: Money {
            currency: "USD".into(),
            minor: 1000,
        },
        payment_method: "pm_approve".into(),
    };
    let claim = PaymentStore::new(&behind, lease)
        .claim_charge(&cmd)
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
    let second = PaymentStore::new(&db, lease).claim_charge(&cmd).await;
    assert!(
        matches!(second, Err(PaymentError::KeyInProgress)),
        "{second:?}"
    );
}
