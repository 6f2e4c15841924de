//! `experiment.v1.ExperimentService` over [`Experiments`]: decode and
//! validate, call the use case, encode. Errors become statuses in one place
//! (`impl From<ExperimentError> for Status`).

use std::collections::BTreeMap;

use mercato_api::{FieldViolation, pagination, time};
use mercato_auth::caller;
use mercato_experiment::{Attributes, Experiment, Reason, Status, Targeting, Variant};
use mercato_proto::experiment::v1::{self as pb, experiment_service_server::ExperimentService};
use prost_types::{Struct, Timestamp, value::Kind};
use tonic::{Request, Response, Status as GrpcStatus};

use super::{Experiments, error::ExperimentError, store::StoredExperiment};

const PAGE_KIND: &str = "experiments";

/// The gRPC face of the experiments.
#[derive(Debug, Clone)]
pub struct ExperimentGrpc {
    experiments: Experiments,
}

impl ExperimentGrpc {
    pub fn new(experiments: Experiments) -> Self {
        Self { experiments }
    }
}

fn json_of(value: prost_types::Value) -> serde_json::Value {
    match value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(n)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(object_of(s)),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.into_iter().map(json_of).collect())
        }
    }
}

fn object_of(value: Struct) -> serde_json::Map<String, serde_json::Value> {
    value
        .fields
        .into_iter()
        .map(|(k, v)| (k, json_of(v)))
        .collect()
}

fn value_of(value: &serde_json::Value) -> prost_types::Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(value_of).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(struct_of(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A variant's config as the wire carries it.
pub fn struct_of(map: &serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), value_of(v))).collect(),
    }
}

fn timestamp(us: i64) -> Timestamp {
    let (seconds, nanos) = time::to_parts(us);
    Timestamp { seconds, nanos }
}

fn status_of(status: i32, field: &str) -> Result<Status, FieldViolation> {
    match pb::ExperimentStatus::try_from(status) {
        Ok(pb::ExperimentStatus::Draft) => Ok(Status::Draft),
        Ok(pb::ExperimentStatus::Running) => Ok(Status::Running),
        Ok(pb::ExperimentStatus::Paused) => Ok(Status::Paused),
        Ok(pb::ExperimentStatus::Ended) => Ok(Status::Ended),
        _ => Err(FieldViolation::new(
            field,
            "one of DRAFT, RUNNING, PAUSED, ENDED",
        )),
    }
}

fn status_to_pb(status: Status) -> pb::ExperimentStatus {
    match status {
        Status::Draft => pb::ExperimentStatus::Draft,
        Status::Running => pb::ExperimentStatus::Running,
        Status::Paused => pb::ExperimentStatus::Paused,
        Status::Ended => pb::ExperimentStatus::Ended,
    }
}

fn optional(text: String) -> Option<String> {
    (!text.trim().is_empty()).then_some(text)
}

/// The domain experiment of a request's; timestamps are the only thing
/// that can fail here (the rest is checked by `mercato_experiment::validate`).
fn experiment_of(experiment: pb::Experiment) -> Result<Experiment, ExperimentError> {
    let mut violations = Vec::new();
    let mut time_at = |field: &str, t: Option<Timestamp>| {
        t.and_then(|t| match time::from_parts(field, t.seconds, t.nanos) {
            Ok(us) => Some(us),
            Err(v) => {
                violations.push(v);
                None
            }
        })
    };
    let start_time = time_at("experiment.start_time", experiment.start_time);
    let end_time = time_at("experiment.end_time", experiment.end_time);
    if !violations.is_empty() {
        return Err(ExperimentError::Invalid(violations));
    }
    let targeting = experiment.targeting.unwrap_or_default();
    Ok(Experiment {
        key: experiment.key,
        name: experiment.name,
        description: experiment.description,
        variants: experiment
            .variants
            .into_iter()
            .map(|v| Variant {
                key: v.key,
                weight: v.weight,
                config: v.config.map(object_of).unwrap_or_default(),
            })
            .collect(),
        traffic_percent: experiment.traffic_percent,
        targeting: Targeting {
            segments: targeting.segments,
            countries: targeting.countries,
            device_types: targeting.device_types,
            min_app_version: optional(targeting.min_app_version),
            max_app_version: optional(targeting.max_app_version),
        },
        start_time,
        end_time,
        status: Status::Draft,
        control_variant: experiment.control_variant,
        salt: experiment.salt,
        forced_variants: experiment
            .forced_variants
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
    })
}

fn experiment_to_pb(stored: &StoredExperiment) -> pb::Experiment {
    let e = &stored.experiment;
    pb::Experiment {
        key: e.key.clone(),
        name: e.name.clone(),
        description: e.description.clone(),
        variants: e
            .variants
            .iter()
            .map(|v| pb::Variant {
                key: v.key.clone(),
                weight: v.weight,
                config: Some(struct_of(&v.config)),
            })
            .collect(),
        traffic_percent: e.traffic_percent,
        targeting: Some(pb::Targeting {
            segments: e.targeting.segments.clone(),
            countries: e.targeting.countries.clone(),
            device_types: e.targeting.device_types.clone(),
            min_app_version: e.targeting.min_app_version.clone().unwrap_or_default(),
            max_app_version: e.targeting.max_app_version.clone().unwrap_or_default(),
        }),
        start_time: e.start_time.map(timestamp),
        end_time: e.end_time.map(timestamp),
        status: status_to_pb(e.status).into(),
        control_variant: e.control_variant.clone(),
        salt: e.salt.clone(),
        forced_variants: e.forced_variants.clone().into_iter().collect(),
        create_time: Some(timestamp(stored.created_at_us)),
        update_time: Some(timestamp(stored.updated_at_us)),
    }
}

/// Keys of experiments and events: what fits a metric label and a header.
fn key(field: &str, value: &str) -> Result<(), FieldViolation> {
    if mercato_experiment::is_key_text(value) {
        Ok(())
    } else {
        Err(FieldViolation::new(field, "1–64 of a-z, 0-9, '-' and '_'"))
    }
}

fn user_id(value: &str) -> Result<(), FieldViolation> {
    if value.is_empty() || value.len() > 128 || value.chars().any(char::is_control) {
        Err(FieldViolation::new("user_id", "1–128 printable characters"))
    } else {
        Ok(())
    }
}

fn check(results: impl IntoIterator<Item = Result<(), FieldViolation>>) -> Result<(), GrpcStatus> {
    let violations: Vec<FieldViolation> = results.into_iter().filter_map(Result::err).collect();
    if violations.is_empty() {
        Ok(())
    } else {
        Err(ExperimentError::Invalid(violations).into())
    }
}

fn reason_to_pb(reason: Reason) -> pb::AssignmentReason {
    match reason {
        Reason::Assigned => pb::AssignmentReason::Assigned,
        Reason::NotRunning => pb::AssignmentReason::NotRunning,
        Reason::NotTargeted => pb::AssignmentReason::NotTargeted,
        Reason::NotInTraffic => pb::AssignmentReason::NotInTraffic,
        Reason::Forced => pb::AssignmentReason::Forced,
    }
}

#[tonic::async_trait]
impl ExperimentService for ExperimentGrpc {
    async fn create_experiment(
        &self,
        request: Request<pb::CreateExperimentRequest>,
    ) -> Result<Response<pb::CreateExperimentResponse>, GrpcStatus> {
        let Some(experiment) = request.into_inner().experiment else {
            return Err(ExperimentError::Invalid(vec![FieldViolation::new(
                "experiment",
                "required",
            )])
            .into());
        };
        let stored = self.experiments.create(experiment_of(experiment)?).await?;
        Ok(Response::new(pb::CreateExperimentResponse {
            experiment: Some(experiment_to_pb(&stored)),
        }))
    }

    async fn get_experiment(
        &self,
        request: Request<pb::GetExperimentRequest>,
    ) -> Result<Response<pb::GetExperimentResponse>, GrpcStatus> {
        let req = request.into_inner();
        check([key("key", &req.key)])?;
        let stored = self.experiments.get(&req.key).await?;
        Ok(Response::new(pb::GetExperimentResponse {
            experiment: Some(experiment_to_pb(&stored)),
        }))
    }

    async fn list_experiments(
        &self,
        request: Request<pb::ListExperimentsRequest>,
    ) -> Result<Response<pb::ListExperimentsResponse>, GrpcStatus> {
        let req = request.into_inner();
        let size = pagination::page_size(req.page_size);
        let after = pagination::decode_token(PAGE_KIND, &req.page_token);
        let (size, after) = match (size, after) {
            (Ok(size), Ok(after)) => (size, after),
            (size, after) => {
                return Err(ExperimentError::Invalid(
                    [size.err(), after.err()].into_iter().flatten().collect(),
                )
                .into());
            }
        };
        let page = self.experiments.list(after.as_deref(), size).await?;
        Ok(Response::new(pb::ListExperimentsResponse {
            experiments: page.items.iter().map(experiment_to_pb).collect(),
            next_page_token: page.next_token(PAGE_KIND),
        }))
    }

    async fn update_experiment(
        &self,
        request: Request<pb::UpdateExperimentRequest>,
    ) -> Result<Response<pb::UpdateExperimentResponse>, GrpcStatus> {
        let req = request.into_inner();
        let (Some(experiment), Some(mask)) = (req.experiment, req.update_mask) else {
            return Err(ExperimentError::Invalid(vec![FieldViolation::new(
                "update_mask",
                "experiment and update_mask are required",
            )])
            .into());
        };
        if mask.paths.is_empty() {
            return Err(ExperimentError::Invalid(vec![FieldViolation::new(
                "update_mask",
                "name at least one field",
            )])
            .into());
        }
        check([key("experiment.key", &experiment.key)])?;
        let stored = self
            .experiments
            .update(experiment_of(experiment)?, &mask.paths)
            .await?;
        Ok(Response::new(pb::UpdateExperimentResponse {
            experiment: Some(experiment_to_pb(&stored)),
        }))
    }

    async fn set_experiment_status(
        &self,
        request: Request<pb::SetExperimentStatusRequest>,
    ) -> Result<Response<pb::SetExperimentStatusResponse>, GrpcStatus> {
        let req = request.into_inner();
        let status = status_of(req.status, "status");
        check([key("key", &req.key), status.clone().map(drop)])?;
        let status = status.map_err(|v| ExperimentError::Invalid(vec![v]))?;
        let stored = self.experiments.set_status(&req.key, status).await?;
        Ok(Response::new(pb::SetExperimentStatusResponse {
            experiment: Some(experiment_to_pb(&stored)),
        }))
    }

    async fn get_assignment(
        &self,
        request: Request<pb::GetAssignmentRequest>,
    ) -> Result<Response<pb::GetAssignmentResponse>, GrpcStatus> {
        let principal = caller(&request)?;
        let req = request.into_inner();
        check([
            key("experiment_key", &req.experiment_key),
            user_id(&req.user_id),
        ])?;
        principal.ensure_access(&req.user_id)?;
        let attributes = req.attributes.unwrap_or_default();
        let outcome = self
            .experiments
            .assign(
                &req.experiment_key,
                &req.user_id,
                &Attributes {
                    country: attributes.country,
                    device_type: attributes.device_type,
                    app_version: attributes.app_version,
                    segments: attributes.segments,
                },
            )
            .await?;
        Ok(Response::new(pb::GetAssignmentResponse {
            in_experiment: outcome.variant.is_some(),
            variant_key: outcome
                .variant
                .as_ref()
                .map(|v| v.key.clone())
                .unwrap_or_default(),
            config: outcome.variant.as_ref().map(|v| struct_of(&v.config)),
            reason: reason_to_pb(outcome.reason).into(),
        }))
    }

    async fn track_event(
        &self,
        request: Request<pb::TrackEventRequest>,
    ) -> Result<Response<pb::TrackEventResponse>, GrpcStatus> {
        let principal = caller(&request)?;
        let req = request.into_inner();
        let finite = if req.value.is_finite() {
            Ok(())
        } else {
            Err(FieldViolation::new("value", "a finite number"))
        };
        check([
            key("experiment_key", &req.experiment_key),
            user_id(&req.user_id),
            key("event_name", &req.event_name),
            finite,
        ])?;
        principal.ensure_access(&req.user_id)?;
        let counted = self
            .experiments
            .track(
                &req.experiment_key,
                &req.user_id,
                &req.event_name,
                req.value,
            )
            .await?;
        Ok(Response::new(pb::TrackEventResponse { counted }))
    }

    async fn get_results(
        &self,
        request: Request<pb::GetResultsRequest>,
    ) -> Result<Response<pb::GetResultsResponse>, GrpcStatus> {
        let req = request.into_inner();
        check([
            key("experiment_key", &req.experiment_key),
            key("event_name", &req.event_name),
        ])?;
        let (variants, srm_p_value) = self
            .experiments
            .results(&req.experiment_key, &req.event_name)
            .await?;
        Ok(Response::new(pb::GetResultsResponse {
            variants: variants
                .into_iter()
                .map(|v| {
                    #[allow(clippy::cast_precision_loss)] // user counts
                    let rate = if v.counts.exposures == 0 {
                        0.0
                    } else {
                        v.counts.conversions as f64 / v.counts.exposures as f64
                    };
                    pb::VariantResult {
                        variant_key: v.variant_key,
                        exposures: v.counts.exposures,
                        conversions: v.counts.conversions,
                        conversion_rate: rate,
                        value_sum: v.counts.value_sum,
                        p_value: v.p_value,
                    }
                })
                .collect(),
            srm_p_value,
        }))
    }
}
