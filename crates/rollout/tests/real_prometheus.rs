//! The analysis against a real Prometheus (Debian's package) scraping a
//! real canary: the user service binary, labelled as the operator labels a
//! canary pod, answering healthy, then erroring (its table renamed away),
//! then overloaded (shedding with RESOURCE_EXHAUSTED) traffic. The queries
//! are the ones the controller sends; the steps are `decide`'s.
//!
//! Before issue 35 a healthy canary was rolled back here: the success rate
//! divided the error-code series, which a canary that never failed does not
//! have, so the query had no data, and no data failed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use mercato_proto::user::v1::{ListUsersRequest, user_service_client::UserServiceClient};
use mercato_rollout::{
    Action, Check, Phase, RolloutSpec, RolloutStatus,
    analysis::{Outcome, Pods, Verdict, analyse},
    decide,
    prometheus::Prometheus,
};
use mercato_testkit::{
    Db, RedisMode, TestDatabase, auth,
    processes::{LogDir, ServiceProcess, free_port, local_service_env, workspace_binary},
    prometheus::{PrometheusServer, Target},
};
use tokio::sync::watch;

const NAMESPACE: &str = "mercato";
/// A pod of the canary Deployment's current ReplicaSet, as Kubernetes names it.
const CANARY_POD: &str = "user-service-canary-6b7c9d5f4-x7k2p";

/// Analyses every 2 s over a 6 s window (Prometheus scrapes every second);
/// two failed analyses in a row roll back; 20 calls in the window needed.
fn spec() -> RolloutSpec {
    RolloutSpec {
        interval_seconds: 2,
        window_seconds: 6,
        failure_threshold: 2,
        min_requests: 20,
        analysis: vec![Check::success_rate(99.0), Check::latency_p99(0.5)],
        ..RolloutSpec::new("user-service")
    }
}

/// What the callers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    Off,
    /// One caller, a call every 20 ms (about 50/s).
    Healthy,
    /// 64 callers without pause, against a canary allowed 2 calls at once.
    Overload,
}

/// Callers of ListUsers following `load`; counts the answers shed.
fn callers(
    client: UserServiceClient<auth::AuthedChannel>,
    load: watch::Receiver<Load>,
    shed: Arc<AtomicUsize>,
) {
    for caller in 0..64 {
        let (mut client, load, shed) = (client.clone(), load.clone(), shed.clone());
        tokio::spawn(async move {
            loop {
                let now = *load.borrow();
                let calls = match now {
                    Load::Off => false,
                    Load::Healthy => caller == 0,
                    Load::Overload => true,
                };
                if !calls {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let answer = client
                    .list_users(ListUsersRequest {
                        page_size: 1,
                        page_token: String::new(),
                    })
                    .await;
                if let Err(status) = answer
                    && status.code() == tonic::Code::ResourceExhausted
                {
                    shed.fetch_add(1, Ordering::Relaxed);
                }
                if now == Load::Healthy {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
    }
}

/// Analyses every interval from `status` until `until` says stop (or
/// `limit` passes); returns each step and the last status.
async fn analyse_until(
    prometheus: &Prometheus,
    mut status: RolloutStatus,
    limit: Duration,
    until: impl Fn(Action) -> bool,
) -> (Vec<(Action, Vec<Verdict>)>, RolloutStatus) {
    let spec = spec();
    let started = Instant::now();
    let mut steps = Vec::new();
    loop {
        let verdicts = analyse(prometheus, &spec, &Pods::any_revision(NAMESPACE)).await;
        let (action, next) = decide(&spec, &status, &verdicts);
        status = next;
        steps.push((action, verdicts));
        if until(action) || started.elapsed() > limit {
            return (steps, status);
        }
        tokio::time::sleep(Duration::from_secs(spec.interval_seconds)).await;
    }
}

fn progressing(weight: u32) -> RolloutStatus {
    RolloutStatus {
        phase: Phase::Progressing,
        canary_weight: weight,
        ..RolloutStatus::default()
    }
}

fn actions(steps: &[(Action, Vec<Verdict>)]) -> Vec<Action> {
    steps.iter().map(|(action, _)| *action).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_is_promoted_healthy_rolled_back_erroring_or_overloaded_and_held_without_traffic()
{
    let database = TestDatabase::create(Db::Postgres).await;
    let logs = LogDir::new("mercato-prometheus-");
    let mut env = local_service_env(logs.path(), free_port(), &database.url, &RedisMode::fresh());
    // So that 64 callers overload it.
    env.push(("MAX_CONCURRENT_REQUESTS".into(), "2".into()));
    let canary = ServiceProcess::start(
        "user service",
        workspace_binary("user-service"),
        env,
        logs.path(),
    )
    .await;
    let server = PrometheusServer::start(
        logs.path(),
        &[Target::pod(
            canary.metrics,
            NAMESPACE,
            CANARY_POD,
            "user-service",
        )],
    )
    .await;
    let prometheus = Prometheus::new(&server.url(), Duration::from_secs(5)).unwrap();
    let up = format!(r#"up{{pod="{CANARY_POD}"}}"#);
    let scraped = Instant::now();
    while prometheus.query(&up).await != Ok(1.0) {
        assert!(
            scraped.elapsed() < Duration::from_secs(30),
            "the canary was never scraped; see {}",
            server.log().display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // No traffic: no verdict, the weight held, no failure counted.
    let (steps, status) =
        analyse_until(&prometheus, progressing(10), Duration::from_secs(4), |_| {
            false
        })
        .await;
    assert!(
        actions(&steps).iter().all(|a| *a == Action::Wait),
        "{steps:#?}"
    );
    assert_eq!(
        (status.phase, status.canary_weight, status.failed_checks),
        (Phase::Progressing, 10, 0)
    );

    let (load, follow) = watch::channel(Load::Off);
    let shed = Arc::new(AtomicUsize::new(0));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", canary.grpc))
        .unwrap()
        .connect_lazy();
    callers(
        UserServiceClient::new(auth::with_token(channel, &auth::admin())),
        follow,
        shed.clone(),
    );

    // Healthy: only OK series exist, and the canary is stepped up and promoted.
    load.send_replace(Load::Healthy);
    tokio::time::sleep(Duration::from_secs(spec().window_seconds)).await;
    let (steps, status) =
        analyse_until(&prometheus, progressing(10), Duration::from_secs(40), |a| {
            matches!(a, Action::Promote | Action::RollBack)
        })
        .await;
    // (A loaded machine may leave a window short of calls: no verdict,
    // held — never a failure.)
    let decided: Vec<Action> = actions(&steps)
        .into_iter()
        .filter(|a| *a != Action::Wait)
        .collect();
    assert_eq!(
        decided,
        [
            Action::SetWeight(20),
            Action::SetWeight(30),
            Action::SetWeight(40),
            Action::SetWeight(50),
            Action::Promote
        ],
        "{steps:#?}"
    );
    assert_eq!(status.phase, Phase::Promoting);
    let rate = &steps
        .iter()
        .find(|(a, _)| *a != Action::Wait)
        .expect("a decided step")
        .1[0];
    let value: f64 = rate.detail.split(' ').next().unwrap().parse().unwrap();
    assert!((value - 100.0).abs() < 1e-9, "{rate:?}");

    // Erroring: its table gone, every call fails on the server side.
    let db = database.connect().await;
    sqlx::query("ALTER TABLE users RENAME TO users_away")
        .execute(&db.pool)
        .await
        .unwrap();
    let errors_began = Instant::now();
    let (steps, status) =
        analyse_until(&prometheus, progressing(10), Duration::from_secs(40), |a| {
            a == Action::RollBack
        })
        .await;
    let to_rollback = errors_began.elapsed();
    assert_eq!(
        (status.phase, status.canary_weight),
        (Phase::Failed, 0),
        "{steps:#?}"
    );
    assert!(
        steps
            .iter()
            .flat_map(|(_, v)| v)
            .all(|v| v.outcome != Outcome::NoVerdict),
        "traffic went on: every analysis had a verdict: {steps:#?}"
    );
    let spec = spec();
    // The window must fill with errors, then `failureThreshold` analyses
    // fail; one interval and a few seconds of slack for a loaded machine
    // (scrapes and queries late).
    let bound = Duration::from_secs(
        spec.window_seconds + u64::from(spec.failure_threshold + 1) * spec.interval_seconds + 4,
    );
    println!(
        "erroring canary: first errors to rollback {:.1} s ({} analyses; window {} s, interval {} s, threshold {}; bound {} s)",
        to_rollback.as_secs_f64(),
        steps.len(),
        spec.window_seconds,
        spec.interval_seconds,
        spec.failure_threshold,
        bound.as_secs()
    );
    assert!(to_rollback <= bound, "{to_rollback:?} > {bound:?}");

    // Healthy again (its window clear of the errors), then overloaded.
    sqlx::query("ALTER TABLE users_away RENAME TO users")
        .execute(&db.pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(spec.window_seconds + 1)).await;
    let (steps, _) = analyse_until(&prometheus, progressing(30), Duration::from_secs(20), |a| {
        a == Action::SetWeight(40)
    })
    .await;
    assert_eq!(
        actions(&steps).last(),
        Some(&Action::SetWeight(40)),
        "{steps:#?}"
    );
    load.send_replace(Load::Overload);
    let overload_began = Instant::now();
    let (steps, status) =
        analyse_until(&prometheus, progressing(10), Duration::from_secs(40), |a| {
            a == Action::RollBack
        })
        .await;
    load.send_replace(Load::Off);
    assert_eq!(
        (status.phase, status.canary_weight),
        (Phase::Failed, 0),
        "{steps:#?}"
    );
    assert!(shed.load(Ordering::Relaxed) > 0, "the canary shed nothing");
    println!(
        "overloaded canary: overload to rollback {:.1} s, {} calls shed",
        overload_began.elapsed().as_secs_f64(),
        shed.load(Ordering::Relaxed)
    );

    // Prometheus gone: every check fails (never a pass, never "no verdict").
    drop(server);
    let verdicts = analyse(&prometheus, &spec, &Pods::any_revision(NAMESPACE)).await;
    assert!(
        !verdicts.is_empty() && verdicts.iter().all(|v| v.outcome == Outcome::Failed),
        "{verdicts:#?}"
    );
}
