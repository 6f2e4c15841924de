//! The analysis against a Prometheus HTTP API whose answers change over
//! time (an in-test server speaking `/api/v1/query`), driving the step
//! decision: a healthy canary is promoted, one whose error rate crosses the
//! threshold is rolled back within threshold × interval, Prometheus down or
//! without data never promotes, a resumed status goes on from its weight.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use mercato_rollout::{
    Action, Check, Phase, RolloutSpec, RolloutStatus, decide,
    prometheus::{Prometheus, QueryError},
};
use support::{Answer, Script, healthy, start_prometheus as start};

fn spec() -> RolloutSpec {
    RolloutSpec {
        interval_seconds: 30,
        failure_threshold: 2,
        analysis: vec![Check::success_rate(99.0), Check::latency_p99(0.5)],
        ..RolloutSpec::new("order-service")
    }
}

/// Runs intervals (the answer of interval i is script[i], the last one
/// repeating) until the rollout stops moving; returns every action.
async fn run(
    prometheus: &Prometheus,
    script: &Script,
    answers: Vec<Answer>,
    mut status: RolloutStatus,
) -> (Vec<Action>, RolloutStatus) {
    let spec = spec();
    let mut actions = Vec::new();
    let mut remaining = answers;
    for _ in 0..20 {
        script.lock().unwrap().0 = vec![remaining[0]];
        let mut verdicts = Vec::new();
        for check in &spec.analysis {
            let promql = check.promql(&spec, "mercato").unwrap();
            verdicts.push(check.judge(prometheus.query(&promql).await));
        }
        let (action, next) = decide(&spec, &status, &verdicts);
        status = next;
        if remaining.len() > 1 {
            remaining.remove(0);
        }
        actions.push(action);
        if matches!(action, Action::Nothing) {
            break;
        }
    }
    (actions, status)
}

#[tokio::test]
async fn a_healthy_canary_is_stepped_up_and_promoted() {
    let (script, prometheus) = start().await;
    let (actions, status) = run(
        &prometheus,
        &script,
        vec![healthy()],
        RolloutStatus::default(),
    )
    .await;
    assert_eq!(
        actions,
        [
            Action::SetWeight(10),
            Action::SetWeight(20),
            Action::SetWeight(30),
            Action::SetWeight(40),
            Action::SetWeight(50),
            Action::Promote,
            Action::Finish,
            Action::Nothing,
        ]
    );
    assert_eq!((status.phase, status.canary_weight), (Phase::Succeeded, 0));
    let queries = script.lock().unwrap().1.clone();
    assert!(
        queries.iter().all(|q| q.contains("order-service-canary")),
        "{queries:?}"
    );
}

#[tokio::test]
async fn a_failing_canary_is_rolled_back_within_the_threshold() {
    let (script, prometheus) = start().await;
    // Healthy for three intervals, then 5 % errors.
    let failing = Answer::Metrics {
        success_rate: 95.0,
        p99: 0.12,
    };
    let (actions, status) = run(
        &prometheus,
        &script,
        vec![healthy(), healthy(), healthy(), failing],
        RolloutStatus::default(),
    )
    .await;
    assert_eq!(
        actions,
        [
            Action::SetWeight(10),
            Action::SetWeight(20),
            Action::SetWeight(30),
            Action::Hold,
            Action::RollBack,
            Action::Nothing
        ]
    );
    // Rolled back on the threshold-th (2nd) failed interval after the errors began.
    assert_eq!(
        (status.phase, status.canary_weight, status.failed_checks),
        (Phase::Failed, 0, 2)
    );
    support::assert_failed_at_95_percent(&status);
}

#[tokio::test]
async fn prometheus_down_or_silent_never_promotes() {
    let (script, prometheus) = start().await;
    for answer in [Answer::Down, Answer::NoData] {
        let start = RolloutStatus {
            phase: Phase::Progressing,
            canary_weight: 40,
            ..RolloutStatus::default()
        };
        let (actions, status) = run(&prometheus, &script, vec![answer], start).await;
        assert!(
            !actions.contains(&Action::Promote),
            "{answer:?}: {actions:?}"
        );
        assert_eq!(status.phase, Phase::Failed, "{answer:?}");
    }
    // Not even listening.
    let nowhere = Prometheus::new("http://127.0.0.1:1", Duration::from_millis(500)).unwrap();
    assert!(matches!(
        nowhere.query("up").await,
        Err(QueryError::Unreachable(_))
    ));
}

#[tokio::test]
async fn a_restarted_controller_resumes_at_the_stored_weight() {
    let (script, prometheus) = start().await;
    let stored = RolloutStatus {
        phase: Phase::Progressing,
        canary_weight: 30,
        failed_checks: 1,
        ..RolloutStatus::default()
    };
    let (actions, _) = run(&prometheus, &script, vec![healthy()], stored).await;
    assert_eq!(
        &actions[..3],
        [
            Action::SetWeight(40),
            Action::SetWeight(50),
            Action::Promote
        ]
    );
}
