//! The pipeline and the image: what `.gitlab-ci.yml` and the Dockerfile
//! must keep (cache that hits, images built on merge requests, tools not
//! rebuilt per run, no password on a command line, load measured in the
//! cluster, both architectures), and the dev overlay's images being the
//! ones the README builds.

use std::collections::BTreeSet;

use serde_yaml::Value;

use crate::{seq, services, str_at};

/// Every script line of a job (before_script and script).
fn script_lines(job: &Value) -> Vec<&str> {
    seq(job, &["before_script"])
        .chain(seq(job, &["script"]))
        .filter_map(Value::as_str)
        .collect()
}

/// A job with the keys of the templates it `extends` (one level, as the
/// pipeline uses them) under its own.
fn with_extends(pipeline: &Value, job: &Value) -> Value {
    let templates: Vec<&str> = match job.get("extends") {
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Sequence(many)) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let mut merged = serde_yaml::Mapping::new();
    for template in templates {
        if let Some(Value::Mapping(keys)) = pipeline.get(template) {
            merged.extend(keys.clone());
        }
    }
    if let Value::Mapping(own) = job {
        merged.extend(own.clone());
    }
    Value::Mapping(merged)
}

/// Problems of `.gitlab-ci.yml` (text) and the Dockerfile (text).
pub fn check_pipeline(pipeline: &str, dockerfile: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let pipeline: Value = match serde_yaml::from_str(pipeline) {
        Ok(p) => p,
        Err(e) => return vec![format!(".gitlab-ci.yml does not parse: {e}")],
    };
    let jobs: Vec<(&str, Value)> = pipeline
        .as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str()?, with_extends(&pipeline, v))))
        .filter(|(_, v)| v.get("script").is_some())
        .collect();
    let mut builds_image = false;
    for (job, definition) in &jobs {
        let lines = script_lines(definition);
        // A job's cache replaces the default one; either may be a list.
        let cache = definition.get("cache").or(pipeline.get("cache"));
        let cached: BTreeSet<&str> = match cache {
            Some(Value::Sequence(caches)) => {
                caches.iter().flat_map(|c| seq(c, &["paths"])).collect()
            }
            Some(cache) => seq(cache, &["paths"]).collect(),
            None => Vec::new(),
        }
        .into_iter()
        .filter_map(Value::as_str)
        .collect();
        for line in &lines {
            if line.contains("docker login") && !line.contains("--password-stdin") {
                problems.push(format!(
                    "{job}: `docker login` without --password-stdin puts the password on the command line"
                ));
            }
            if line.contains("cargo install") && !cached.iter().any(|p| p.ends_with(".cargo/bin")) {
                problems.push(format!(
                    "{job}: `cargo install` with no cached .cargo/bin rebuilds the tool on every run"
                ));
            }
            if *job == "performance" && line.contains("port-forward") {
                problems.push(format!(
                    "{job}: measures through `kubectl port-forward` (the API server's tunnel), not the service"
                ));
            }
        }
        let build_lines: Vec<&&str> = lines
            .iter()
            .filter(|l| l.contains("docker build") || l.contains("docker buildx build"))
            .collect();
        if build_lines.is_empty() {
            continue;
        }
        builds_image = true;
        let all = build_lines
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        if !all.contains("buildx") {
            problems.push(format!(
                "{job}: builds with `docker build`; buildx is needed for the registry cache and both platforms"
            ));
        }
        if !(all.contains("--cache-to")
            && all.contains("type=registry")
            && all.contains("mode=max"))
        {
            problems.push(format!(
                "{job}: no registry cache with mode=max (the dependency layers of a multi-stage build are never cached)"
            ));
        }
        if !all.contains("--cache-from") {
            problems.push(format!("{job}: no --cache-from"));
        }
        for platform in ["linux/amd64", "linux/arm64"] {
            if !all.contains(platform) {
                problems.push(format!("{job}: does not build for {platform}"));
            }
        }
        let on_merge_requests = seq(definition, &["rules"])
            .filter_map(|r| str_at(r, &["if"]))
            .any(|condition| condition.contains("merge_request_event"));
        if !on_merge_requests {
            problems.push(format!("{job}: merge requests never build the Dockerfile"));
        }
    }
    if !builds_image {
        problems.push(".gitlab-ci.yml: no job builds the image".into());
    }
    // The image builds for its target platform (buildx sets TARGETARCH).
    let code: String = dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    if code.contains("x86_64") && !code.contains("aarch64") {
        problems.push("Dockerfile: builds for x86_64 only".into());
    }
    problems
}

/// The dev overlay runs the images the README's `docker build -t` makes.
pub fn check_dev_images(docs: &[Value], readme: &str) -> Vec<String> {
    let mut built = BTreeSet::new();
    for line in readme.lines().filter(|l| l.contains("docker build")) {
        let mut words = line.split_whitespace();
        while let Some(word) = words.next() {
            if word == "-t"
                && let Some(tag) = words.next()
            {
                let tag = tag.trim_matches(|c| c == '`' || c == '"' || c == '\'');
                for service in ["user", "order", "payment"] {
                    built.insert(tag.replace("<service>", service));
                }
            }
        }
    }
    let mut problems = Vec::new();
    if built.is_empty() {
        problems.push("README: no `docker build -t …` line".into());
    }
    for deployment in services(docs) {
        for container in seq(deployment, &["spec", "template", "spec", "containers"]) {
            let image = str_at(container, &["image"]).unwrap_or_default();
            if !built.contains(image) {
                problems.push(format!(
                    "{}: runs {image}, which the README's docker build ({}) does not make",
                    crate::name(deployment),
                    built.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    problems
}
