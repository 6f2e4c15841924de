//! The order service's own credentials refused by a peer (its API key
//! rotated out): a configuration fault, not a customer's problem. Sagas
//! retry with backoff on both paths, the fault is counted and logged once
//! per saga, and everything completes once the key is fixed.

use std::{collections::HashMap, time::Duration};

use mercato_proto::{order::v1::OrderStatus, user::v1::UserStatus};

use crate::{invariants::check, support::*};

mercato_testkit::on_both_backends!(refused_credentials_are_retried_until_the_key_is_fixed);

async fn refused_credentials_are_retried_until_the_key_is_fixed(db: Db) {
    let mut s = Suite::peers_only(db).await;
    s.start_order_process(None).await;
    let user = s.user("rotated@example.com", UserStatus::Active).await;
    s.product("kettle", 2500, 5).await;
    let confirmed = s
        .place("before", &user, &[("kettle", 1)], "pm_approve")
        .await
        .unwrap();
    assert_eq!(confirmed.status(), OrderStatus::Confirmed);

    // The key the order service runs with is no longer one its peers accept.
    let rotated_out =
        mercato_auth::api_keys::issue("order-service", vec!["service".into()], None, 0)
            .unwrap()
            .key;
    s.start_order_process_with(
        None,
        Timing::Fast,
        &[
            ("SERVICE_API_KEY", &rotated_out),
            ("SAGA_DEADLINE_SECS", "30"),
        ],
    )
    .await;
    let waiting = s
        .place_within(
            order_request("during", &user, &[("kettle", 1)], "pm_approve"),
            Duration::from_secs(1),
        )
        .await;
    assert_eq!(
        waiting.status(),
        OrderStatus::Pending,
        "a refused credential is not the customer's refusal"
    );
    let cancelling = s
        .cancel_within(&confirmed.order_id, Duration::from_secs(1))
        .await;
    assert_eq!(
        cancelling.status(),
        OrderStatus::Confirmed,
        "the refund waits for working credentials"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.order_status(&waiting.order_id).await,
        OrderStatus::Pending
    );
    assert_eq!(
        s.order_status(&confirmed.order_id).await,
        OrderStatus::Confirmed
    );
    let refused = |peer: &str| format!("peer_credentials_refused_total{{peer=\"{peer}\"}}");
    assert!(
        s.order_metric(&refused("user")).await.unwrap_or(0.0) >= 3.0,
        "every refusal is counted"
    );
    assert!(s.order_metric(&refused("payment")).await.unwrap_or(0.0) >= 3.0);
    // Once per saga run: a run that lost its lease (under load, with these
    // tests' 1 s lease) and was claimed again logs again, so at most once
    // per claim — while every retry is counted.
    let db = s.order_db.connect().await;
    for saga_id in [
        waiting.order_id.clone(),
        format!("{}:cancel", confirmed.order_id),
    ] {
        let claims: i64 = sqlx::query_scalar("SELECT lease_epoch FROM sagas WHERE saga_id = $1")
            .bind(&saga_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let lines = s
            .order_process_log()
            .into_iter()
            .filter(|line| {
                line["level"] == "ERROR"
                    && line["saga_id"] == saga_id.as_str()
                    && line["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("credentials"))
            })
            .count();
        assert!(
            lines >= 1 && i64::try_from(lines).unwrap() <= claims,
            "{saga_id}: {lines} error lines for {claims} claims"
        );
    }

    // The operator puts the right key back and the pods restart.
    s.start_order_process(None).await;
    s.wait_for_status(&waiting.order_id, OrderStatus::Confirmed)
        .await;
    s.wait_for_status(&confirmed.order_id, OrderStatus::Cancelled)
        .await;
    check(&mut s, &[user], &HashMap::from([("kettle".to_owned(), 5)]))
        .await
        .assert_clean();
}
