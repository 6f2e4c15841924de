//! A canary is its stable Deployment with another version: the two pod
//! templates differ only in what a release changes (the image) and in the
//! canary's identity (the `version` label, the `-canary` suffix of the
//! names kustomize gives it, and `BACKGROUND_WORKERS=false`). An
//! environment patch that reaches the stable Deployment by name and misses
//! the canary (the payment provider, the deployment environment, the
//! topology spread) shows up here, and so does a canary that would run the
//! saga recovery or the payment sweeper against production data.

use serde_yaml::Value;

use mercato_rollout::template::{self, WORKERS};

use crate::{Facts, at, find, kind, name, seq, str_at};

pub(crate) fn check(docs: &[Value], facts: &Facts, problems: &mut Vec<String>) {
    for canary in docs.iter().filter(|d| kind(d) == "Deployment") {
        let Some(stable_name) = name(canary).strip_suffix("-canary") else {
            continue;
        };
        let Some(stable) = find(docs, "Deployment", stable_name) else {
            continue;
        };
        let app = str_at(
            stable,
            &[
                "spec",
                "template",
                "metadata",
                "labels",
                "app.kubernetes.io/name",
            ],
        )
        .unwrap_or(stable_name);
        let has_workers = facts.settings.get(app).is_some_and(|s| s.contains(WORKERS));
        let workers = seq(canary, &["spec", "template", "spec", "containers"])
            .flat_map(|c| seq(c, &["env"]))
            .find(|e| str_at(e, &["name"]) == Some(WORKERS))
            .and_then(|e| str_at(e, &["value"]));
        if has_workers && workers != Some("false") {
            problems.push(format!(
                "{}: runs background workers ({WORKERS} is {workers:?}): the release under analysis would recover sagas or sweep payments it never served",
                name(canary)
            ));
        }
        let (Some(ours), Some(theirs)) = (comparable(canary), comparable(stable)) else {
            continue;
        };
        if ours != theirs {
            let differing = first_difference(&ours, &theirs);
            problems.push(format!(
                "{}: its pod template differs from {stable_name}'s beyond the image and version ({differing}): a patch reached one and not the other",
                name(canary)
            ));
        }
    }
}

/// The pod template as text: its spec as the rollout controller compares
/// releases (`mercato_rollout::template::release`: no workers switch, no
/// `-canary` in the names of what it mounts, env sorted) without the
/// images, and its labels without `version`.
fn comparable(deployment: &Value) -> Option<String> {
    let spec: serde_json::Value =
        serde_json::to_value(at(deployment, &["spec", "template", "spec"])?).ok()?;
    let mut release = template::release(&spec, "-canary");
    for list in ["containers", "initContainers"] {
        if let Some(containers) = release
            .get_mut(list)
            .and_then(serde_json::Value::as_array_mut)
        {
            for container in containers
                .iter_mut()
                .filter_map(serde_json::Value::as_object_mut)
            {
                container.remove("image");
            }
        }
    }
    let mut labels = at(deployment, &["spec", "template", "metadata", "labels"])
        .cloned()
        .unwrap_or_default();
    if let Some(labels) = labels.as_mapping_mut() {
        labels.remove("version");
    }
    Some(format!(
        "{}\n{}",
        serde_yaml::to_string(&labels).ok()?,
        serde_yaml::to_string(&release).ok()?
    ))
}

fn first_difference(ours: &str, theirs: &str) -> String {
    ours.lines()
        .zip(theirs.lines())
        .find(|(a, b)| a != b)
        .map_or_else(
            || "one is longer".to_owned(),
            |(a, b)| format!("canary `{}`, stable `{}`", a.trim(), b.trim()),
        )
}
