//! The CRD shipped in deploy/ is the one the Rust type generates, and a
//! Rollout written as a user would round-trips through it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mercato_rollout::{Rollout, crd_yaml};

#[test]
fn the_shipped_crd_is_generated_from_the_type() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/crds/rollouts.mercato.dev.yaml"
    );
    let shipped = std::fs::read_to_string(path).unwrap();
    let body: String = shipped
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        body,
        crd_yaml().unwrap(),
        "regenerate: cargo run -p mercato-rollout -- crd > deploy/crds/rollouts.mercato.dev.yaml"
    );
}

#[test]
fn a_rollout_as_a_user_writes_it() {
    let rollout: Rollout = serde_yaml::from_str(
        r#"
apiVersion: mercato.dev/v1alpha1
kind: Rollout
metadata: {name: order-service, namespace: mercato}
spec:
  service: order-service
  stableDeployment: order-service
  canaryDeployment: order-service-canary
  routes:
    - {virtualService: order-service, route: default}
    - {virtualService: mercato-public, route: order-sagas}
    - {virtualService: mercato-public, route: order-reads}
  stepWeight: 10
  maxWeight: 50
  intervalSeconds: 60
  failureThreshold: 3
  analysis:
    - {name: success-rate, min: 99}
    - {name: latency-p99, max: 0.5}
    - {name: saturation, query: 'max(db_pool_connections{state="in_use"})', max: 14}
"#,
    )
    .unwrap();
    assert_eq!(rollout.spec.analysis.len(), 3);
    assert_eq!(rollout.spec.routes.len(), 3);
    assert!(
        rollout.spec.problems().is_empty(),
        "{:?}",
        rollout.spec.problems()
    );
    assert_eq!(
        rollout.spec.analysis[0],
        mercato_rollout::Check::success_rate(99.0)
    );
    assert!(rollout.status.is_none());
}
