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

const FORWARD: [&str; 8] = [
    "validate_user:before",
    "validate_user:after",
    "reserve_stock:before",
    "reserve_stock:after",
    "charge_payment:before",
    "charge_payment:after",
    "confirm_order:before",
    "confirm_order:after",
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
    crash_at_every_compensation_step_boundary
);

async fn crash_at_every_forward_step_boundary(db: Db) {
    crash_and_recover(db, &FORWARD, "pm_approve", OrderStatus::Confirmed).await;
}

async fn crash_at_every_compensation_step_boundary(db: Db) {
    crash_and_recover(db, &COMPENSATION, "pm_decline", OrderStatus::Cancelled).await;
}

async fn crash_and_recover(db: Db, points: &[&str], method: &str, expected: OrderStatus) {
    let mut s = Suite::peers_only(db).await;
    s.start_order_process(None).await;
    let user = s.user("crash@example.com", UserStatus::Active).await;
    s.product("gadget", 999, 100).await;

    let mut results = Vec::new();
    for point in points {
        s.start_order_process(Some(point)).await;
        let request = order_request(&format!("crash-{point}"), &user, &[("gadget", 1)], method);
        let answer = s.orders.create_order(request.clone()).await;
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
        "crash recovery ({db:?}, {method}): {} orders, {} violations",
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
