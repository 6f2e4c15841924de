#!/usr/bin/env python3
"""Offline validation of deploy/ (part of scripts/test.sh; no cluster needed).

1. yamllint over deploy/ and .gitlab-ci.yml (rules in .yamllint), and the
   pipeline's shape: its stages, the README test command in the test job,
   a manual production deploy.
2. `kubectl kustomize` renders each overlay (dev, staging, production).
3. Core kinds: kubernetes-validate --strict against a pinned Kubernetes version.
4. Custom resources: the openAPIV3Schema of the served version of their
   CustomResourceDefinition — the render's own (the Rollout's) or, for
   Istio and prometheus-operator kinds, from $MERCATO_CRD_SCHEMAS
   (default: ../shared/schemas beside the repository, or beside one of its
   parent folders; point it at
   `kubectl get crd NAME -o yaml` output of your own cluster).
5. Kinds with no schema offline (the VPA) are listed; the Rust consistency
   test (crates/deploy-check) checks them structurally.
6. Every rendered PrometheusRule: `promtool check rules` on its groups; the
   monitoring component's alerts, `promtool test rules` with
   deploy/components/monitoring/alerts_test.yaml, which must test every
   alert both silent and firing.

Exit status 1 on any failure, with every problem printed.
"""

import os
import pathlib
import subprocess
import sys

import jsonschema
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
KUBERNETES_VERSION = "1.34.0"
OVERLAYS = ["dev", "staging", "production"]
# Overlays with opt-in components (deploy/components), validated the same
# way; the consistency test (crates/deploy-check) renders the same ones.
COMPOSITIONS = {
    "production+canary+rollout": ("production", ["canary", "rollout"]),
    "dev+canary+monitoring+vpa+rollout": ("dev", ["canary", "monitoring", "vpa", "rollout"]),
}
NO_OFFLINE_SCHEMA = {("autoscaling.k8s.io", "VerticalPodAutoscaler")}
# Built-in API groups with a dot (kubernetes-validate knows them; the VPA's
# autoscaling.k8s.io is a CRD).
BUILT_IN_DOTTED_GROUPS = {
    "networking.k8s.io",
    "rbac.authorization.k8s.io",
    "coordination.k8s.io",
    "apiextensions.k8s.io",
    "events.k8s.io",
}


def schema_dir() -> pathlib.Path:
    configured = os.environ.get("MERCATO_CRD_SCHEMAS")
    if configured:
        path = pathlib.Path(configured)
    else:
        # ../shared/schemas beside the checkout (or beside a folder holding it).
        # Last, the workplace's shared folder, for clones made elsewhere (CI).
        candidates = [a / "shared" / "schemas" for a in ROOT.parents] + [pathlib.Path("/work/shared/schemas")]
        path = next((c for c in candidates if c.is_dir()), ROOT.parent / "shared" / "schemas")
    if not path.is_dir():
        sys.exit(
            f"error: CRD schema folder {path} not found; set MERCATO_CRD_SCHEMAS to a folder of "
            "CustomResourceDefinition YAML files (e.g. `kubectl get crd -o yaml` output)"
        )
    return path


def crd_schemas(docs) -> dict:
    """(group, version, kind) -> openAPIV3Schema of the CRDs among docs."""
    schemas = {}
    for doc in docs:
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        for version in spec.get("versions", []):
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            if schema and version.get("served", True):
                schemas[(spec["group"], version["name"], spec["names"]["kind"])] = schema
    return schemas


def load_crd_schemas(folder: pathlib.Path) -> dict:
    """(group, version, kind) -> openAPIV3Schema of the CRDs in folder."""
    schemas = {}
    for file in sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml")):
        schemas.update(crd_schemas(yaml.safe_load_all(file.read_text())))
    return schemas


def closed(schema):
    """The schema with unknown fields refused, as `kubectl apply` with
    server-side strict field validation does: every object that lists its
    properties and does not say otherwise gets additionalProperties: false."""
    if isinstance(schema, dict):
        schema = {k: closed(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    return schema


def crd_errors(crds: dict, doc: dict) -> list:
    group, _, version = doc["apiVersion"].rpartition("/")
    schema = crds.get((group, version, doc["kind"]))
    if schema is None:
        return [f"no CRD schema for {doc['apiVersion']} {doc['kind']}"]
    # apiVersion, kind and metadata are the API server's, not the CRD schema's.
    schema = closed(schema)
    top = schema.setdefault("properties", {})
    top.update({"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}})
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(str(p) for p in e.path)}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    ]


# The article's DestinationRule mistakes; the validator must refuse both.
BROKEN_DESTINATION_RULE = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "DestinationRule",
    "metadata": {"name": "broken"},
    "spec": {
        "host": "user-service",
        "trafficPolicy": {
            "connectionPool": {"consecutiveGatewayErrors": 5},
            "loadBalancer": {"simple": "ROUND_ROBIN", "consistentHash": {"httpHeaderName": "x-user"}},
        },
    },
}


def prometheus_rules(overlay: str, docs: list) -> list:
    """promtool check rules on each PrometheusRule of a render; its rules
    files are left in target/deploy/rules/."""
    problems = []
    folder = ROOT / "target" / "deploy" / "rules"
    folder.mkdir(parents=True, exist_ok=True)
    for doc in docs:
        if doc["kind"] != "PrometheusRule":
            continue
        path = folder / f'{overlay}-{doc["metadata"]["name"]}.rules.yaml'
        path.write_text(yaml.safe_dump(doc["spec"]))
        checked = run(["promtool", "check", "rules", str(path)])
        if checked.returncode != 0:
            problems.append(f"{overlay}: promtool check rules {path.name}:\n{checked.stdout}{checked.stderr}")
    return problems


def alert_tests(rules: pathlib.Path) -> list:
    """promtool test rules on the monitoring component's alerts (the rules
    file of a render), after checking that every alert is tested silent and
    firing."""
    test_file = ROOT / "deploy" / "components" / "monitoring" / "alerts_test.yaml"
    tests = yaml.safe_load(test_file.read_text())
    alerts = {r["alert"] for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"] if "alert" in r}
    silent, firing = set(), set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    problems = [f"alerts_test.yaml: {a} is never tested silent" for a in sorted(alerts - silent)]
    problems += [f"alerts_test.yaml: {a} is never tested firing" for a in sorted(alerts - firing)]
    folder = rules.parent / "alert-tests"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "alerts.rules.yaml").write_text(rules.read_text())
    (folder / "alerts_test.yaml").write_text(test_file.read_text())
    tested = run(["promtool", "test", "rules", "alerts_test.yaml"], cwd=folder)
    if tested.returncode != 0:
        problems.append(f"promtool test rules alerts_test.yaml:\n{tested.stdout}{tested.stderr}")
    else:
        print(f"promtool: {len(alerts)} alerts each tested silent on a healthy suite and firing on its fault")
    return problems


def run(command: list, cwd=ROOT, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, text=True, capture_output=True, **kwargs)


def main() -> int:
    problems = []

    lint = run([sys.executable, "-m", "yamllint", "--strict", "-c", ".yamllint", "deploy", ".gitlab-ci.yml"])
    if lint.returncode != 0:
        problems.append("yamllint:\n" + lint.stdout + lint.stderr)
    else:
        print("yamllint: deploy/ and .gitlab-ci.yml clean")

    pipeline = yaml.safe_load((ROOT / ".gitlab-ci.yml").read_text())
    stages = ["test", "security", "build", "deploy-staging", "integration", "performance", "deploy-production"]
    if pipeline.get("stages") != stages:
        problems.append(f".gitlab-ci.yml: stages {pipeline.get('stages')} are not {stages}")
    if "scripts/test.sh" not in pipeline.get("test", {}).get("script", []):
        problems.append(".gitlab-ci.yml: the test job does not run the README's test command scripts/test.sh")
    manual = [r.get("when") for r in pipeline.get("deploy-production", {}).get("rules", [])]
    if manual != ["manual"]:
        problems.append(".gitlab-ci.yml: deploy-production is not manual")

    crds = load_crd_schemas(schema_dir())
    caught = crd_errors(crds, BROKEN_DESTINATION_RULE)
    if not any("consecutiveGatewayErrors" in e for e in caught) or not any("loadBalancer" in e for e in caught):
        problems.append(f"the CRD validator did not refuse the broken DestinationRule: {caught}")
    else:
        print(f"CRD validator self-check: the article's broken DestinationRule is refused ({len(caught)} errors)")
    for name, (overlay, components) in COMPOSITIONS.items():
        folder = ROOT / "target" / "deploy" / "compositions" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [f"../../../../deploy/overlays/{overlay}"],
                    "components": [f"../../../../deploy/components/{c}" for c in components],
                }
            )
        )
    targets = [(o, f"deploy/overlays/{o}") for o in OVERLAYS] + [
        (name, f"target/deploy/compositions/{name}") for name in COMPOSITIONS
    ]
    for overlay, folder in targets:
        rendered = run(["kubectl", "kustomize", folder])
        if rendered.returncode != 0:
            problems.append(f"{overlay}: kubectl kustomize failed:\n{rendered.stderr}")
            continue
        docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
        # The render's own CRDs (the Rollout's) validate its custom resources too.
        known = {**crds, **crd_schemas(docs)}
        out = ROOT / "target" / "deploy" / f"{overlay}.yaml"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(rendered.stdout)

        core = run(
            ["kubernetes-validate", "-k", KUBERNETES_VERSION, "--strict", "--quiet", "--no-warn", str(out)]
        )
        if core.returncode != 0:
            problems.append(f"{overlay}: kubernetes-validate {KUBERNETES_VERSION}:\n{core.stdout}{core.stderr}")

        counts = {"core": 0, "crd": 0, "structural": 0}
        for doc in docs:
            group = doc["apiVersion"].rpartition("/")[0]
            kind = doc["kind"]
            name = f'{kind}/{doc["metadata"]["name"]}'
            if "." not in group or group in BUILT_IN_DOTTED_GROUPS:
                counts["core"] += 1
                continue
            if (group, kind) in NO_OFFLINE_SCHEMA:
                counts["structural"] += 1
                continue
            problems.extend(f"{overlay}: {name}: {e}" for e in crd_errors(known, doc))
            counts["crd"] += 1
        problems.extend(prometheus_rules(overlay, docs))
        print(
            f"{overlay}: {len(docs)} objects rendered; {counts['core']} core kinds checked by "
            f"kubernetes-validate {KUBERNETES_VERSION}, {counts['crd']} custom resources by their CRD "
            f"schemas, {counts['structural']} (VPA) left to the consistency test"
        )

    problems.extend(alert_tests(ROOT / "target" / "deploy" / "rules" / "dev+canary+monitoring+vpa+rollout-mercato.rules.yaml"))

    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
