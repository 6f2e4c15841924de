//! Several replicas and silent faults (issue 33), every setting at its
//! shipped default: two order replicas and two payment replicas (behind
//! haproxy), each on a test host of its own, on one Postgres; twelve
//! callers place orders through both order replicas, fail over to the
//! other with the same `request_id`, and wait for each order to finish.
//! One fault at a time, each alone:
//! - issue 33's trial made certain: an order replica frozen while its
//!   transaction holds the hot product's row (every order needs it), for
//!   longer than the bound, then killed and restarted;
//! - a replica frozen (SIGSTOP) for longer than deadline + lease, then
//!   killed and restarted — a node that vanished and was replaced (an
//!   order replica, then a payment replica);
//! - a replica cut off silently (its packets dropped) and healed: an order
//!   replica from everything, a payment replica from Postgres, an order
//!   replica from its peers;
//! - both at once: an order replica frozen while a payment replica is cut
//!   off from Postgres;
//! - an outside session holding the hot product's row for a few seconds;
//! - an order replica's wall clock stepped +30 s, then -30 s.
//!
//! Then the same harness paying through the Stripe adapter against
//! localstripe (issue 34), with the payment side's faults: a payment
//! replica cut off from the provider, the provider frozen, a payment
//! replica frozen and replaced.
//!
//! Orders placed during a fault must finish within deadline + lease +
//! 15 s; afterwards every order is terminal and the checkers — the public
//! API's and the stores' own records — find nothing wrong.
//! `MERCATO_FAULT_FREEZE_SECS` lengthens the freezes (a soak; default
//! deadline + lease + 5 s).

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use mercato_proto::order::v1::{CancelOrderRequest, OrderStatus};
use mercato_testkit::{
    invariants,
    localstripe::Provider,
    netns::Cut,
    replicas::{Replicas, Shopped},
    shoppers::Purchase,
};
use sqlx::Connection;
use tokio::time::Instant;

use crate::chaos::{saga_deadline, saga_lease};

/// One fault, on the callers' clock.
struct Window {
    label: String,
    from: Instant,
    to: Instant,
}

/// Another session holding the hot product's row until [`let_go`].
async fn hold_the_hot_row(order_db: &str) -> sqlx::PgConnection {
    let mut outsider = sqlx::PgConnection::connect(order_db).await.unwrap();
    sqlx::query("BEGIN").execute(&mut outsider).await.unwrap();
    sqlx::query("SELECT stock FROM products WHERE product_id = 'gizmo' FOR UPDATE")
        .execute(&mut outsider)
        .await
        .unwrap();
    outsider
}

async fn let_go(mut outsider: sqlx::PgConnection) {
    sqlx::query("ROLLBACK")
        .execute(&mut outsider)
        .await
        .unwrap();
}

/// Freezes order replica 0 at the worst moment: inside a transaction that
/// holds the hot product's row (CancelOrder's release_stock, made to wait
/// for that row by an outside session, frozen as it waits, the row then
/// let go so that the frozen replica's statement takes it). Every other
/// order needs that row. Returns when the replica is frozen.
async fn freeze_holding_the_hot_row(suite: &mut Replicas, user_id: &str) {
    let mut client = suite.order_clients[0].clone();
    let order = client
        .create_order(
            Purchase {
                request_id: "hot-row-victim".into(),
                user_id: user_id.to_owned(),
                product_id: "gizmo".into(),
                quantity: 1,
                payment_method: "pm_approve".into(),
            }
            .request(),
        )
        .await
        .expect("CreateOrder")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(order.status(), OrderStatus::Confirmed);
    let holding = hold_the_hot_row(&suite.order_db.url).await;
    let mut cancel = tonic::Request::new(CancelOrderRequest {
        order_id: order.order_id.clone(),
        reason: "a frozen replica's transaction".into(),
    });
    cancel.set_timeout(Duration::from_millis(300));
    let _ = client.cancel_order(cancel).await;
    let mut watcher = sqlx::PgConnection::connect(&suite.order_db.url)
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        // The session waiting for a lock is replica 0's cancellation: its
        // transaction holds (and has updated) the cancel saga's row.
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity a JOIN sagas s ON s.saga_id = $1 \
             WHERE a.wait_event_type = 'Lock' AND a.backend_xid::text = s.xmax::text",
        )
        .bind(format!("{}:cancel", order.order_id))
        .fetch_one(&mut watcher)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "CancelOrder's release never waited for the hot row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    suite.orders[0].process.freeze();
    let_go(holding).await;
}

/// The script of faults, one at a time, with a quiet gap after each.
async fn inject_faults(suite: &mut Replicas, windows: &mut Vec<Window>, user_id: &str) {
    let freeze = std::env::var("MERCATO_FAULT_FREEZE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(
            saga_deadline() + saga_lease() + Duration::from_secs(5),
            Duration::from_secs,
        );
    // Past the lease and the idle-in-transaction timeout: the others take
    // over what the cut-off replica held.
    let cut = saga_lease() + Duration::from_secs(10);
    let gap = Duration::from_secs(3);
    let mut window = |label: String, from: Instant| {
        windows.push(Window {
            label,
            from,
            to: Instant::now(),
        });
    };
    tokio::time::sleep(gap).await;

    // Issue 33's trial: the healthy replica waited for the frozen one. As
    // long as the bound, so that waiting for it cannot pass.
    let hot = saga_deadline() + saga_lease() + Duration::from_secs(20);
    let from = Instant::now();
    freeze_holding_the_hot_row(suite, user_id).await;
    tokio::time::sleep(hot).await;
    suite.orders[0].process.restart().await;
    window(
        format!(
            "order replica frozen {hot:?} inside a transaction holding the hot product row, then replaced"
        ),
        from,
    );
    tokio::time::sleep(gap).await;

    for (label, replica) in [
        ("order", &mut suite.orders[0]),
        ("payment", &mut suite.payments[0]),
    ] {
        let from = Instant::now();
        replica.process.freeze();
        tokio::time::sleep(freeze).await;
        replica.process.restart().await;
        window(
            format!("{label} replica frozen {freeze:?}, then replaced"),
            from,
        );
        tokio::time::sleep(gap).await;
    }

    let user_port = suite.user_port;
    let balancer_port = suite.payment_balancer.addr.port();
    for (label, host, what) in [
        (
            "order replica cut off from everything",
            &suite.orders[1].host,
            Cut::Everything,
        ),
        (
            "payment replica cut off from Postgres",
            &suite.payments[1].host,
            Cut::Ports(vec![5432]),
        ),
        (
            "order replica cut off from its peers",
            &suite.orders[0].host,
            Cut::Ports(vec![user_port, balancer_port]),
        ),
    ] {
        let from = Instant::now();
        host.cut(&what);
        tokio::time::sleep(cut).await;
        host.heal();
        window(format!("{label} {cut:?}, then healed"), from);
        tokio::time::sleep(gap).await;
    }

    // Mixed: an order replica freezes while a payment replica is cut off
    // from Postgres; then the first is replaced and the second healed.
    let from = Instant::now();
    suite.orders[0].process.freeze();
    suite.payments[1].host.cut(&Cut::Ports(vec![5432]));
    tokio::time::sleep(cut).await;
    suite.orders[0].process.restart().await;
    suite.payments[1].host.heal();
    window(
        format!(
            "order replica frozen and payment replica cut off from Postgres {cut:?}, then replaced and healed"
        ),
        from,
    );
    tokio::time::sleep(gap).await;

    let from = Instant::now();
    let holding = hold_the_hot_row(&suite.order_db.url).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let_go(holding).await;
    window("hot product row held by an outside session 5s".into(), from);
    tokio::time::sleep(gap).await;

    let from = Instant::now();
    suite.step_clock("+30s");
    tokio::time::sleep(Duration::from_secs(10)).await;
    suite.step_clock("-30s");
    tokio::time::sleep(Duration::from_secs(10)).await;
    suite.step_clock("+0s");
    window(
        "order replica's wall clock +30 s, then -30 s, 10s each".into(),
        from,
    );
    tokio::time::sleep(gap).await;
}

/// Faults of the payment side when it pays through Stripe (issue 34):
/// a payment replica cut off from the provider (its calls hang, then land
/// or not), the provider frozen, a payment replica frozen and replaced.
async fn inject_stripe_faults(suite: &mut Replicas, windows: &mut Vec<Window>, _user_id: &str) {
    let cut = saga_lease() + Duration::from_secs(10);
    let gap = Duration::from_secs(3);
    tokio::time::sleep(gap).await;
    let stripe_port = suite.stripe.as_ref().expect("the emulator").port();

    let from = Instant::now();
    suite.payments[0].host.cut(&Cut::Ports(vec![stripe_port]));
    tokio::time::sleep(cut).await;
    suite.payments[0].host.heal();
    windows.push(Window {
        label: format!("payment replica cut off from the provider {cut:?}, then healed"),
        from,
        to: Instant::now(),
    });
    tokio::time::sleep(gap).await;

    let from = Instant::now();
    let stripe = suite.stripe.as_ref().expect("the emulator");
    stripe.freeze();
    tokio::time::sleep(Duration::from_secs(10)).await;
    stripe.thaw();
    windows.push(Window {
        label: "the provider frozen 10s".into(),
        from,
        to: Instant::now(),
    });
    tokio::time::sleep(gap).await;

    let from = Instant::now();
    suite.payments[1].process.freeze();
    tokio::time::sleep(Duration::from_secs(20)).await;
    suite.payments[1].process.restart().await;
    windows.push(Window {
        label: "payment replica frozen 20s, then replaced".into(),
        from,
        to: Instant::now(),
    });
    tokio::time::sleep(gap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_replica_faults_stall_no_order_on_the_others() {
    let suite = Replicas::start(PathBuf::from(env!("CARGO_BIN_EXE_order-service")), 2, 2).await;
    shop_through_faults(
        "replicas 2+2, shipped defaults",
        suite,
        &[
            "pm_decline",
            "pm_slow",
            "pm_approve",
            "pm_approve",
            "pm_approve",
            "pm_approve",
            "pm_approve",
            "pm_approve",
            "pm_approve",
            "pm_approve",
        ],
        inject_faults,
    )
    .await;
}

/// The same harness paying through the Stripe adapter against localstripe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_faults_through_stripe_stall_no_order_and_leave_money_reconciled() {
    let suite = Replicas::start_paying(
        PathBuf::from(env!("CARGO_BIN_EXE_order-service")),
        2,
        2,
        Provider::LocalStripe,
    )
    .await;
    shop_through_faults(
        "replicas 2+2 through localstripe",
        suite,
        &[
            "pm_card_chargeCustomerFail",
            "pm_card_visa",
            "pm_card_visa",
            "pm_card_visa",
            "pm_card_visa",
            "pm_card_visa",
            "pm_card_visa",
            "pm_card_visa",
            "pm_card_visa",
            "pm_card_visa",
        ],
        inject_stripe_faults,
    )
    .await;
}

/// Twelve callers shop with `methods` (drawn at random) while `inject`
/// runs its faults; then every order placed during a fault must have
/// finished within the bound, and every checker must find nothing.
async fn shop_through_faults(
    label: &str,
    mut suite: Replicas,
    methods: &'static [&'static str],
    inject: impl AsyncFnOnce(&mut Replicas, &mut Vec<Window>, &str),
) {
    const CALLERS: usize = 12;
    let bound = saga_deadline() + saga_lease() + Duration::from_secs(15);
    let mut users = Vec::new();
    for i in 0..6 {
        users.push(suite.user(&format!("replica-{i}@example.com")).await);
    }
    suite.product("gizmo", 250, 100_000).await;

    let placing = Arc::new(AtomicBool::new(true));
    let shopped = Arc::new(Mutex::new(Vec::<Shopped>::new()));
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let clients = suite.order_clients.clone();
            let users = users.clone();
            let placing = placing.clone();
            let shopped = shopped.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while placing.load(Ordering::SeqCst) {
                    let method = methods[fastrand::usize(..methods.len())];
                    let purchase = Purchase {
                        request_id: format!("replica-{caller}-{n}"),
                        user_id: users[(caller + n) % users.len()].clone(),
                        product_id: "gizmo".into(),
                        quantity: 1,
                        payment_method: method.into(),
                    };
                    let order = Replicas::shop(
                        &clients,
                        &purchase,
                        caller,
                        Duration::from_secs(2),
                        bound + Duration::from_secs(30),
                    )
                    .await;
                    shopped.lock().unwrap().push(order);
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(50..200))).await;
                }
            })
        })
        .collect();

    let mut windows = Vec::new();
    let victim = suite.user("victim@example.com").await;
    inject(&mut suite, &mut windows, &victim).await;
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
    let shopped = shopped.lock().unwrap().clone();
    let mut failures = Vec::new();
    for window in &windows {
        let during: Vec<&Shopped> = shopped
            .iter()
            .filter(|s| (window.from..window.to).contains(&s.placed))
            .collect();
        let finished = during
            .iter()
            .filter(|s| s.terminal.is_some_and(|t| t <= window.to))
            .count();
        let unfinished = during.iter().filter(|s| s.terminal.is_none()).count();
        let worst = during
            .iter()
            .filter_map(|s| s.took())
            .max()
            .unwrap_or_default();
        println!(
            "{label}: {}: {} orders placed during it, {finished} finished during it, \
             worst placement-to-terminal {:.1} s (bound {bound:?}){}",
            window.label,
            during.len(),
            worst.as_secs_f64(),
            if unfinished > 0 {
                format!(", {unfinished} NOT FINISHED")
            } else {
                String::new()
            }
        );
        if worst > bound || unfinished > 0 {
            failures.push(format!(
                "{}: worst {worst:?}, {unfinished} unfinished",
                window.label
            ));
        }
    }
    let worst = shopped
        .iter()
        .filter_map(Shopped::took)
        .max()
        .unwrap_or_default();
    println!(
        "{label}: {} orders from {CALLERS} callers; {} confirmed, {} cancelled, {} pending; \
         worst placement-to-terminal {:.1} s; {} violations, {} double captures, {} store findings, \
         {} reconciliation mismatches over {} provider records",
        shopped.len(),
        report.confirmed,
        report.cancelled,
        report.pending,
        worst.as_secs_f64(),
        report.violations.len(),
        report.double_captures,
        records.violations().len(),
        report.reconciliation_mismatches,
        report.provider_records,
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
        failures.is_empty(),
        "orders placed during a fault took longer than {bound:?}:\n{}",
        failures.join("\n")
    );
}
