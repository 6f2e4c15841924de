//! experiment.v1.ExperimentService on the user service: life cycle and
//! validation, assignment that survives replicas and restarts, exposures,
//! events and results against hand-computed figures, RBAC and BOLA.

use mercato_proto::experiment::v1::{
    AssignmentReason, CreateExperimentRequest, Experiment, ExperimentStatus, GetAssignmentRequest,
    GetExperimentRequest, GetResultsRequest, ListExperimentsRequest, SetExperimentStatusRequest,
    TrackEventRequest, UpdateExperimentRequest, UserAttributes, Variant,
    experiment_service_client::ExperimentServiceClient,
};
use mercato_testkit::auth::{AuthedChannel, token, with_token};
use tonic::Code;

use crate::{
    crud::violated_fields,
    helpers::{Db, RedisMode, TestApp, TestDatabase, admin_channel, channel},
};

mercato_testkit::on_both_backends!(
    life_cycle_and_validation,
    assignments_are_sticky_across_replicas_and_restarts,
    results_match_the_counts,
    users_take_part_only_as_themselves,
);

async fn admin(app: &TestApp) -> ExperimentServiceClient<AuthedChannel> {
    admin_client(app.grpc_addr).await
}

pub(crate) async fn admin_client(
    addr: std::net::SocketAddr,
) -> ExperimentServiceClient<AuthedChannel> {
    ExperimentServiceClient::new(admin_channel(addr).await)
}

pub(crate) fn experiment(key: &str, weights: &[u32]) -> Experiment {
    Experiment {
        key: key.into(),
        name: format!("{key} test"),
        variants: weights
            .iter()
            .enumerate()
            .map(|(i, w)| Variant {
                key: if i == 0 {
                    "control".into()
                } else {
                    format!("v{i}")
                },
                weight: *w,
                config: Some(mercato_user::experiments::grpc::struct_of(
                    &serde_json::json!({"page_size": 10 * (i + 1)})
                        .as_object()
                        .cloned()
                        .unwrap(),
                )),
            })
            .collect(),
        traffic_percent: 100,
        ..Experiment::default()
    }
}

pub(crate) async fn create_running(
    client: &mut ExperimentServiceClient<AuthedChannel>,
    experiment: Experiment,
) -> Experiment {
    let key = experiment.key.clone();
    client
        .create_experiment(CreateExperimentRequest {
            experiment: Some(experiment),
        })
        .await
        .unwrap();
    client
        .set_experiment_status(SetExperimentStatusRequest {
            key,
            status: ExperimentStatus::Running.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .experiment
        .unwrap()
}

pub(crate) async fn assignment(
    client: &mut ExperimentServiceClient<AuthedChannel>,
    key: &str,
    user: &str,
) -> (AssignmentReason, String) {
    let answer = client
        .get_assignment(GetAssignmentRequest {
            experiment_key: key.into(),
            user_id: user.into(),
            attributes: Some(UserAttributes::default()),
        })
        .await
        .unwrap()
        .into_inner();
    (answer.reason(), answer.variant_key)
}

async fn life_cycle_and_validation(db: Db) {
    let database = TestDatabase::create(db).await;
    let app = TestApp::spawn(&database, RedisMode::InProcess).await;
    let mut client = admin(&app).await;

    // Bad input: every broken rule named, nothing stored.
    let mut bad = experiment("bad", &[60, 30]);
    bad.variants[1].key = "control".into();
    bad.traffic_percent = 101;
    bad.start_time = Some(prost_types::Timestamp {
        seconds: 2_000,
        nanos: 0,
    });
    bad.end_time = Some(prost_types::Timestamp {
        seconds: 1_000,
        nanos: 0,
    });
    let status = client
        .create_experiment(CreateExperimentRequest {
            experiment: Some(bad),
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        [
            "experiment.variants[1].key",
            "experiment.variants",
            "experiment.traffic_percent",
            "experiment.end_time",
        ]
    );
    let missing = client
        .get_experiment(GetExperimentRequest { key: "bad".into() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // Created as DRAFT whatever it says; control and salt defaulted.
    let mut draft = experiment("page-size", &[50, 50]);
    draft.status = ExperimentStatus::Running.into();
    let created = client
        .create_experiment(CreateExperimentRequest {
            experiment: Some(draft.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .experiment
        .unwrap();
    assert_eq!(created.status(), ExperimentStatus::Draft);
    assert_eq!(
        (created.control_variant.as_str(), created.salt.as_str()),
        ("control", "page-size")
    );
    let taken = client
        .create_experiment(CreateExperimentRequest {
            experiment: Some(draft),
        })
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);

    let set = |status: ExperimentStatus| SetExperimentStatusRequest {
        key: "page-size".into(),
        status: status.into(),
    };
    let paused_from_draft = client
        .set_experiment_status(set(ExperimentStatus::Paused))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&paused_from_draft), ["status"]);
    client
        .set_experiment_status(set(ExperimentStatus::Running))
        .await
        .unwrap();
    // Again: a no-op that succeeds.
    client
        .set_experiment_status(set(ExperimentStatus::Running))
        .await
        .unwrap();

    // Running: weights frozen, traffic free.
    let mut patch = experiment("page-size", &[90, 10]);
    let frozen = client
        .update_experiment(UpdateExperimentRequest {
            experiment: Some(patch.clone()),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["variants".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(frozen.code(), Code::FailedPrecondition, "{frozen:?}");
    patch.traffic_percent = 30;
    let updated = client
        .update_experiment(UpdateExperimentRequest {
            experiment: Some(patch.clone()),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["traffic_percent".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .experiment
        .unwrap();
    assert_eq!(
        (updated.traffic_percent, updated.variants[0].weight),
        (30, 50)
    );
    let unknown_field = client
        .update_experiment(UpdateExperimentRequest {
            experiment: Some(patch),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["status".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&unknown_field), ["update_mask"]);

    client
        .set_experiment_status(set(ExperimentStatus::Paused))
        .await
        .unwrap();
    client
        .set_experiment_status(set(ExperimentStatus::Ended))
        .await
        .unwrap();
    let ended = client
        .set_experiment_status(set(ExperimentStatus::Running))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&ended), ["status"]);
    let unspecified = client
        .set_experiment_status(set(ExperimentStatus::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&unspecified), ["status"]);

    // Pages by key.
    for key in ["exp-a", "exp-b", "exp-c"] {
        client
            .create_experiment(CreateExperimentRequest {
                experiment: Some(experiment(key, &[50, 50])),
            })
            .await
            .unwrap();
    }
    let first = client
        .list_experiments(ListExperimentsRequest {
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let second = client
        .list_experiments(ListExperimentsRequest {
            page_size: 2,
            page_token: first.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<String> = first
        .experiments
        .iter()
        .chain(&second.experiments)
        .map(|e| e.key.clone())
        .collect();
    assert_eq!(keys, ["exp-a", "exp-b", "exp-c", "page-size"]);
    assert!(second.next_page_token.is_empty());
    app.shutdown().await;
}

async fn assignments_are_sticky_across_replicas_and_restarts(db: Db) {
    let database = TestDatabase::create(db).await;
    let one = TestApp::spawn(&database, RedisMode::InProcess).await;
    let two = TestApp::spawn(&database, RedisMode::InProcess).await;
    let mut first = admin(&one).await;
    let mut e = experiment("sticky", &[34, 33, 33]);
    e.traffic_percent = 10;
    create_running(&mut first, e).await;
    let users: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    let mut before = Vec::new();
    for user in &users {
        before.push(assignment(&mut first, "sticky", user).await);
    }
    let mut second = admin(&two).await;
    for (user, answer) in users.iter().zip(&before) {
        assert_eq!(
            &assignment(&mut second, "sticky", user).await,
            answer,
            "{user} on the other replica"
        );
    }
    one.shutdown().await;
    let restarted = TestApp::spawn(&database, RedisMode::InProcess).await;
    let mut third = admin(&restarted).await;

    // Ramp up 10 % → 50 % after the restart: nobody enrolled moves.
    third
        .update_experiment(UpdateExperimentRequest {
            experiment: Some(Experiment {
                key: "sticky".into(),
                traffic_percent: 50,
                ..Experiment::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["traffic_percent".into()],
            }),
        })
        .await
        .unwrap();
    let mut enrolled_before = 0;
    let mut enrolled_after = 0;
    for (user, (reason, variant)) in users.iter().zip(&before) {
        let (now_reason, now_variant) = assignment(&mut third, "sticky", user).await;
        if *reason == AssignmentReason::Assigned {
            enrolled_before += 1;
            assert_eq!(
                (now_reason, &now_variant),
                (AssignmentReason::Assigned, variant),
                "{user} moved"
            );
        } else {
            assert_eq!(*reason, AssignmentReason::NotInTraffic);
        }
        enrolled_after += usize::from(now_reason == AssignmentReason::Assigned);
    }
    assert!(
        enrolled_before > 10 && enrolled_after > enrolled_before * 3,
        "{enrolled_before} → {enrolled_after}"
    );
    two.shutdown().await;
    restarted.shutdown().await;
}

async fn results_match_the_counts(db: Db) {
    let database = TestDatabase::create(db).await;
    let app = TestApp::spawn(&database, RedisMode::InProcess).await;
    let mut client = admin(&app).await;
    let mut e = experiment("checkout", &[50, 50]);
    e.forced_variants.insert("qa-user".into(), "v1".into());
    create_running(&mut client, e).await;

    // 200 users exposed (twice: one exposure each), every third converts
    // with a purchase of 10; one event of an unexposed user is not counted.
    let mut exposures = std::collections::BTreeMap::<String, u64>::new();
    let mut conversions = std::collections::BTreeMap::<String, u64>::new();
    for i in 0..200 {
        let user = format!("buyer-{i}");
        let (reason, variant) = assignment(&mut client, "checkout", &user).await;
        assert_eq!(reason, AssignmentReason::Assigned);
        assert_eq!(assignment(&mut client, "checkout", &user).await.1, variant);
        *exposures.entry(variant.clone()).or_default() += 1;
        if i % 3 == 0 {
            for _ in 0..2 {
                let counted = client
                    .track_event(TrackEventRequest {
                        experiment_key: "checkout".into(),
                        user_id: user.clone(),
                        event_name: "purchase".into(),
                        value: 10.0,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .counted;
                assert!(counted);
            }
            *conversions.entry(variant).or_default() += 1;
        }
    }
    let forced = assignment(&mut client, "checkout", "qa-user").await;
    assert_eq!(forced, (AssignmentReason::Forced, "v1".into()));
    let stranger = client
        .track_event(TrackEventRequest {
            experiment_key: "checkout".into(),
            user_id: "never-exposed".into(),
            event_name: "purchase".into(),
            value: 1.0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!stranger.counted);

    let results = client
        .get_results(GetResultsRequest {
            experiment_key: "checkout".into(),
            event_name: "purchase".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<&str> = results
        .variants
        .iter()
        .map(|v| v.variant_key.as_str())
        .collect();
    assert_eq!(keys, ["control", "v1"]);
    for v in &results.variants {
        let n = exposures[&v.variant_key];
        let x = conversions.get(&v.variant_key).copied().unwrap_or(0);
        assert_eq!((v.exposures, v.conversions), (n, x), "{}", v.variant_key);
        assert!((v.conversion_rate - x as f64 / n as f64).abs() < 1e-12);
        assert!((v.value_sum - 20.0 * x as f64).abs() < 1e-9);
    }
    let (c, t) = (&results.variants[0], &results.variants[1]);
    assert_eq!(c.p_value, None);
    let expected_p = mercato_experiment::stats::two_proportion_p_value(
        (c.conversions, c.exposures),
        (t.conversions, t.exposures),
    );
    assert_eq!(t.p_value, expected_p);
    let expected_srm =
        mercato_experiment::stats::srm_p_value(&[c.exposures, t.exposures], &[50, 50]);
    assert_eq!(results.srm_p_value, expected_srm);
    assert!(results.srm_p_value.is_some());

    // First exposures and counted events in Prometheus.
    let mut total_exposed = 0.0;
    for v in ["control", "v1"] {
        total_exposed += app
            .metric(&format!(
                "experiment_exposures_total{{experiment=\"checkout\",variant=\"{v}\"}}"
            ))
            .await
            .unwrap_or(0.0);
    }
    assert_eq!(total_exposed, 200.0);
    let mut total_events = 0.0;
    for v in ["control", "v1"] {
        total_events += app
            .metric(&format!(
                "experiment_events_total{{experiment=\"checkout\",variant=\"{v}\",event=\"purchase\"}}"
            ))
            .await
            .unwrap_or(0.0);
    }
    assert_eq!(total_events, 2.0 * conversions.values().sum::<u64>() as f64);
    app.shutdown().await;
}

async fn users_take_part_only_as_themselves(db: Db) {
    let database = TestDatabase::create(db).await;
    let app = TestApp::spawn(&database, RedisMode::InProcess).await;
    create_running(&mut admin(&app).await, experiment("bola", &[50, 50])).await;
    let as_user = |sub: &str, role: &str| {
        let t = token(sub, &[role]);
        let addr = app.grpc_addr;
        async move { ExperimentServiceClient::new(with_token(channel(addr).await, &t)) }
    };
    let mut alice = as_user("alice", "user").await;
    assert_eq!(
        assignment(&mut alice, "bola", "alice").await.0,
        AssignmentReason::Assigned
    );
    let others = alice
        .get_assignment(GetAssignmentRequest {
            experiment_key: "bola".into(),
            user_id: "bob".into(),
            attributes: None,
        })
        .await
        .unwrap_err();
    assert_eq!(others.code(), Code::PermissionDenied);
    let track_other = alice
        .track_event(TrackEventRequest {
            experiment_key: "bola".into(),
            user_id: "bob".into(),
            event_name: "purchase".into(),
            value: 1.0,
        })
        .await
        .unwrap_err();
    assert_eq!(track_other.code(), Code::PermissionDenied);
    let manage = alice
        .create_experiment(CreateExperimentRequest {
            experiment: Some(experiment("mine", &[50, 50])),
        })
        .await
        .unwrap_err();
    assert_eq!(manage.code(), Code::PermissionDenied);
    let results = alice
        .get_results(GetResultsRequest {
            experiment_key: "bola".into(),
            event_name: "purchase".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(results.code(), Code::PermissionDenied);
    let mut guest = as_user("someone", "guest").await;
    let guest_answer = guest
        .get_assignment(GetAssignmentRequest {
            experiment_key: "bola".into(),
            user_id: "someone".into(),
            attributes: None,
        })
        .await
        .unwrap_err();
    assert_eq!(guest_answer.code(), Code::PermissionDenied);
    // A service takes part for anyone (the order service asks for its callers).
    let mut service = as_user("order-service", "service").await;
    assert_eq!(
        assignment(&mut service, "bola", "carol").await.0,
        AssignmentReason::Assigned
    );
    app.shutdown().await;
}
