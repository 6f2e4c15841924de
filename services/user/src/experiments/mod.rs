//! A/B experiments served by the user service (`experiment.v1`): the use
//! cases over [`mercato_experiment`] (validation, assignment, statistics),
//! stored next to the users ([`store`]), exposed by [`grpc`].
//!
//! Choices: an exposure is recorded once per user and experiment (the first
//! ASSIGNED answer; FORCED answers are QA's and record nothing), and
//! `experiment_exposures_total` counts those first exposures; an event
//! counts only for an exposed user and is attributed to the variant the user
//! was exposed to. While an experiment runs (or is paused) its variants and
//! control are frozen: changing a weight would move enrolled users.

pub mod error;
pub mod grpc;
pub mod store;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use mercato_api::{FieldViolation, pagination::Page};
use mercato_experiment::{Assignment, Attributes, Experiment, Reason, Status, stats};
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::domain::now_us;
use error::ExperimentError;
use store::{ExperimentStore, StoredExperiment, VariantCounts};

/// Distinct event names counted by name in `experiment_events_total`;
/// beyond, their events count under `other` (the label set stays bounded).
const MAX_EVENT_LABELS: usize = 100;

type Labels = Vec<(&'static str, String)>;

/// `experiment_exposures_total` and `experiment_events_total`.
#[derive(Debug, Clone, Default)]
pub struct ExperimentMetrics {
    exposures: Family<Labels, Counter>,
    events: Family<Labels, Counter>,
    event_names: Arc<Mutex<BTreeSet<(String, String)>>>,
}

impl ExperimentMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "experiment_exposures",
            "Users exposed to an experiment's variant (first exposure)",
            self.exposures.clone(),
        );
        registry.register(
            "experiment_events",
            "Events of exposed users, by experiment, variant and event",
            self.events.clone(),
        );
    }

    fn event_label(&self, experiment: &str, event: &str) -> String {
        let Ok(mut names) = self.event_names.lock() else {
            return "other".into();
        };
        let name = (experiment.to_owned(), event.to_owned());
        if names.contains(&name) || names.len() < MAX_EVENT_LABELS {
            names.insert(name);
            event.to_owned()
        } else {
            "other".into()
        }
    }
}

/// What GetAssignment answers.
#[derive(Debug, Clone)]
pub struct AssignmentOutcome {
    pub reason: Reason,
    /// The variant's key and config when the user is in the experiment.
    pub variant: Option<mercato_experiment::Variant>,
}

/// One variant's line of GetResults.
#[derive(Debug, Clone)]
pub struct VariantResult {
    pub variant_key: String,
    pub counts: VariantCounts,
    pub p_value: Option<f64>,
}

/// The use cases.
#[derive(Debug, Clone)]
pub struct Experiments {
    store: ExperimentStore,
    metrics: ExperimentMetrics,
}

/// Fields UpdateExperiment may name.
pub const UPDATABLE: [&str; 9] = [
    "name",
    "description",
    "variants",
    "traffic_percent",
    "targeting",
    "start_time",
    "end_time",
    "control_variant",
    "forced_variants",
];

fn invalid(violations: Vec<mercato_experiment::FieldViolation>) -> ExperimentError {
    ExperimentError::Invalid(
        violations
            .into_iter()
            .map(|v| FieldViolation::new(format!("experiment.{}", v.field), v.description))
            .collect(),
    )
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Draft => "DRAFT",
        Status::Running => "RUNNING",
        Status::Paused => "PAUSED",
        Status::Ended => "ENDED",
    }
}

impl Experiments {
    pub fn new(store: ExperimentStore, metrics: ExperimentMetrics) -> Self {
        Self { store, metrics }
    }

    /// Stores a new experiment in DRAFT; control defaults to the first
    /// variant, the salt to the key.
    pub async fn create(
        &self,
        mut experiment: Experiment,
    ) -> Result<StoredExperiment, ExperimentError> {
        experiment.status = Status::Draft;
        if experiment.control_variant.is_empty()
            && let Some(first) = experiment.variants.first()
        {
            experiment.control_variant = first.key.clone();
        }
        if experiment.salt.is_empty() {
            experiment.salt = experiment.key.clone();
        }
        let problems = mercato_experiment::validate(&experiment);
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        self.store.insert(&experiment, now_us()).await
    }

    pub async fn get(&self, key: &str) -> Result<StoredExperiment, ExperimentError> {
        self.store.get(key).await
    }

    pub async fn list(
        &self,
        after: Option<&str>,
        page_size: u32,
    ) -> Result<Page<StoredExperiment>, ExperimentError> {
        let fetched = self.store.list(after, page_size + 1).await?;
        Ok(Page::of(fetched, page_size, |e| e.experiment.key.clone()))
    }

    /// Applies the `mask` fields of `patch`; variants and control are frozen
    /// while RUNNING or PAUSED, everything once ENDED.
    pub async fn update(
        &self,
        patch: Experiment,
        mask: &[String],
    ) -> Result<StoredExperiment, ExperimentError> {
        let stored = self.store.get(&patch.key).await?;
        let mut next = stored.experiment.clone();
        let status = status_name(next.status);
        for field in mask {
            let frozen = match next.status {
                Status::Ended => true,
                Status::Running | Status::Paused => {
                    matches!(field.as_str(), "variants" | "control_variant")
                }
                Status::Draft => false,
            };
            if frozen {
                let field = UPDATABLE
                    .iter()
                    .find(|f| **f == field)
                    .copied()
                    .unwrap_or("experiment");
                return Err(ExperimentError::Frozen { field, status });
            }
            match field.as_str() {
                "name" => next.name = patch.name.clone(),
                "description" => next.description = patch.description.clone(),
                "variants" => next.variants = patch.variants.clone(),
                "traffic_percent" => next.traffic_percent = patch.traffic_percent,
                "targeting" => next.targeting = patch.targeting.clone(),
                "start_time" => next.start_time = patch.start_time,
                "end_time" => next.end_time = patch.end_time,
                "control_variant" => next.control_variant = patch.control_variant.clone(),
                "forced_variants" => next.forced_variants = patch.forced_variants.clone(),
                other => {
                    return Err(ExperimentError::Invalid(vec![FieldViolation::new(
                        "update_mask",
                        format!(
                            "{other:?} is not an updatable field ({})",
                            UPDATABLE.join(", ")
                        ),
                    )]));
                }
            }
        }
        let problems = mercato_experiment::validate(&next);
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        if next == stored.experiment {
            return Ok(stored);
        }
        self.store.replace(&stored, &next, now_us()).await
    }

    /// Moves the experiment to `status` if its life cycle allows.
    pub async fn set_status(
        &self,
        key: &str,
        status: Status,
    ) -> Result<StoredExperiment, ExperimentError> {
        let stored = self.store.get(key).await?;
        let next_status = stored.experiment.status.transition(status)?;
        if next_status == stored.experiment.status {
            return Ok(stored);
        }
        let mut next = stored.experiment.clone();
        next.status = next_status;
        self.store.replace(&stored, &next, now_us()).await
    }

    /// The user's assignment; the first ASSIGNED answer records an exposure.
    pub async fn assign(
        &self,
        key: &str,
        user_id: &str,
        attributes: &Attributes,
    ) -> Result<AssignmentOutcome, ExperimentError> {
        let experiment = self.store.get(key).await?.experiment;
        let now = now_us();
        let Assignment { reason, variant } =
            mercato_experiment::assign(&experiment, user_id, attributes, now);
        let variant = variant.and_then(|i| experiment.variants.get(i)).cloned();
        if reason == Reason::Assigned
            && let Some(variant) = &variant
            && self.store.expose(key, user_id, &variant.key, now).await?
        {
            self.metrics
                .exposures
                .get_or_create(&vec![
                    ("experiment", key.to_owned()),
                    ("variant", variant.key.clone()),
                ])
                .inc();
        }
        Ok(AssignmentOutcome { reason, variant })
    }

    /// Records an event; false when the user was never exposed.
    pub async fn track(
        &self,
        key: &str,
        user_id: &str,
        event_name: &str,
        value: f64,
    ) -> Result<bool, ExperimentError> {
        // NOT_FOUND for an unknown experiment rather than "not counted".
        self.store.get(key).await?;
        let Some(variant) = self
            .store
            .track(key, user_id, event_name, value, now_us())
            .await?
        else {
            return Ok(false);
        };
        let event = self.metrics.event_label(key, event_name);
        self.metrics
            .events
            .get_or_create(&vec![
                ("experiment", key.to_owned()),
                ("variant", variant),
                ("event", event),
            ])
            .inc();
        Ok(true)
    }

    /// Per variant (in declared order) exposures, conversions and the
    /// p-value against control; and the SRM p-value of the exposures.
    pub async fn results(
        &self,
        key: &str,
        event_name: &str,
    ) -> Result<(Vec<VariantResult>, Option<f64>), ExperimentError> {
        let experiment = self.store.get(key).await?.experiment;
        let counts = self.store.counts(key, event_name).await?;
        let of = |variant: &str| counts.get(variant).cloned().unwrap_or_default();
        let control = of(&experiment.control_variant);
        let results = experiment
            .variants
            .iter()
            .map(|v| {
                let counts = of(&v.key);
                let p_value = (v.key != experiment.control_variant)
                    .then(|| {
                        stats::two_proportion_p_value(
                            (control.conversions, control.exposures),
                            (counts.conversions, counts.exposures),
                        )
                    })
                    .flatten();
                VariantResult {
                    variant_key: v.key.clone(),
                    counts,
                    p_value,
                }
            })
            .collect::<Vec<_>>();
        let exposures: Vec<u64> = results.iter().map(|r| r.counts.exposures).collect();
        let weights: Vec<u32> = experiment.variants.iter().map(|v| v.weight).collect();
        Ok((results, stats::srm_p_value(&exposures, &weights)))
    }
}
