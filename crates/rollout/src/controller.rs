//! The Kubernetes controller: watches `Rollout`s and, for each, records the
//! next step in its status, then makes the cluster match the status.
//!
//! The status subresource is the controller's only memory. Each
//! reconciliation reads the Rollout afresh, decides (with
//! [`decide`](crate::decide)) and writes the new status *before* it touches
//! traffic; every reconciliation then sets the driven routes' weights to
//! the recorded weight, the canary's replicas to its share of the stable's
//! (none when Idle, Succeeded or Failed: a rejected release stops running)
//! and, while promoting, the stable Deployment's pod template to the
//! canary's. So a controller killed between the two resumes where the
//! status says — at the stored weight, the next analysis due one interval
//! after the stored `lastStepTime` — and the cluster converges.
//!
//! Requests by annotation on the Rollout:
//! - `mercato.dev/pause: "true"` holds the weight and analyses nothing while
//!   present (the interval restarts when it is removed);
//! - `mercato.dev/abort` rolls back now (weight 0, phase Failed), also
//!   while promoting: the stable Deployment gets back the template it had
//!   when the rollout started (as when a promotion outlives its deadline);
//! - `mercato.dev/promote` promotes now, skipping the remaining steps.
//!
//! The controller removes the last two once acted on. A new canary release
//! (its pod template — images, env, ConfigMaps, resources; see
//! [`template`](crate::template) — differs from the recorded
//! `canaryRevision`) starts a new rollout, which moves no traffic until the
//! canary Deployment has rolled it out (every replica updated and
//! available); a canary running the stable's release is `Idle`. Traffic is weighted on the routes' destinations of
//! subsets `stable` and `canary` (the DestinationRules of
//! deploy/components/canary).

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Duration};

use futures_util::StreamExt;
use k8s_openapi::{
    api::apps::v1::{Deployment, ReplicaSet},
    chrono::{DateTime, SecondsFormat, Utc},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{
        ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    },
    runtime::{
        controller::{Action as Requeue, Controller},
        events::{Event, EventType, Recorder, Reporter},
        watcher,
    },
};
use serde_json::{Value, json};

use crate::{
    Action, Phase, Rollout, RolloutSpec, RolloutStatus, Verdict,
    analysis::{Pods, analyse},
    decide,
    metrics::Metrics,
    prometheus::Prometheus,
    template,
};

/// While present with value `"true"`: no analysis, no weight change.
pub const PAUSE: &str = "mercato.dev/pause";
/// Present: roll back now (removed once done).
pub const ABORT: &str = "mercato.dev/abort";
/// Present: promote now (removed once done).
pub const PROMOTE: &str = "mercato.dev/promote";

/// The name the controller reports Events under (its Deployment's name).
pub const NAME: &str = "mercato-rollout";

/// How often a promotion looks whether the stable Deployment has rolled
/// out the canary's images, and a new canary whether its own are.
const PROMOTION_POLL: Duration = Duration::from_secs(5);
/// How soon a failed reconciliation (API server unreachable, a conflict)
/// is retried.
const RETRY: Duration = Duration::from_secs(5);

/// Why a reconciliation did not finish. Each is retried.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The cluster does not hold what the spec names (a route, its
    /// destinations): recorded in the status as its message.
    #[error("{0}")]
    Cluster(String),
    #[error("the Rollout has no namespace")]
    NoNamespace,
}

/// What every reconciliation shares.
#[derive(Clone)]
pub struct Context {
    client: Client,
    prometheus: Prometheus,
    recorder: Recorder,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("prometheus", &self.prometheus)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// `instance` names this controller's pod in the Events it records.
    pub fn new(client: Client, prometheus: Prometheus, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: NAME.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            prometheus,
            metrics: Arc::default(),
        }
    }

    /// What the reconciliations record for `/metrics`.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }
}

/// Runs the controller over the Rollouts of `namespace` until `shutdown`
/// completes (reconciliations in flight finish first).
pub async fn run(
    context: Context,
    namespace: &str,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = &context.client;
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), namespace);
    let controller = Controller::new(rollouts, watcher::Config::default());
    // What a Rollout drives changing (a re-apply resetting the routes'
    // weights, CI giving the canary a new template, pods becoming ready)
    // reconciles it at once, not at its next interval.
    let (by_deployment, by_route) = (controller.store(), controller.store());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let services: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &virtual_services());
    controller
        .watches(deployments, watcher::Config::default(), move |d| {
            let name = d.name_any();
            driving(&by_deployment, |spec| {
                spec.stable_deployment == name || spec.canary_deployment == name
            })
        })
        .watches_with(
            services,
            virtual_services(),
            watcher::Config::default(),
            move |vs| {
                let name = vs.name_any();
                driving(&by_route, |spec| {
                    spec.routes.iter().any(|r| r.virtual_service == name)
                })
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, Arc::new(context))
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::warn!(error = %e, "reconciliation failed");
            }
        })
        .await;
}

/// The Rollouts whose spec passes `drives`.
fn driving(
    rollouts: &kube::runtime::reflector::Store<Rollout>,
    drives: impl Fn(&RolloutSpec) -> bool,
) -> Vec<kube::runtime::reflector::ObjectRef<Rollout>> {
    rollouts
        .state()
        .iter()
        .filter(|r| drives(&r.spec))
        .map(|r| kube::runtime::reflector::ObjectRef::from_obj(r.as_ref()))
        .collect()
}

fn error_policy(rollout: Arc<Rollout>, error: &Error, _: Arc<Context>) -> Requeue {
    tracing::warn!(rollout = %rollout.name_any(), error = %error, "retrying");
    Requeue::requeue(RETRY)
}

/// The `pod-template-hash` of `deployment`'s current ReplicaSet (the one
/// it owns at its own `deployment.kubernetes.io/revision`), if found.
async fn template_hash(
    replica_sets: &Api<ReplicaSet>,
    deployment: &Deployment,
) -> Result<Option<String>, Error> {
    const REVISION: &str = "deployment.kubernetes.io/revision";
    let Some(revision) = deployment.annotations().get(REVISION) else {
        return Ok(None);
    };
    let selector = deployment
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let owned = replica_sets
        .list(&ListParams::default().labels(&selector))
        .await?;
    Ok(owned
        .items
        .iter()
        .filter(|rs| {
            rs.owner_references()
                .iter()
                .any(|o| o.kind == "Deployment" && o.name == deployment.name_any())
        })
        .find(|rs| rs.annotations().get(REVISION) == Some(revision))
        .and_then(|rs| rs.labels().get("pod-template-hash").cloned()))
}

/// Whether the Deployment has rolled out its current template: observed,
/// every replica updated and available, no old one left.
fn rolled_out(deployment: &Deployment) -> bool {
    let Some(status) = &deployment.status else {
        return false;
    };
    let want = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    status.observed_generation >= deployment.metadata.generation
        && status.updated_replicas.unwrap_or(0) >= want
        && status.available_replicas.unwrap_or(0) >= want
        && status.replicas.unwrap_or(0) == status.updated_replicas.unwrap_or(0)
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// How long until the next analysis is due (zero when due or never run).
fn until_due(spec: &RolloutSpec, status: &RolloutStatus, now: DateTime<Utc>) -> Duration {
    let Some(last) = status
        .last_step_time
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    else {
        return Duration::ZERO;
    };
    let due = last.with_timezone(&Utc) + Duration::from_secs(spec.interval_seconds);
    (due - now).to_std().unwrap_or(Duration::ZERO)
}

/// The canary's replicas for `status`, the stable running `stable`: one
/// to roll a new release out on, then as many as carry its weight at the
/// stable's load per pod — `stable × w / (100 − w)`, rounded up (the
/// stable's autoscaler sizes it for its own share) — and none once the
/// rollout is over.
pub fn canary_replicas(status: &RolloutStatus, stable: i32) -> i32 {
    match status.phase {
        Phase::Idle | Phase::Succeeded | Phase::Failed => 0,
        Phase::Initializing => 1,
        Phase::Progressing | Phase::Paused | Phase::Promoting => {
            let (s, w) = (
                i64::from(stable.max(1)),
                i64::from(status.canary_weight.min(100)),
            );
            let wanted = if w >= 100 {
                s
            } else {
                (s * w + (100 - w) - 1) / (100 - w)
            };
            i32::try_from(wanted).unwrap_or(i32::MAX).max(1)
        }
    }
}

/// The weight the routes get: the recorded one once the canary has the
/// replicas to carry it ([`canary_replicas`]); until then, what its
/// `available` replicas carry at the stable's load per pod (none without
/// one), so a step up never lands on a canary still scaling.
pub fn applied_weight(status: &RolloutStatus, stable: i32, available: i32) -> u32 {
    let weight = traffic_weight(status);
    if available >= canary_replicas(status, stable) {
        return weight;
    }
    let (s, a) = (i64::from(stable.max(1)), i64::from(available.max(0)));
    weight.min(u32::try_from(100 * a / (s + a)).unwrap_or(0))
}

/// The weight the canary gets in `status`: its recorded weight while the
/// rollout runs, none otherwise.
pub fn traffic_weight(status: &RolloutStatus) -> u32 {
    match status.phase {
        Phase::Progressing | Phase::Paused | Phase::Promoting => status.canary_weight,
        Phase::Idle | Phase::Initializing | Phase::Succeeded | Phase::Failed => 0,
    }
}

fn event(type_: EventType, reason: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Rollout".into(),
        secondary: None,
    }
}

fn summary(verdicts: &[Verdict]) -> String {
    if verdicts.is_empty() {
        return "no checks".into();
    }
    verdicts
        .iter()
        .map(|v| format!("{} {}: {}", v.check, v.outcome.as_str(), v.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What the reconciliation read of the two Deployments.
#[derive(Debug, Clone, Copy)]
struct Observed<'a> {
    /// Their releases ([`template::release`]).
    stable: &'a Value,
    canary: &'a Value,
    /// The stable's pod spec as it is (recorded when a rollout starts).
    stable_spec: &'a Value,
    /// Whether each has rolled out its current template.
    stable_rolled_out: bool,
    canary_rolled_out: bool,
    /// The `pod-template-hash` of the canary's current ReplicaSet.
    canary_hash: Option<&'a str>,
    /// The canary Deployment's `metadata.generation`.
    canary_generation: Option<i64>,
    /// The stable's replicas and the canary's available ones.
    stable_replicas: i32,
    canary_available: i32,
}

/// What one reconciliation found and decided.
struct Step {
    status: RolloutStatus,
    events: Vec<Event>,
    /// Annotations acted on, to remove.
    clear: Vec<&'static str>,
    requeue: Duration,
}

/// The next status of `rollout`: new revisions, annotations, then the step
/// that is due (which may query Prometheus).
async fn step(
    context: &Context,
    rollout: &Rollout,
    namespace: &str,
    observed: Observed<'_>,
    now: DateTime<Utc>,
) -> Step {
    let Observed { stable, canary, .. } = observed;
    let spec = &rollout.spec;
    let interval = Duration::from_secs(spec.interval_seconds);
    let mut next = rollout.status.clone().unwrap_or_default();
    let mut events = Vec::new();
    let mut clear = Vec::new();
    let revision = template::revision(canary);

    if next.canary_revision != revision {
        let phase = if canary == stable {
            Phase::Idle
        } else {
            events.push(event(
                EventType::Normal,
                "NewRevision",
                format!("canary runs {revision}: rollout starts"),
            ));
            Phase::Initializing
        };
        // A restore under way goes on: the template to put back stays the
        // one from before the failed promotion, not what the stable runs now.
        let restoring = next.restoring_stable;
        let stable_template = if restoring {
            next.stable_template.clone()
        } else {
            (phase == Phase::Initializing).then(|| observed.stable_spec.to_string())
        };
        next = RolloutStatus {
            phase,
            canary_revision: revision,
            stable_template,
            restoring_stable: restoring,
            ..RolloutStatus::default()
        };
    }
    if next.restoring_stable {
        let restored = next
            .stable_template
            .as_deref()
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
            .is_none_or(|t| template::release(&t, suffix(spec)) == *stable);
        if restored && observed.stable_rolled_out {
            next.restoring_stable = false;
            events.push(event(
                EventType::Normal,
                "StableRestored",
                "the stable Deployment runs its template from before the rollout again".into(),
            ));
        }
    }
    // Why a rollout failed stays with it; other messages last one step.
    if next.phase != Phase::Failed {
        next.message = None;
    }

    let annotations = rollout.annotations();
    let active = matches!(
        next.phase,
        Phase::Initializing | Phase::Progressing | Phase::Paused
    );
    if annotations.contains_key(ABORT) {
        clear.push(ABORT);
        if active || next.phase == Phase::Promoting {
            let restore = next.phase == Phase::Promoting;
            next.phase = Phase::Failed;
            next.canary_weight = 0;
            next.restoring_stable = restore;
            events.push(event(
                EventType::Warning,
                "Aborted",
                if restore {
                    "aborted by annotation while promoting: canary weight 0, the stable Deployment's template restored".into()
                } else {
                    "aborted by annotation: canary weight 0".into()
                },
            ));
        }
    } else if annotations.contains_key(PROMOTE) {
        clear.push(PROMOTE);
        if active {
            next.phase = Phase::Promoting;
            // The promotion's own deadline starts now (not at the last weight step).
            next.progressed_at = Some(timestamp(now));
            next.last_step_time = Some(timestamp(now));
            events.push(event(
                EventType::Normal,
                "Promoting",
                format!(
                    "promoted by annotation at weight {}: the stable Deployment takes the canary's template ({})",
                    next.canary_weight, next.canary_revision
                ),
            ));
        }
    }
    let pause = annotations.get(PAUSE).is_some_and(|v| v == "true");
    if pause && matches!(next.phase, Phase::Initializing | Phase::Progressing) {
        next.phase = Phase::Paused;
        events.push(event(
            EventType::Normal,
            "Paused",
            format!("paused at weight {}", next.canary_weight),
        ));
    } else if !pause && next.phase == Phase::Paused {
        // A whole interval of traffic before the next verdict.
        next.phase = if next.canary_weight == 0 {
            Phase::Initializing
        } else {
            Phase::Progressing
        };
        next.last_step_time = Some(timestamp(now));
        next.progressed_at = Some(timestamp(now));
        events.push(event(
            EventType::Normal,
            "Resumed",
            format!("resumed at weight {}", next.canary_weight),
        ));
    }

    // A rollout that has not moved forward (no weight step, a canary that
    // never got ready, analyses without a verdict) within the deadline fails.
    if next.progressed_at.is_none() {
        next.progressed_at = Some(timestamp(now));
    }
    let stalled_for = next
        .progressed_at
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .and_then(|at| (now - at.with_timezone(&Utc)).to_std().ok())
        .unwrap_or_default();
    if matches!(
        next.phase,
        Phase::Initializing | Phase::Progressing | Phase::Promoting
    ) && spec.progress_deadline_seconds > 0
        && stalled_for > Duration::from_secs(spec.progress_deadline_seconds)
    {
        // A promotion that never completes gives the stable its template back.
        next.restoring_stable = next.phase == Phase::Promoting;
        next.phase = Phase::Failed;
        next.canary_weight = 0;
        next.message = Some(format!(
            "no progress for {} s (progressDeadlineSeconds): rolled back",
            stalled_for.as_secs()
        ));
        events.push(event(
            EventType::Warning,
            "ProgressDeadlineExceeded",
            format!(
                "no progress for {} s: canary weight 0",
                stalled_for.as_secs()
            ),
        ));
    }

    let mut requeue = interval;
    match next.phase {
        Phase::Initializing if !observed.canary_rolled_out => {
            // No traffic before every canary replica runs the new template
            // and is available (a canary without ready pods answers 503s).
            next.message =
                Some("waiting for the canary Deployment to roll out its template".into());
            requeue = PROMOTION_POLL;
        }
        Phase::Initializing => {
            let (_, after) = decide(spec, &next, &[]);
            next = after;
            next.last_step_time = Some(timestamp(now));
            next.progressed_at = Some(timestamp(now));
            events.push(event(
                EventType::Normal,
                "WeightSet",
                format!("canary weight {}", next.canary_weight),
            ));
        }
        Phase::Progressing => {
            let wait = until_due(spec, &next, now);
            let needed = canary_replicas(&next, observed.stable_replicas);
            if observed.canary_available < needed {
                // Its share of traffic waits for it, and so does the verdict.
                next.message = Some(format!(
                    "waiting for the canary to scale to {needed} replicas for weight {}",
                    next.canary_weight
                ));
                requeue = PROMOTION_POLL;
            } else if wait.is_zero() {
                let pods = Pods {
                    namespace,
                    template_hash: observed.canary_hash,
                };
                let verdicts = analyse(&context.prometheus, spec, &pods).await;
                context.metrics.analysed(&rollout.name_any(), &verdicts);
                let (action, after) = decide(spec, &next, &verdicts);
                let analysis = summary(&verdicts);
                next = after;
                next.last_step_time = Some(timestamp(now));
                if matches!(action, Action::SetWeight(_) | Action::Promote) {
                    next.progressed_at = Some(timestamp(now));
                }
                events.push(match action {
                    Action::SetWeight(w) => event(
                        EventType::Normal,
                        "WeightSet",
                        format!("canary weight {w}: {analysis}"),
                    ),
                    Action::Hold => event(
                        EventType::Warning,
                        "AnalysisFailed",
                        format!(
                            "{} of {} failed analyses in a row, weight held at {}: {analysis}",
                            next.failed_checks, spec.failure_threshold, next.canary_weight
                        ),
                    ),
                    Action::Wait => event(
                        EventType::Normal,
                        "NoVerdict",
                        format!(
                            "weight held at {}, no failure counted: {analysis}",
                            next.canary_weight
                        ),
                    ),
                    Action::RollBack => event(
                        EventType::Warning,
                        "RolledBack",
                        format!(
                            "{} failed analyses in a row: canary weight 0: {analysis}",
                            next.failed_checks
                        ),
                    ),
                    Action::Promote => event(
                        EventType::Normal,
                        "Promoting",
                        format!(
                            "analysis passed at weight {}: the stable Deployment takes the canary's template ({})",
                            next.canary_weight, next.canary_revision
                        ),
                    ),
                    Action::Finish | Action::Nothing => {
                        event(EventType::Normal, "Analysed", analysis)
                    }
                });
            } else {
                requeue = wait;
            }
        }
        Phase::Promoting => {
            if stable == canary && observed.stable_rolled_out {
                let (_, after) = decide(spec, &next, &[]);
                next = after;
                next.last_step_time = Some(timestamp(now));
                events.push(event(
                    EventType::Normal,
                    "Succeeded",
                    format!(
                        "the stable Deployment runs {}: canary weight 0",
                        next.canary_revision
                    ),
                ));
            } else {
                requeue = PROMOTION_POLL.min(interval);
            }
        }
        Phase::Idle | Phase::Paused | Phase::Succeeded | Phase::Failed => {}
    }
    next.canary_generation = observed.canary_generation;
    Step {
        status: next,
        events,
        clear,
        requeue,
    }
}

async fn reconcile(rollout: Arc<Rollout>, context: Arc<Context>) -> Result<Requeue, Error> {
    let namespace = rollout.namespace().ok_or(Error::NoNamespace)?;
    let name = rollout.name_any();
    let client = &context.client;
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &namespace);
    // The watch's copy may predate this controller's last status write.
    let Some(rollout) = rollouts.get_opt(&name).await? else {
        return Ok(Requeue::await_change());
    };
    let reference = rollout.object_ref(&());
    let status = rollout.status.clone().unwrap_or_default();
    let spec = &rollout.spec;
    let interval = Duration::from_secs(spec.interval_seconds.max(1));

    let problems = spec.problems();
    if !problems.is_empty() {
        let message = format!("invalid spec: {}", problems.join("; "));
        record_problem(&context, &rollouts, &rollout, &status, message).await?;
        return Ok(Requeue::requeue(interval));
    }

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let services: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &namespace, &virtual_services());
    let found = async {
        let stable = deployments.get_opt(&spec.stable_deployment).await?;
        let canary = deployments.get_opt(&spec.canary_deployment).await?;
        let driven = read_routes(&services, spec).await?;
        match (stable, canary) {
            (Some(stable), Some(canary)) => Ok((stable, canary, driven)),
            // The manifests leave the stable Deployment to the controller
            // (deploy/components/rollout): it starts as the canary's release.
            (None, Some(canary)) => {
                // Only from a release no analysis is owed: a first install,
                // or the release the last rollout promoted (a stable deleted
                // since, by a prune or by hand).
                let revision = template::revision(&template::release(
                    &template::pod_spec(&canary),
                    suffix(spec),
                ));
                let judged = status.canary_revision.is_empty()
                    || (matches!(status.phase, Phase::Idle | Phase::Succeeded)
                        && status.canary_revision == revision);
                if !judged {
                    return Err(Error::Cluster(format!(
                        "no Deployment {:?} (stableDeployment), and the canary runs {revision}, \
                         which no analysis has passed: restore the stable Deployment, or give \
                         the canary the last promoted release",
                        spec.stable_deployment
                    )));
                }
                let stable =
                    template::stable_from(&canary, &spec.stable_deployment).map_err(|e| {
                        Error::Cluster(format!("cannot derive the stable Deployment: {e}"))
                    })?;
                let created = deployments.create(&PostParams::default(), &stable).await?;
                let note = format!(
                    "created the stable Deployment {} from the canary's template",
                    spec.stable_deployment
                );
                if let Err(e) = context
                    .recorder
                    .publish(
                        &event(EventType::Normal, "StableCreated", note),
                        &rollout.object_ref(&()),
                    )
                    .await
                {
                    tracing::warn!(error = %e, "event not recorded");
                }
                Ok((created, canary, driven))
            }
            (None, None) => Err(Error::Cluster(format!(
                "no Deployment {:?} (stableDeployment)",
                spec.stable_deployment
            ))),
            (_, None) => Err(Error::Cluster(format!(
                "no Deployment {:?} (canaryDeployment)",
                spec.canary_deployment
            ))),
        }
    };
    let (stable, canary, driven) = match found.await {
        Ok(found) => found,
        Err(Error::Cluster(message)) => {
            record_problem(&context, &rollouts, &rollout, &status, message).await?;
            return Ok(Requeue::requeue(interval));
        }
        Err(e) => return Err(e),
    };
    let (stable_spec, canary_spec) = (template::pod_spec(&stable), template::pod_spec(&canary));
    let stable_release = template::release(&stable_spec, suffix(spec));
    let canary_release = template::release(&canary_spec, suffix(spec));
    let stable_replicas = stable.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let canary_available = canary
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &namespace);
    let canary_hash = template_hash(&replica_sets, &canary).await?;

    let step = step(
        &context,
        &rollout,
        &namespace,
        Observed {
            stable: &stable_release,
            canary: &canary_release,
            stable_spec: &stable_spec,
            stable_rolled_out: rolled_out(&stable),
            // A canary scaled to zero has rolled out nothing to send traffic to.
            canary_rolled_out: rolled_out(&canary) && canary_available >= 1,
            canary_hash: canary_hash.as_deref(),
            canary_generation: canary.metadata.generation,
            stable_replicas,
            canary_available,
        },
        Utc::now(),
    )
    .await;

    // Record first: the cluster is made to match the record below, and
    // again by every later reconciliation.
    // Guarded by the resourceVersion read above: a status written since
    // (by a replica that led a moment ago) makes this reconciliation retry
    // on a fresh read instead of overwriting it.
    let mut version = rollout.resource_version();
    if step.status != status {
        let written = rollouts
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "metadata": { "resourceVersion": version },
                    "status": step.status,
                })),
            )
            .await?;
        version = written.resource_version();
    }
    if !step.clear.is_empty() {
        let annotations: serde_json::Map<String, Value> = step
            .clear
            .iter()
            .map(|key| ((*key).to_owned(), Value::Null))
            .collect();
        rollouts
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "metadata": { "resourceVersion": version, "annotations": annotations },
                })),
            )
            .await?;
    }
    context.metrics.record(&name, &step.status);
    for event in &step.events {
        if let Err(e) = context.recorder.publish(event, &reference).await {
            tracing::warn!(rollout = %name, error = %e, "event not recorded");
        }
    }
    tracing::info!(
        rollout = %name,
        phase = ?step.status.phase,
        weight = step.status.canary_weight,
        failed_checks = step.status.failed_checks,
        "reconciled"
    );

    let converged = async {
        // Replicas first: the weight follows what the canary can carry.
        scale(
            &deployments,
            &canary,
            canary_replicas(&step.status, stable_replicas),
        )
        .await?;
        let weight = applied_weight(&step.status, stable_replicas, canary_available);
        set_weight(&services, &driven, weight).await?;
        if step.status.phase == Phase::Promoting {
            let promoted = template::promoted(&canary_spec);
            take_template(&deployments, &stable, &stable_spec, &promoted).await?;
        } else if step.status.restoring_stable
            && let Some(before) = step
                .status
                .stable_template
                .as_deref()
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
        {
            take_template(&deployments, &stable, &stable_spec, &before).await?;
        }
        Ok::<_, Error>(())
    };
    match converged.await {
        Ok(()) => Ok(Requeue::requeue(step.requeue)),
        Err(Error::Cluster(message)) => {
            record_problem(&context, &rollouts, &rollout, &step.status, message).await?;
            Ok(Requeue::requeue(interval))
        }
        Err(e) => Err(e),
    }
}

/// Records why the rollout cannot go on (status message and a Warning
/// Event), once per distinct message.
async fn record_problem(
    context: &Context,
    rollouts: &Api<Rollout>,
    rollout: &Rollout,
    status: &RolloutStatus,
    message: String,
) -> Result<(), Error> {
    if status.message.as_deref() == Some(message.as_str()) {
        return Ok(());
    }
    tracing::warn!(rollout = %rollout.name_any(), %message, "cannot go on");
    rollouts
        .patch_status(
            &rollout.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "message": message } })),
        )
        .await?;
    let warning = event(EventType::Warning, "Misconfigured", message);
    if let Err(e) = context
        .recorder
        .publish(&warning, &rollout.object_ref(&()))
        .await
    {
        tracing::warn!(error = %e, "event not recorded");
    }
    Ok(())
}

fn virtual_services() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService"),
        "virtualservices",
    )
}

/// `http` with the named routes' `stable` and `canary` destinations set to
/// `100 - weight` and `weight`; the other routes as they were.
pub fn weighted(http: &[Value], routes: &[&str], weight: u32) -> Result<Vec<Value>, String> {
    let mut http = http.to_vec();
    for route in routes {
        let entry = http
            .iter_mut()
            .find(|r| r.get("name").and_then(Value::as_str) == Some(route))
            .ok_or_else(|| format!("no route named {route:?}"))?;
        let destinations = entry
            .get_mut("route")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| format!("route {route:?} has no destinations"))?;
        let subset = |d: &Value| {
            d.pointer("/destination/subset")
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let named: Vec<Option<String>> = destinations.iter().map(subset).collect();
        let count = |s: &str| named.iter().filter(|n| n.as_deref() == Some(s)).count();
        if count("stable") != 1 || count("canary") != 1 || destinations.len() != 2 {
            return Err(format!(
                "route {route:?} must have exactly two destinations, subsets stable and canary \
                 (deploy/components/canary adds them)"
            ));
        }
        for (destination, name) in destinations.iter_mut().zip(&named) {
            let share = if name.as_deref() == Some("canary") {
                weight
            } else {
                100 - weight
            };
            destination["weight"] = json!(share);
        }
    }
    Ok(http)
}

/// A VirtualService the spec drives, as read at the start of a
/// reconciliation: its `http` list and the names of its driven routes.
struct Driven {
    name: String,
    resource_version: Option<String>,
    http: Vec<Value>,
    routes: Vec<String>,
}

/// Reads each driven VirtualService once and checks that its named routes
/// can be weighted; an error names what the cluster lacks (a
/// VirtualService, a route, its subsets).
async fn read_routes(api: &Api<DynamicObject>, spec: &RolloutSpec) -> Result<Vec<Driven>, Error> {
    let mut by_service: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for r in &spec.routes {
        by_service
            .entry(r.virtual_service.as_str())
            .or_default()
            .push(r.route.clone());
    }
    let mut driven = Vec::new();
    for (name, routes) in by_service {
        let Some(vs) = api.get_opt(name).await? else {
            return Err(Error::Cluster(format!("no VirtualService {name:?}")));
        };
        let http = vs
            .data
            .pointer("/spec/http")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let names: Vec<&str> = routes.iter().map(String::as_str).collect();
        weighted(&http, &names, 0)
            .map_err(|e| Error::Cluster(format!("VirtualService {name:?}: {e}")))?;
        driven.push(Driven {
            name: name.to_owned(),
            resource_version: vs.resource_version(),
            http,
            routes,
        });
    }
    Ok(driven)
}

/// Sets the canary's weight on every driven route, one patch per
/// VirtualService that needs one (guarded by the resourceVersion it was
/// read with: a concurrent edit makes it fail and the reconciliation retry).
async fn set_weight(api: &Api<DynamicObject>, driven: &[Driven], weight: u32) -> Result<(), Error> {
    for vs in driven {
        let names: Vec<&str> = vs.routes.iter().map(String::as_str).collect();
        let http = weighted(&vs.http, &names, weight)
            .map_err(|e| Error::Cluster(format!("VirtualService {:?}: {e}", vs.name)))?;
        if http == vs.http {
            continue;
        }
        let patch = json!({
            "metadata": { "resourceVersion": vs.resource_version },
            "spec": { "http": http },
        });
        api.patch(&vs.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}

/// The canary Deployment's name suffix (`-canary` for `order-service` and
/// `order-service-canary`), which its ConfigMaps' names carry too.
fn suffix(spec: &RolloutSpec) -> &str {
    spec.canary_deployment
        .strip_prefix(spec.stable_deployment.as_str())
        .unwrap_or_default()
}

/// Gives the stable Deployment (pod spec `current`) the pod spec `wanted`,
/// guarded by its resourceVersion; nothing when it has it already.
async fn take_template(
    deployments: &Api<Deployment>,
    stable: &Deployment,
    current: &Value,
    wanted: &Value,
) -> Result<(), Error> {
    if current == wanted {
        return Ok(());
    }
    let patch = json!({
        "metadata": { "resourceVersion": stable.resource_version() },
        "spec": { "template": { "spec": template::replace_patch(current, wanted) } },
    });
    deployments
        .patch(
            &stable.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// Sets the canary Deployment's replicas (the controller owns them: the
/// manifests set none).
async fn scale(
    deployments: &Api<Deployment>,
    canary: &Deployment,
    replicas: i32,
) -> Result<(), Error> {
    if canary.spec.as_ref().and_then(|s| s.replicas) == Some(replicas) {
        return Ok(());
    }
    let patch = json!({ "spec": { "replicas": replicas } });
    deployments
        .patch(
            &canary.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, subsets: &[(&str, u32)]) -> Value {
        let route: Vec<Value> = subsets
            .iter()
            .map(|(s, w)| json!({"destination": {"host": "order-service", "subset": s}, "weight": w}))
            .collect();
        json!({"name": name, "route": route})
    }

    #[test]
    fn only_the_named_routes_are_weighted() {
        let http = vec![
            route("pin", &[("canary", 100)]),
            route("default", &[("stable", 100), ("canary", 0)]),
        ];
        let after = weighted(&http, &["default"], 30).unwrap_or_default();
        assert_eq!(after[0], http[0]);
        assert_eq!(
            after[1],
            route("default", &[("stable", 70), ("canary", 30)])
        );
        assert!(weighted(&http, &["missing"], 30).is_err());
        assert!(weighted(&http, &["pin"], 30).is_err());
    }

    #[test]
    fn the_next_analysis_is_due_an_interval_after_the_last_step() {
        let spec = RolloutSpec::new("order-service");
        let now = Utc::now();
        let status = RolloutStatus {
            last_step_time: Some(timestamp(now - Duration::from_secs(20))),
            ..RolloutStatus::default()
        };
        let wait = until_due(&spec, &status, now);
        assert!(
            wait > Duration::from_secs(39) && wait <= Duration::from_secs(40),
            "{wait:?}"
        );
        let overdue = RolloutStatus {
            last_step_time: Some(timestamp(now - Duration::from_secs(600))),
            ..status
        };
        assert_eq!(until_due(&spec, &overdue, now), Duration::ZERO);
        assert_eq!(
            until_due(&spec, &RolloutStatus::default(), now),
            Duration::ZERO
        );
    }
}
