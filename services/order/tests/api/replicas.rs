//! Several replicas and silent faults (issue 33), every setting at its
//! shipped default: two order replicas and two payment replicas (behind
//! haproxy) on one Postgres, twelve callers placing orders through both
//! order replicas and failing over to the other with the same
//! `request_id`. One order replica is frozen (SIGSTOP) for longer than
//! deadline + lease and then killed and restarted — a node that vanished
//! and was replaced — and then one payment replica the same way. While a
//! replica is frozen the others must finish every order within deadline +
//! lease + 15 s; afterwards every order is terminal and the checkers (the
//! public API's and the stores' own records) find nothing wrong.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use mercato_database::local_now_us;
use mercato_proto::order::v1::Order;
use mercato_testkit::{invariants, replicas::Replicas, shoppers::Purchase};

use crate::chaos::{saga_deadline, saga_lease};

/// A fault's time on the machine's clock (µs), which the servers' order
/// timestamps are on too.
struct Window {
    label: &'static str,
    from_us: i64,
    to_us: i64,
}

fn micros(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref()
        .map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000)
}

/// Placement to terminal state, from the order's own timestamps.
fn took(order: &Order) -> Duration {
    let us = micros(&order.updated_at) - micros(&order.created_at);
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_order_or_payment_replica_stalls_no_order_on_the_others() {
    const CALLERS: usize = 12;
    let bound = saga_deadline() + saga_lease() + Duration::from_secs(15);
    // Longer than deadline + lease, and as long as issue 33's trial (60 s).
    let freeze =
        (saga_deadline() + saga_lease() + Duration::from_secs(5)).max(Duration::from_secs(60));
    let mut suite = Replicas::start(PathBuf::from(env!("CARGO_BIN_EXE_order-service")), 2, 2).await;
    let mut users = Vec::new();
    for i in 0..6 {
        users.push(suite.user(&format!("replica-{i}@example.com")).await);
    }
    suite.product("gizmo", 250, 100_000).await;

    let placing = Arc::new(AtomicBool::new(true));
    let placed = Arc::new(Mutex::new(0usize));
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let clients = suite.order_clients.clone();
            let users = users.clone();
            let placing = placing.clone();
            let placed = placed.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while placing.load(Ordering::SeqCst) {
                    let method = match fastrand::usize(..10) {
                        0 => "pm_decline",
                        1 => "pm_slow",
                        _ => "pm_approve",
                    };
                    let purchase = Purchase {
                        request_id: format!("replica-{caller}-{n}"),
                        user_id: users[(caller + n) % users.len()].clone(),
                        product_id: "gizmo".into(),
                        quantity: 1,
                        payment_method: method.into(),
                    };
                    Replicas::place(
                        &clients,
                        &purchase,
                        caller,
                        Duration::from_secs(2),
                        Duration::from_secs(120),
                    )
                    .await;
                    *placed.lock().unwrap() += 1;
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(100..400))).await;
                }
            })
        })
        .collect();

    let mut windows = Vec::new();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for label in ["order replica 0 frozen", "payment replica 0 frozen"] {
        let process = if label.starts_with("order") {
            &mut suite.orders[0]
        } else {
            &mut suite.payments[0]
        };
        let from_us = local_now_us();
        process.freeze();
        tokio::time::sleep(freeze).await;
        // The node is gone for good: its pod is replaced.
        process.restart().await;
        windows.push(Window {
            label,
            from_us,
            to_us: local_now_us(),
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    placing.store(false, Ordering::SeqCst);
    for caller in callers {
        caller.await.unwrap();
    }
    let quiet = invariants::wait_until_quiet(&suite.clients, &users, bound).await;

    let report = invariants::check(
        &suite.clients,
        &users,
        &std::collections::HashMap::from([("gizmo".to_owned(), 100_000)]),
    )
    .await;
    let records = invariants::check_records(&suite.order_db.url, &suite.payment_db.url).await;
    let mut orders = Vec::new();
    for user in &users {
        orders.extend(invariants::all_orders(&suite.clients, user).await);
    }
    let mut worst_in_faults = Duration::ZERO;
    for window in &windows {
        let during: Vec<&Order> = orders
            .iter()
            .filter(|o| (window.from_us..window.to_us).contains(&micros(&o.created_at)))
            .collect();
        let finished = during
            .iter()
            .filter(|o| micros(&o.updated_at) <= window.to_us && took(o) > Duration::ZERO)
            .count();
        let worst = during.iter().map(|o| took(o)).max().unwrap_or_default();
        worst_in_faults = worst_in_faults.max(worst);
        println!(
            "replicas 2+2, shipped defaults, {label} for {freeze:?} then replaced: {} orders placed during it, \
             {finished} finished during it, worst placement-to-terminal {:.1} s (bound {bound:?})",
            during.len(),
            worst.as_secs_f64(),
            label = window.label,
        );
    }
    let worst = orders.iter().map(took).max().unwrap_or_default();
    println!(
        "replicas 2+2: {} orders from {CALLERS} callers ({} answered); {} confirmed, {} cancelled, {} pending; \
         worst placement-to-terminal {:.1} s; {} violations, {} double captures, {} store findings",
        orders.len(),
        placed.lock().unwrap(),
        report.confirmed,
        report.cancelled,
        report.pending,
        worst.as_secs_f64(),
        report.violations.len(),
        report.double_captures,
        records.violations().len(),
    );
    assert!(
        quiet.is_some(),
        "{} orders still PENDING {bound:?} after the last fault",
        report.pending
    );
    report.assert_clean();
    assert_eq!(report.double_captures, 0);
    records.assert_clean();
    assert!(
        worst_in_faults <= bound,
        "an order placed during a fault took {worst_in_faults:?} (bound {bound:?})"
    );
}
