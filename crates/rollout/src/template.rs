//! The release a Deployment runs — its whole pod template, not only its
//! images — as the controller compares, names, records and promotes it.
//!
//! A canary differs from its stable Deployment by more than its release:
//! `BACKGROUND_WORKERS=false` (no saga recovery or sweeper on a canary) and
//! the `-canary` suffix kustomize gives the ConfigMaps it mounts. [`release`]
//! takes those out, so a canary that runs what the stable runs is seen as
//! such; [`promoted`] is what the stable Deployment takes at promotion: the
//! canary's template with the workers switch left out (the stable runs its
//! workers), its ConfigMaps as the canary named them (they exist).
//!
//! The pod template's metadata (labels, annotations) is not part of a
//! release: `kubectl rollout restart` annotates it, and that is no new
//! version to analyse. A change carried only there is not promoted.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::ObjectMeta;
use serde_json::{Map, Value, json};

/// The setting that switches a replica's background workers off.
pub const WORKERS: &str = "BACKGROUND_WORKERS";

/// `deployment`'s pod template spec as JSON (null without one).
pub fn pod_spec(deployment: &Deployment) -> Value {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|pod| serde_json::to_value(pod).ok())
        .unwrap_or(Value::Null)
}

/// Calls `f` on every container and init container of a pod spec.
fn each_container(spec: &mut Value, mut f: impl FnMut(&mut Value)) {
    for list in ["containers", "initContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            containers.iter_mut().for_each(&mut f);
        }
    }
}

/// What the stable Deployment takes at promotion: `canary`'s pod spec
/// without the workers switch.
pub fn promoted(canary: &Value) -> Value {
    let mut spec = canary.clone();
    each_container(&mut spec, |container| {
        if let Some(env) = container.get_mut("env").and_then(Value::as_array_mut) {
            env.retain(|e| e.get("name").and_then(Value::as_str) != Some(WORKERS));
            // No variables left is no `env` (as the API server stores it).
            if env.is_empty()
                && let Some(fields) = container.as_object_mut()
            {
                fields.remove("env");
            }
        }
    });
    spec
}

/// The stable Deployment `name` a canary implies when the manifests leave
/// it to the controller: the canary's Deployment with `version: stable` in
/// its selector and pod labels, its [`promoted`] template and no replicas
/// (its autoscaler's to set; one until then).
pub fn stable_from(canary: &Deployment, name: &str) -> Result<Deployment, serde_json::Error> {
    let mut spec = canary.spec.clone().unwrap_or_default();
    let stable = |labels: &mut Option<std::collections::BTreeMap<String, String>>| {
        if let Some(version) = labels.as_mut().and_then(|l| l.get_mut("version")) {
            "stable".clone_into(version);
        }
    };
    stable(&mut spec.selector.match_labels);
    stable(&mut spec.template.metadata.get_or_insert_default().labels);
    let pod = promoted(&pod_spec(canary));
    spec.template.spec = Some(serde_json::from_value(pod)?);
    spec.replicas = None;
    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: canary.metadata.namespace.clone(),
            labels: canary.metadata.labels.clone(),
            annotations: Some(
                [(
                    "mercato.dev/managed-by".to_owned(),
                    "mercato-rollout: changed by promotion only".to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    })
}

/// `spec` as a release: [`promoted`], with `suffix` taken off the names of
/// the ConfigMaps and Secrets it mounts or reads, and its env sorted.
pub fn release(spec: &Value, suffix: &str) -> Value {
    let mut spec = promoted(spec);
    let strip = |name: &mut Value| {
        if let Some(text) = name.as_str()
            && !suffix.is_empty()
            && text.contains(suffix)
        {
            *name = json!(text.replacen(suffix, "", 1));
        }
    };
    if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for volume in volumes {
            if let Some(name) = volume.pointer_mut("/configMap/name") {
                strip(name);
            }
            if let Some(name) = volume.pointer_mut("/secret/secretName") {
                strip(name);
            }
        }
    }
    each_container(&mut spec, |container| {
        if let Some(sources) = container.get_mut("envFrom").and_then(Value::as_array_mut) {
            for source in sources {
                if let Some(name) = source.pointer_mut("/configMapRef/name") {
                    strip(name);
                }
            }
        }
        if let Some(env) = container.get_mut("env").and_then(Value::as_array_mut) {
            for var in env.iter_mut() {
                if let Some(name) = var.pointer_mut("/valueFrom/configMapKeyRef/name") {
                    strip(name);
                }
            }
            env.sort_by_key(Value::to_string);
        }
    });
    spec
}

/// A release's name: its images by container, and a hash of the whole
/// template (FNV-1a over its JSON: the same on every controller build), so
/// a change of env, ConfigMap or resources is a new revision too.
pub fn revision(release: &Value) -> String {
    let images: Vec<String> = release
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{}={}",
                c.get("name").and_then(Value::as_str).unwrap_or_default(),
                c.get("image").and_then(Value::as_str).unwrap_or_default()
            )
        })
        .collect();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in release.to_string().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{} #{:08x}", images.join(","), hash >> 32)
}

/// The JSON merge patch that turns `current` into `wanted`: `wanted`'s
/// fields, and null for each field (at any depth of nested objects) only
/// `current` has. Arrays are replaced whole, as merge patches do.
pub fn replace_patch(current: &Value, wanted: &Value) -> Value {
    match (current, wanted) {
        (Value::Object(now), Value::Object(want)) => {
            let mut patch = Map::new();
            for (key, value) in want {
                let value = match now.get(key) {
                    Some(old) => replace_patch(old, value),
                    None => value.clone(),
                };
                patch.insert(key.clone(), value);
            }
            for key in now.keys().filter(|k| !want.contains_key(*k)) {
                patch.insert(key.clone(), Value::Null);
            }
            Value::Object(patch)
        }
        _ => wanted.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(image: &str, config: &str, workers: Option<&str>) -> Value {
        let mut env = vec![json!({"name": "LOG_LEVEL", "value": "info"})];
        if let Some(w) = workers {
            env.push(json!({"name": WORKERS, "value": w}));
        }
        json!({
            "containers": [{"name": "service", "image": image, "env": env}],
            "volumes": [{"name": "config", "configMap": {"name": config}}],
        })
    }

    #[test]
    fn a_canary_running_the_stables_release_is_the_same_release() {
        let stable = pod("svc:1.0", "svc-config-abc", None);
        let canary = pod("svc:1.0", "svc-config-canary-abc", Some("false"));
        assert_eq!(release(&stable, "-canary"), release(&canary, "-canary"));
        let newer = pod("svc:1.1", "svc-config-canary-abc", Some("false"));
        assert_ne!(
            revision(&release(&newer, "-canary")),
            revision(&release(&canary, "-canary"))
        );
        // Another config is another release, with the same images.
        let reconfigured = pod("svc:1.0", "svc-config-canary-def", Some("false"));
        let (a, b) = (
            revision(&release(&reconfigured, "-canary")),
            revision(&release(&canary, "-canary")),
        );
        assert_ne!(a, b);
        assert!(a.starts_with("service=svc:1.0 #") && b.starts_with("service=svc:1.0 #"));
    }

    #[test]
    fn the_promoted_template_keeps_the_workers_on_and_the_canarys_config() {
        let canary = pod("svc:1.1", "svc-config-canary-def", Some("false"));
        let stable = promoted(&canary);
        assert_eq!(stable, pod("svc:1.1", "svc-config-canary-def", None));
    }

    #[test]
    fn a_replace_patch_removes_what_only_the_current_has() {
        let current = json!({"a": 1, "nested": {"keep": 1, "drop": 2}, "gone": true});
        let wanted = json!({"a": 2, "nested": {"keep": 3}});
        assert_eq!(
            replace_patch(&current, &wanted),
            json!({"a": 2, "nested": {"keep": 3, "drop": null}, "gone": null})
        );
    }
}
