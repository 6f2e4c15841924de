//! Crash recovery: for every step boundary of the order saga, a real
//! `order-service` process aborts right there (an injected crash point calls
//! `std::process::abort()`, which like SIGKILL runs no cleanup), a fresh
//! process is started on the same database, the client retries CreateOrder
//! with the same request_id, and the invariants are checked.

use std::{
    collections::HashMap,
    os::unix::process::ExitStatusExt,
    time::{Duration, Instant},
};

use mercato_proto::{order::v1::OrderStatus, user::v1::UserStatus};

use crate::{
    invariants::{check, wait_until_quiet},
    support::*,
};

/// The boundaries of the steps a new order's saga starts with: the user
/// was checked ahead of its record and its insert took the stock.
const FORWARD: [&str; 4] = [
    "charge_payment:before",
    "charge_payment:after",
    "confirm_order:before",
    "confirm_order:after",
];

/// The boundaries of the steps the saga runs itself when they could not be
/// done before it: the user service was unreachable when the order came in.
const CHECKED_IN_THE_SAGA: [&str; 4] = [
    "validate_user:before",
    "validate_user:after",
    "reserve_stock:before",
    "reserve_stock:after",
];

const COMPENSATION: [&str; 6] = [
    "compensate:charge_payment:before",
    "compensate:charge_payment:after",
    "compensate:reserve_stock:before",
    "compensate:reserve_stock:after",
    "compensate:validate_user:before",
    "compensate:validate_user:after",
];

mercato_testkit::on_both_backends!(
    crash_at_every_forward_step_boundary,
    crash_at_the_check_and_the_reservation_run_by_the_saga,
    crash_at_every_compensation_step_boundary,
    a_crash_after_confirming_recovered_past_the_deadline_stays_confirmed
);

async fn a_crash_after_confirming_recovered_past_the_deadline_stays_confirmed(db: Db) {
    confirmed_then_crashed_past_the_deadline(db, Timing::Fast).await;
}

/// The same with every shipped default (lease, deadline, breakers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_confirming_recovered_past_the_shipped_deadline_stays_confirmed() {
    confirmed_then_crashed_past_the_deadline(Db::Postgres, Timing::ShippedDefaults).await;
}

/// A captured charge stores nothing of its own (the confirmation's commit
/// records it, one statement later): the process dies right after the
/// charge, and nothing runs until the shipped deadline is long gone.
/// Recovery finds the saga still at the charge, and past the deadline no
/// forward step starts — so it refunds (by the charge's key) and cancels,
/// as a crash between a charge's answer and any record of it always did:
/// one capture, refunded in full, stock given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_charging_recovered_past_the_shipped_deadline_refunds_and_cancels() {
    crashed_past_the_deadline(
        Db::Postgres,
        Timing::ShippedDefaults,
        "charge_payment:after",
        OrderStatus::Cancelled,
    )
    .await;
}

/// ConfirmOrder commits, the process dies before the saga records it, and
/// nothing runs until the saga's deadline is long gone: recovery must finish
/// the saga forward (confirmation is the pivot), not refund a CONFIRMED order.
async fn confirmed_then_crashed_past_the_deadline(db: Db, timing: Timing) {
    crashed_past_the_deadline(db, timing, "confirm_order:after", OrderStatus::Confirmed).await;
}

/// The order service aborts at `point` of a pm_approve order, nothing runs
/// until its deadline is long gone, then a new process recovers the saga:
/// it must end with the order `expected`, every invariant intact.
async fn crashed_past_the_deadline(db: Db, timing: Timing, point: &str, expected: OrderStatus) {
    let mut s = Suite::peers_only_with(db, timing).await;
    s.start_order_process_with(None, timing, &[]).await;
    let user = s.user("pivot@example.com", UserStatus::Active).await;
    s.product("gadget", 999, 10).await;
    s.start_order_process_with(Some(point), timing, &[]).await;
    let request = order_request("pivot-1", &user, &[("gadget", 1)], "pm_approve");
    assert!(s.orders.create_order(request.clone()).await.is_err());
    assert_eq!(s.wait_order_process_exit().await.signal(), Some(6));
    let deadline = match timing {
        Timing::Fast => Duration::from_secs(5),
        Timing::ShippedDefaults => {
            Duration::from_secs_f64(mercato_order::Settings::default().saga_deadline_secs)
        }
    };
    tokio::time::sleep(deadline + Duration::from_secs(1)).await;

    s.start_order_process_with(None, timing, &[]).await;
    let db = s.order_db.connect().await;
    let lease = Duration::from_secs_f64(mercato_order::Settings::default().saga_lease_secs);
    let limit = Instant::now() + lease + Duration::from_secs(15);
    let ended = loop {
        let status: String =
            sqlx::query_scalar("SELECT status FROM sagas WHERE kind = 'order.place'")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        if status == "completed" || status == "compensated" {
            break status;
        }
        assert!(
            Instant::now() < limit,
            "the saga was never resumed ({status})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let saga = match expected {
        OrderStatus::Confirmed => "completed", // past the pivot: only forward
        _ => "compensated",
    };
    assert_eq!(ended, saga, "{point}: the saga's end");
    let order = s
        .place("pivot-1", &user, &[("gadget", 1)], "pm_approve")
        .await
        .unwrap();
    assert_eq!(order.status(), expected, "{point}: {order:?}");
    check(&mut s, &[user], &HashMap::from([("gadget".to_owned(), 10)]))
        .await
        .assert_clean();
}

async fn crash_at_every_forward_step_boundary(db: Db) {
    crash_and_recover(
        db,
        &FORWARD,
        "pm_approve",
        Placed::Normally,
        OrderStatus::Confirmed,
    )
    .await;
}

async fn crash_at_the_check_and_the_reservation_run_by_the_saga(db: Db) {
    crash_and_recover(
        db,
        &CHECKED_IN_THE_SAGA,
        "pm_approve",
        Placed::WhileTheUserServiceIsAway,
        OrderStatus::Confirmed,
    )
    .await;
}

async fn crash_at_every_compensation_step_boundary(db: Db) {
    crash_and_recover(
        db,
        &COMPENSATION,
        "pm_decline",
        Placed::Normally,
        OrderStatus::Cancelled,
    )
    .await;
}

/// How each crashing order comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placed {
    /// The user service answers: the saga starts at the charge.
    Normally,
    /// The user service is unreachable until the order is stored, so the
    /// saga starts from the beginning (the check ahead of it failed), and
    /// then answers: the saga's own check and reservation go through.
    WhileTheUserServiceIsAway,
}

async fn crash_and_recover(
    db: Db,
    points: &[&str],
    method: &str,
    placed: Placed,
    expected: OrderStatus,
) {
    let mut s = Suite::peers_only(db).await;
    s.start_order_process(None).await;
    let user = s.user("crash@example.com", UserStatus::Active).await;
    s.product("gadget", 999, 100).await;

    let mut results = Vec::new();
    for point in points {
        s.start_order_process(Some(point)).await;
        let request_id = format!("crash-{point}");
        let request = order_request(&request_id, &user, &[("gadget", 1)], method);
        let answer = match placed {
            Placed::Normally => s.orders.create_order(request.clone()).await,
            Placed::WhileTheUserServiceIsAway => {
                s.user_proxy.cut();
                let mut orders = s.orders.clone();
                let call = tokio::spawn({
                    let request = request.clone();
                    async move { orders.create_order(request).await }
                });
                s.wait_for_saga_step(&request_id, 0).await;
                s.user_proxy.restore();
                call.await.unwrap()
            }
        };
        assert!(
            answer.is_err(),
            "{point}: the process died before answering, got {answer:?}"
        );
        let exit = s.wait_order_process_exit().await;
        assert_eq!(
            exit.signal(),
            Some(6),
            "{point}: aborted at the crash point ({exit:?})"
        );

        let restarted = Instant::now();
        s.start_order_process(None).await;
        // The client retries with the same request_id: same order, now settled.
        let order = s
            .orders
            .create_order(request)
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap();
        let recovery = restarted.elapsed();
        assert_eq!(order.status(), expected, "{point}: {order:?}");
        results.push((point.to_string(), order.status().as_str_name(), recovery));
    }

    wait_until_quiet(&mut s, std::slice::from_ref(&user), Duration::from_secs(10)).await;
    let report = check(
        &mut s,
        &[user],
        &HashMap::from([("gadget".to_owned(), 100)]),
    )
    .await;
    println!(
        "crash recovery ({db:?}, {method}, {placed:?}): {} orders, {} violations",
        report.orders,
        report.violations.len()
    );
    for (point, status, took) in &results {
        println!(
            "  {point:<36} -> {status:<24} recovered in {:>5} ms",
            took.as_millis()
        );
    }
    report.assert_clean();
    assert_eq!(report.orders, points.len());
}

/// A canary runs with `BACKGROUND_WORKERS=false`: it serves new orders but
/// resumes no abandoned saga, even alone and long past the saga's lease
/// and deadline; a replica with the workers on (the stable) finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_background_workers_leaves_abandoned_sagas_to_the_others() {
    let timing = Timing::Fast;
    let mut s = Suite::peers_only_with(Db::Postgres, timing).await;
    s.start_order_process_with(None, timing, &[]).await;
    let user = s.user("canary@example.com", UserStatus::Active).await;
    s.product("gadget", 999, 10).await;
    s.start_order_process_with(Some("charge_payment:after"), timing, &[])
        .await;
    let request = order_request("abandoned", &user, &[("gadget", 1)], "pm_approve");
    assert!(s.orders.create_order(request).await.is_err());
    assert_eq!(s.wait_order_process_exit().await.signal(), Some(6));

    s.start_order_process_with(None, timing, &[("BACKGROUND_WORKERS", "false")])
        .await;
    let served = s
        .place("served", &user, &[("gadget", 1)], "pm_approve")
        .await
        .unwrap();
    assert_eq!(served.status(), OrderStatus::Confirmed);
    // Lease 1 s, deadline 5 s, polls every 0.1 s (Timing::Fast): a replica
    // with workers would have finished it twice over.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let db = s.order_db.connect().await;
    let abandoned = "SELECT status FROM sagas WHERE kind = 'order.place' AND status NOT IN ('completed', 'compensated')";
    let left: Vec<String> = sqlx::query_scalar(abandoned)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "the replica without workers resumed it");

    s.start_order_process_with(None, timing, &[]).await;
    let limit = Instant::now() + Duration::from_secs(15);
    while !sqlx::query_scalar::<_, String>(abandoned)
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            Instant::now() < limit,
            "the stable replica never resumed it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Charged, then abandoned past its deadline: refunded and cancelled.
    let order = s
        .place("abandoned", &user, &[("gadget", 1)], "pm_approve")
        .await
        .unwrap();
    assert_eq!(order.status(), OrderStatus::Cancelled, "{order:?}");
    check(&mut s, &[user], &HashMap::from([("gadget".to_owned(), 10)]))
        .await
        .assert_clean();
}
