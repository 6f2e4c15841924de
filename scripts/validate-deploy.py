#!/usr/bin/env python3
"""Offline validation of deploy/ (part of scripts/test.sh; no cluster needed).

1. yamllint over deploy/ and .gitlab-ci.yml (rules in .yamllint), and the
   pipeline's shape: its stages, the README test command in the test job,
   a manual production deploy.
2. `kubectl kustomize` renders each overlay (dev, staging, production), and
   each with every component it does not have, alone and all together,
   composed the one documented way (listed first in the overlay's
   `components:`, `environment` last; on a copy of deploy/ under target/). Every
   namespaced object of every render has a namespace, every image a tag.
   The environment's patch points reach every field they name, and
   deploy/check-release.sh refuses the shipped staging and production
   (placeholders) but passes them once set.
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
   monitoring and rollout components' alerts, `promtool test rules` with
   their alerts_test.yaml, which must test every alert both silent and
   firing.

Exit status 1 on any failure, with every problem printed.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import jsonschema
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
KUBERNETES_VERSION = "1.34.0"
OVERLAYS = ["dev", "staging", "production"]
COMPONENTS = ["canary", "monitoring", "vpa", "rollout", "stripe"]
# Kinds without a namespace (everything else must carry one).
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
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


def alert_tests(rules: pathlib.Path, test_file: pathlib.Path) -> list:
    """promtool test rules on a component's alerts (the rules file of a
    render) with its alerts_test.yaml, after checking that every alert is
    tested silent and firing."""
    tests = yaml.safe_load(test_file.read_text())
    alerts = {r["alert"] for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"] if "alert" in r}
    silent, firing = set(), set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    name = test_file.relative_to(ROOT)
    problems = [f"{name}: {a} is never tested silent" for a in sorted(alerts - silent)]
    problems += [f"{name}: {a} is never tested firing" for a in sorted(alerts - firing)]
    folder = rules.parent / "alert-tests" / test_file.parent.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "alerts.rules.yaml").write_text(rules.read_text())
    (folder / "alerts_test.yaml").write_text(test_file.read_text())
    tested = run(["promtool", "test", "rules", "alerts_test.yaml"], cwd=folder)
    if tested.returncode != 0:
        problems.append(f"promtool test rules {name}:\n{tested.stdout}{tested.stderr}")
    else:
        print(f"promtool: {len(alerts)} alerts of {name.parent} each tested silent and firing on its fault")
    return problems


def overlay_components(overlay: str) -> list:
    """The components an overlay lists, by name."""
    listed = yaml.safe_load((ROOT / "deploy" / "overlays" / overlay / "kustomization.yaml").read_text())
    return [pathlib.PurePath(c).name for c in listed.get("components", [])]


def compositions() -> dict:
    """Every overlay with each component it lacks, alone and all together."""
    found = {}
    for overlay in OVERLAYS:
        missing = [c for c in COMPONENTS if c not in overlay_components(overlay)]
        for component in missing:
            found[f"{overlay}+{component}"] = (overlay, [component])
        if len(missing) > 1:
            found[f"{overlay}+{'+'.join(missing)}"] = (overlay, missing)
    return found


def compose(name: str, overlay: str, components: list, environment: dict = None) -> pathlib.Path:
    """A copy of deploy/ with components added to the overlay as
    deploy/README.md says (first in its list; `environment` stays last) and,
    optionally, environment.yaml's values replaced; returns the overlay's
    folder in the copy."""
    copy = ROOT / "target" / "deploy" / "compositions" / name / "deploy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(ROOT / "deploy", copy)
    folder = copy / "overlays" / overlay
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    listed = kustomization["components"]
    listed[0:0] = [f"../../components/{c}" for c in components]
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    if environment:
        values = yaml.safe_load((folder / "environment.yaml").read_text())
        values["data"].update(environment)
        (folder / "environment.yaml").write_text(yaml.safe_dump(values))
    return folder


def placement_errors(docs: list) -> list:
    """A namespaced object without a namespace, an image without a tag."""
    problems = []
    for doc in docs:
        what = f'{doc["kind"]}/{doc["metadata"]["name"]}'
        if doc["kind"] not in CLUSTER_SCOPED and not doc["metadata"].get("namespace"):
            problems.append(f"{what}: no namespace")
        pod = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            image = container.get("image", "")
            tag = image.rpartition("/")[2].partition(":")[2]
            if "@sha256:" not in image and (not tag or tag == "latest"):
                problems.append(f"{what}: image {image!r} is not pinned to a tag")
    return problems


# Values unlike every default, for the patch-point check.
PATCHED_ENVIRONMENT = {
    "hostname": "api.shop.test",
    "trustDomain": "corp.test",
    "gatewayNamespace": "edge",
    "gatewayServiceAccount": "edge-gateway",
    "monitoringNamespace": "observability",
    "postgresConnections": "400",
}


def patch_point_errors(docs: list) -> list:
    """Each environment value reached every field it stands for, and no
    default is left there."""
    env = PATCHED_ENVIRONMENT
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    problems = []

    def want(what, got, expected):
        if got != expected:
            problems.append(f"patch points: {what} is {got!r}, wanted {expected!r}")

    want("Gateway hosts", by[("Gateway", "mercato")]["spec"]["servers"][0]["hosts"], [env["hostname"]])
    want("public VirtualService hosts", by[("VirtualService", "mercato-public")]["spec"]["hosts"], [env["hostname"]])
    gateway = f'{env["trustDomain"]}/ns/{env["gatewayNamespace"]}/sa/{env["gatewayServiceAccount"]}'
    for doc in docs:
        if doc["kind"] != "AuthorizationPolicy":
            continue
        for rule in doc["spec"].get("rules", []):
            for source in rule.get("from", []):
                for principal in source["source"].get("principals", []):
                    if not principal.startswith(env["trustDomain"] + "/"):
                        problems.append(f"patch points: {doc['metadata']['name']}: principal {principal} keeps another trust domain")
                    if "/ns/mercato/" not in principal and principal != gateway:
                        problems.append(f"patch points: {doc['metadata']['name']}: gateway principal {principal}, wanted {gateway}")
    edge = [p for d in docs if d["kind"] == "AuthorizationPolicy" for r in d["spec"].get("rules", [])
            for s in r.get("from", []) for p in s["source"].get("principals", []) if p == gateway]
    want("AuthorizationPolicies naming the gateway", len(edge), 3)
    peers = [f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
             for rule in by[("NetworkPolicy", "mercato-services")]["spec"]["ingress"]
             for f in rule["from"] if "namespaceSelector" in f]
    want("NetworkPolicy namespaces", peers, [env["gatewayNamespace"], env["monitoringNamespace"]])
    scrapers = [f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                for rule in by[("NetworkPolicy", "mercato-rollout")]["spec"]["ingress"] for f in rule["from"]]
    want("the controller's NetworkPolicy namespaces", scrapers, [env["monitoringNamespace"]])
    controller = by[("Deployment", "mercato-rollout")]["spec"]["template"]["spec"]["containers"][0]
    url = next(e["value"] for e in controller["env"] if e["name"] == "PROMETHEUS_URL")
    want("PROMETHEUS_URL", url, f'http://prometheus-operated.{env["monitoringNamespace"]}.svc:9090')
    annotations = by[("Namespace", "mercato")]["metadata"]["annotations"]
    want("connection budget", annotations["mercato.dev/postgres-connections"], env["postgresConnections"])
    return problems


def release_check_errors() -> list:
    """deploy/check-release.sh refuses the shipped staging and production
    (example.com hostname and registry) and passes them once set."""
    problems = []
    for overlay in ["staging", "production"]:
        shipped = run(["sh", "deploy/check-release.sh", f"deploy/overlays/{overlay}"])
        if shipped.returncode == 0 or "api.mercato.example.com" not in shipped.stderr \
                or "registry.example.com" not in shipped.stderr:
            problems.append(f"check-release.sh did not refuse the shipped {overlay}:\n{shipped.stdout}{shipped.stderr}")
        folder = compose(f"{overlay}-released", overlay, [], {"hostname": "api.shop.test"})
        text = (folder / "kustomization.yaml").read_text().replace("registry.example.com", "registry.shop.test")
        (folder / "kustomization.yaml").write_text(text)
        released = run(["sh", str(ROOT / "deploy" / "check-release.sh"), str(folder)])
        if released.returncode != 0:
            problems.append(f"check-release.sh refused {overlay} with every value set:\n{released.stderr}")
    if not problems:
        print("check-release.sh: refuses the shipped staging and production (placeholders), passes them once set")
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
    # The Rollout CRD is applied on its own (deploy/crds); its schema checks the Rollouts.
    crds_render = run(["kubectl", "kustomize", "deploy/crds"])
    if crds_render.returncode != 0:
        problems.append(f"deploy/crds: kubectl kustomize failed:\n{crds_render.stderr}")
    else:
        crds.update(crd_schemas(yaml.safe_load_all(crds_render.stdout)))
    composed = compositions()
    targets = [(o, ROOT / "deploy" / "overlays" / o) for o in OVERLAYS] + [
        (name, compose(name, overlay, components)) for name, (overlay, components) in composed.items()
    ]
    for overlay, folder in targets:
        rendered = run(["kubectl", "kustomize", str(folder)])
        if rendered.returncode != 0:
            problems.append(f"{overlay}: kubectl kustomize failed:\n{rendered.stderr}")
            continue
        docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
        problems.extend(f"{overlay}: {e}" for e in placement_errors(docs))
        known = crds
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

    print(f"render matrix: {len(targets)} renders ({len(composed)} compositions), each namespaced and pinned")
    caught = placement_errors([{"kind": "ConfigMap", "metadata": {"name": "x"}},
                               {"kind": "Job", "metadata": {"name": "y", "namespace": "mercato"},
                                "spec": {"template": {"spec": {"containers": [{"image": "mercato/rollout-controller"}]}}}}])
    if len(caught) != 2:
        problems.append(f"the placement check missed an unnamespaced object or an untagged image: {caught}")
    patched = compose("production+rollout-patched", "production", ["canary", "rollout"], PATCHED_ENVIRONMENT)
    rendered = run(["kubectl", "kustomize", str(patched)])
    if rendered.returncode != 0:
        problems.append(f"patch points: kubectl kustomize failed:\n{rendered.stderr}")
    else:
        found = patch_point_errors([d for d in yaml.safe_load_all(rendered.stdout) if d])
        problems.extend(found)
        if not found:
            print("patch points: hostname, trust domain, gateway identity, monitoring namespace and "
                  "connection budget each reach every field they name")
    problems.extend(release_check_errors())

    rules = ROOT / "target" / "deploy" / "rules"
    components = ROOT / "deploy" / "components"
    problems.extend(alert_tests(rules / "dev+monitoring-mercato.rules.yaml", components / "monitoring" / "alerts_test.yaml"))
    problems.extend(
        alert_tests(rules / "dev+rollout-mercato-rollout.rules.yaml", components / "rollout" / "alerts_test.yaml")
    )

    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
