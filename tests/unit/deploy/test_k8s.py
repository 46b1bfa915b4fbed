"""infra/k8s agrees with the repository: every manifest parses and is listed in the
kustomization; images are pinned or built here; commands are real `slimspect` commands;
SLIMSPECT_* names and values are what the settings classes accept; ports, probes, Services,
Secrets and volumes fit together; Secrets are templates only."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from deploy_checks import (
    K8S_DIR,
    EnvChecker,
    check_invocation,
    command_path,
    image_errors,
    process_settings,
    slimspect_invocations,
)

WORKLOADS = ("Deployment", "StatefulSet")


def load_manifests(directory: Path = K8S_DIR) -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
        for path in sorted(directory.glob("*.yaml"))
    }


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict[str, Any]]]:
    return load_manifests()


@pytest.fixture(scope="module")
def checker() -> EnvChecker:
    return EnvChecker()


def pod_specs(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every pod template a resource carries."""
    kind, name, spec = doc["kind"], doc["metadata"]["name"], doc.get("spec") or {}
    out = []
    if kind in WORKLOADS:
        out.append((f"{kind}/{name}", spec["template"]["spec"]))
    elif kind == "RayCluster" or (kind == "RayJob" and "rayClusterSpec" in spec):
        cluster = spec if kind == "RayCluster" else spec["rayClusterSpec"]
        out.append((f"{kind}/{name} head", cluster["headGroupSpec"]["template"]["spec"]))
        for group in cluster.get("workerGroupSpecs") or []:
            out.append((f"{kind}/{name} {group['groupName']}", group["template"]["spec"]))
    if kind == "RayJob" and "submitterPodTemplate" in spec:
        out.append((f"{kind}/{name} submitter", spec["submitterPodTemplate"]["spec"]))
    return out


def _port_number(port: Any, container: dict[str, Any]) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p["containerPort"]
    return None


def k8s_errors(manifests: dict[str, list[dict[str, Any]]], checker: EnvChecker) -> list[str]:
    errors: list[str] = []
    kustomization = (manifests.get("kustomization.yaml") or [{}])[0]
    listed = [r.split("#")[0].strip() for r in kustomization.get("resources") or []]
    for resource in listed:
        if resource not in manifests:
            errors.append(f"kustomization: resource {resource} does not exist")
    for name in manifests:
        if name != "kustomization.yaml" and name not in listed:
            errors.append(f"{name}: not listed in kustomization.yaml")

    docs = [d for n, ds in manifests.items() if n != "kustomization.yaml" for d in ds]
    for doc in docs:
        if not (doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name")):
            errors.append(f"a document without apiVersion, kind or metadata.name: {doc}")
    secrets = {
        d["metadata"]["name"]: {**(d.get("stringData") or {}), **(d.get("data") or {})}
        for d in docs
        if d.get("kind") == "Secret"
    }
    services = [d for d in docs if d.get("kind") == "Service"]
    clusters = {d["metadata"]["name"] for d in docs if d.get("kind") == "RayCluster"}
    ray_version = importlib.metadata.version("ray")

    # Secrets: templates only
    for secret, values in secrets.items():
        for key, value in values.items():
            if key == "tokens.json":  # the file token store: no token registered in a template
                if json.loads(value).get("tokens"):
                    errors.append(f"Secret/{secret}: {key} registers real tokens")
            elif "change-me" not in str(value) and any(
                w in key.upper() for w in ("KEY", "PASSWORD", "TOKEN", "SECRET")
            ):
                errors.append(f"Secret/{secret}: {key} holds a value, not a placeholder")
        errors += checker.errors(values, f"Secret/{secret}")

    listening_by_labels: list[tuple[dict[str, str], dict[str, Any]]] = []
    for doc in docs:
        kind = doc.get("kind")
        if kind == "RayCluster" and doc["spec"].get("rayVersion") != ray_version:
            errors.append(
                f"RayCluster/{doc['metadata']['name']}: rayVersion "
                f"{doc['spec'].get('rayVersion')} != installed Ray {ray_version}"
            )
        if kind == "RayJob":
            where = f"RayJob/{doc['metadata']['name']}"
            selector = (doc["spec"].get("clusterSelector") or {}).get("ray.io/cluster")
            if selector is not None and selector not in clusters:
                errors.append(f"{where}: clusterSelector names no RayCluster ({selector})")
            invocations = slimspect_invocations(shlex.split(doc["spec"].get("entrypoint", "")))
            if not invocations:
                errors.append(f"{where}: the entrypoint runs no slimspect command")
            for argv in invocations:
                errors += check_invocation(argv, where)
        for where, pod in pod_specs(doc):
            volumes = {v["name"]: v for v in pod.get("volumes") or []}
            claim_templates = {
                t["metadata"]["name"] for t in (doc["spec"].get("volumeClaimTemplates") or [])
            }
            for vol in volumes.values():
                secret = (vol.get("secret") or {}).get("secretName")
                if secret is None:
                    continue
                if secret not in secrets:
                    errors.append(f"{where}: volume {vol['name']}: no Secret {secret}")
                for item in vol["secret"].get("items") or []:
                    if item["key"] not in secrets.get(secret, {}):
                        errors.append(f"{where}: Secret {secret} has no key {item['key']}")
            for container in pod.get("containers") or []:
                cwhere = f"{where} {container['name']}"
                errors += image_errors(container.get("image", ""), cwhere)
                for mount in container.get("volumeMounts") or []:
                    if mount["name"] not in volumes and mount["name"] not in claim_templates:
                        errors.append(f"{cwhere}: volumeMount {mount['name']} is not a volume")
                env: dict[str, str] = {}
                for source in container.get("envFrom") or []:
                    ref = (source.get("secretRef") or {}).get("name")
                    if ref is not None and ref not in secrets:
                        errors.append(f"{cwhere}: envFrom Secret {ref} does not exist")
                    env.update({k: str(v) for k, v in secrets.get(ref, {}).items()})
                for var in container.get("env") or []:
                    ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                    if ref is not None:
                        if ref["key"] not in secrets.get(ref["name"], {}):
                            errors.append(
                                f"{cwhere}: {var['name']}: no Secret key {ref['name']}/{ref['key']}"
                            )
                        env[var["name"]] = str(secrets.get(ref["name"], {}).get(ref["key"], ""))
                    else:
                        env[var["name"]] = str(var.get("value", ""))
                errors += checker.errors([v["name"] for v in container.get("env") or []], cwhere)
                argv_all = slimspect_invocations(
                    [*(container.get("command") or []), *(container.get("args") or [])]
                )
                for argv in argv_all:
                    errors += check_invocation(argv, cwhere)
                ports = [p["containerPort"] for p in container.get("ports") or []]
                if kind in WORKLOADS:
                    for probe in ("readinessProbe", "livenessProbe"):
                        spec = container.get(probe)
                        if not spec:
                            errors.append(f"{cwhere}: no {probe}")
                            continue
                        for action in ("grpc", "httpGet", "tcpSocket"):
                            if action in spec:
                                number = _port_number(spec[action]["port"], container)
                                if number not in ports:
                                    errors.append(
                                        f"{cwhere}: {probe} port "
                                        f"{spec[action]['port']} is not a container port"
                                    )
                if len(argv_all) == 1:
                    path = command_path(argv_all[0])
                    try:
                        settings, listening = process_settings(path, argv_all[0], env, {})
                    except Exception as exc:  # noqa: BLE001 - the failure is the finding
                        errors.append(
                            f"{cwhere}: 'slimspect {' '.join(path)}' rejects its settings: {exc}"
                        )
                        continue
                    if settings:
                        for port in ports:
                            if port not in listening:
                                errors.append(
                                    f"{cwhere}: containerPort {port}, but the process "
                                    f"listens on {listening}"
                                )
                        for key in ("aggregator", "api", "rollout"):
                            url = getattr(settings.get(key), "redis_url", None)
                            host = urlsplit(url).hostname if url else None
                            if host and not any(
                                s["metadata"]["name"] in host.split(".") for s in services
                            ):
                                errors.append(f"{cwhere}: {key} Redis {host}: no such Service")
                if kind in WORKLOADS:
                    labels = doc["spec"]["template"]["metadata"].get("labels") or {}
                    listening_by_labels.append((labels, container))

    # Services select a workload and target one of its ports
    for svc in services:
        where = f"Service/{svc['metadata']['name']}"
        selector = svc["spec"].get("selector") or {}
        targets = [
            c
            for labels, c in listening_by_labels
            if selector and all(labels.get(k) == v for k, v in selector.items())
        ]
        if not targets:
            errors.append(f"{where}: its selector {selector} matches no workload")
            continue
        for port in svc["spec"].get("ports") or []:
            target = port.get("targetPort", port["port"])
            if not any(
                _port_number(target, c) in [p["containerPort"] for p in c.get("ports") or []]
                for c in targets
            ):
                errors.append(f"{where}: targetPort {target} is no port of the selected pods")
    return errors


# ---------------------------------------------------------------------------------------------


def test_every_manifest_parses(manifests: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {d["kind"] for ds in manifests.values() for d in ds}
    assert {
        "RayCluster",
        "RayJob",
        "Deployment",
        "Service",
        "StatefulSet",
        "Secret",
        "Kustomization",
    } <= kinds


def test_manifests_agree_with_the_code(
    manifests: dict[str, list[dict[str, Any]]], checker: EnvChecker
) -> None:
    assert k8s_errors(manifests, checker) == []


def test_redis_keeps_an_append_only_file(manifests: dict[str, list[dict[str, Any]]]) -> None:
    redis = next(d for d in manifests["redis.yaml"] if d["kind"] == "StatefulSet")
    command = " ".join(redis["spec"]["template"]["spec"]["containers"][0]["command"])
    assert "--appendonly yes" in command
    assert redis["spec"]["volumeClaimTemplates"]
    assert "external redis" in (K8S_DIR / "redis.yaml").read_text().lower()


def test_rollout_lives_in_the_api(manifests: dict[str, list[dict[str, Any]]]) -> None:
    api = next(d for d in manifests["api.yaml"] if d["kind"] == "Deployment")
    env = {
        e["name"]: e.get("value") for e in api["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["SLIMSPECT_API_FLEET"] == "true" and "SLIMSPECT_ROLLOUT_PORT" in env
    assert "the rollout service has no process of its own" in (
        " ".join((K8S_DIR / "api.yaml").read_text().lower().split())
    )


# --- the checker catches what is wrong ------------------------------------------------------


def _doc(m: dict[str, list[dict[str, Any]]], file: str, kind: str) -> dict[str, Any]:
    return next(d for d in m[file] if d["kind"] == kind)


def _container(m: dict[str, list[dict[str, Any]]], file: str) -> dict[str, Any]:
    return _doc(m, file, "Deployment")["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda m: _container(m, "api.yaml")["env"].append(
                {"name": "SLIMSPECT_API_PROT", "value": "1"}
            ),
            "SLIMSPECT_API_PROT: not a field",
        ),
        (
            lambda m: _doc(m, "secrets.yaml", "Secret")["stringData"].update(
                SLIMSPECT_AGGREGATOR_REDIS_URI="x"
            ),
            "not a field",
        ),
        (
            lambda m: _container(m, "aggregator.yaml").update(image="slimspect-services:latest"),
            "is not pinned",
        ),
        (
            lambda m: _container(m, "aggregator.yaml").update(image="slimspect-gateway:1"),
            "has no Dockerfile",
        ),
        (
            lambda m: _container(m, "aggregator.yaml").update(
                command=["slimspect", "aggregator", "run"]
            ),
            "'slimspect aggregator run' is not",
        ),
        (
            lambda m: _container(m, "api.yaml")["ports"].append({"name": "x", "containerPort": 81}),
            "containerPort 81",
        ),
        (
            lambda m: _container(m, "api.yaml")["env"].append(
                {"name": "SLIMSPECT_API_PORT", "value": "9090"}
            ),
            "containerPort 8080",
        ),
        (
            lambda m: _container(m, "api.yaml")["volumeMounts"].append(
                {"name": "ghost", "mountPath": "/g"}
            ),
            "volumeMount ghost",
        ),
        (
            lambda m: _container(m, "api.yaml")["envFrom"].append({"secretRef": {"name": "nope"}}),
            "envFrom Secret nope",
        ),
        (lambda m: _container(m, "api.yaml").pop("livenessProbe"), "no livenessProbe"),
        (
            lambda m: _doc(m, "api.yaml", "Service")["spec"]["ports"][0].update(targetPort="web"),
            "targetPort web",
        ),
        (
            lambda m: _doc(m, "rayjob.yaml", "RayJob")["spec"].update(
                entrypoint="slimspect pipeline start x.yaml"
            ),
            "'slimspect pipeline start' is not",
        ),
        (
            lambda m: _doc(m, "rayjob.yaml", "RayJob")["spec"].update(
                clusterSelector={"ray.io/cluster": "other"}
            ),
            "names no RayCluster",
        ),
        (
            lambda m: _doc(m, "raycluster.yaml", "RayCluster")["spec"].update(rayVersion="2.9.0"),
            "rayVersion 2.9.0",
        ),
        (
            lambda m: m["kustomization.yaml"][0]["resources"].remove("api.yaml"),
            "api.yaml: not listed",
        ),
        (
            lambda m: _doc(m, "secrets.yaml", "Secret")["stringData"].update(
                REDIS_PASSWORD="hunter2"
            ),
            "holds a value",
        ),
        (
            lambda m: next(
                d for d in m["secrets.yaml"] if d["metadata"]["name"] == "slimspect-station-tokens"
            )["stringData"].update({"tokens.json": '{"tokens": {"ab": {"station": "s"}}}'}),
            "registers real tokens",
        ),
    ],
)
def test_checker_catches(
    manifests: dict[str, list[dict[str, Any]]], checker: EnvChecker, edit, expected: str
) -> None:
    broken = copy.deepcopy(manifests)
    edit(broken)
    errors = k8s_errors(broken, checker)
    assert any(expected in e for e in errors), errors
