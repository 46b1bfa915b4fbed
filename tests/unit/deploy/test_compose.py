"""docker-compose.yml agrees with the repository: images, Dockerfiles, commands, env files,
variable names and values, ports, volumes, healthchecks and dependencies."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from deploy_checks import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    REPO,
    EnvChecker,
    check_invocation,
    command_path,
    dockerfile_for_image,
    host_port,
    image_errors,
    process_settings,
    read_env_file,
    slimspect_invocations,
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def checker() -> EnvChecker:
    return EnvChecker()


def _env_files(service: dict[str, Any]) -> list[str]:
    files = service.get("env_file") or []
    files = [files] if isinstance(files, str | dict) else files
    return [f["path"] if isinstance(f, dict) else f for f in files]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def service_env(service: dict[str, Any], errors: list[str], name: str) -> dict[str, str]:
    """env files (their committed .example templates), then ``environment`` (which wins)."""
    env: dict[str, str] = {}
    for file in _env_files(service):
        example = REPO / f"{file}.example"
        if not example.is_file():
            errors.append(f"{name}: env_file {file}: no committed template {file}.example")
            continue
        if Path(file).parent.resolve() != COMPOSE_DIR.resolve() and not file.startswith(
            "infra/compose/"
        ):
            errors.append(f"{name}: env_file {file} is not under infra/compose/")
        env.update(read_env_file(example))
    env.update(_environment(service))
    return env


def _mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, source, target) of each volume entry."""
    out = []
    for item in service.get("volumes") or []:
        if isinstance(item, dict):
            out.append((item.get("type", "volume"), item.get("source", ""), item["target"]))
            continue
        source, _, rest = str(item).partition(":")
        target = rest.split(":")[0] if rest else source
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        out.append((kind, source, target))
    return out


def _container_ports(service: dict[str, Any]) -> list[int]:
    ports = []
    for item in service.get("ports") or []:
        if isinstance(item, dict):
            ports.append(int(item["target"]))
        else:
            ports.append(int(str(item).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def _commands(service: dict[str, Any]) -> list[list[str]]:
    found = []
    for key in ("entrypoint", "command"):
        found += slimspect_invocations(service.get(key))
    hc = (service.get("healthcheck") or {}).get("test")
    if isinstance(hc, list) and hc and hc[0] in ("CMD", "CMD-SHELL"):
        found += slimspect_invocations(hc[1:] if hc[0] == "CMD" else hc[1])
    return found


def _long_running(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")) != "no"


def compose_errors(compose: dict[str, Any], checker: EnvChecker) -> list[str]:
    """Everything wrong with a parsed docker-compose.yml (empty: nothing)."""
    errors: list[str] = []
    services: dict[str, dict[str, Any]] = compose.get("services") or {}
    if not services:
        return ["no services"]
    declared = set((compose.get("volumes") or {}).keys())
    used: set[str] = set()
    processes: dict[str, tuple[tuple[str, ...], dict[str, Any], list[int]]] = {}

    for name, svc in services.items():
        # images: pinned, or built from a Dockerfile of this repository
        build = svc.get("build")
        if build is not None:
            build = {"context": build} if isinstance(build, str) else build
            dockerfile = REPO / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                errors.append(f"{name}: build dockerfile {dockerfile} does not exist")
            if svc.get("image"):
                errors += image_errors(svc["image"], name)
                expected = dockerfile_for_image(svc["image"])
                if expected is not None and expected.resolve() != dockerfile.resolve():
                    errors.append(f"{name}: image {svc['image']} is not built from {expected}")
        elif svc.get("image"):
            errors += image_errors(svc["image"], name)
        else:
            errors.append(f"{name}: neither image nor build")

        env = service_env(svc, errors, name)
        errors += checker.errors(env, name)

        # volumes: named ones declared, bind mounts exist in the repository
        files: dict[str, Path] = {}
        for kind, source, target in _mounts(svc):
            if kind == "volume":
                used.add(source)
                if source not in declared:
                    errors.append(f"{name}: volume {source!r} is not declared under volumes:")
            elif kind == "bind":
                local = (REPO / source).resolve()
                if not local.exists():
                    errors.append(f"{name}: bind mount source {source} does not exist")
                files[target] = local

        # dependencies
        deps = svc.get("depends_on") or {}
        deps = {d: {} for d in deps} if isinstance(deps, list) else deps
        for dep, spec in deps.items():
            if dep not in services:
                errors.append(f"{name}: depends_on {dep!r}, which is not a service")
                continue
            condition = (spec or {}).get("condition", "service_started")
            if condition == "service_healthy" and not services[dep].get("healthcheck"):
                errors.append(f"{name}: waits for {dep} to be healthy, which has no healthcheck")
            if condition == "service_completed_successfully" and _long_running(services[dep]):
                errors.append(f"{name}: waits for {dep} to complete, but {dep} restarts")

        # long-running services have a healthcheck
        test = (svc.get("healthcheck") or {}).get("test")
        if _long_running(svc) and not test:
            errors.append(f"{name}: long-running service without a healthcheck")

        # slimspect command lines: real commands; the process's settings from its env
        for argv in _commands(svc):
            errors += check_invocation(argv, name)
        main = slimspect_invocations(svc.get("command"))
        if main and len(main) == 1:
            path = command_path(main[0])
            try:
                settings, listening = process_settings(path, main[0], env, files)
            except Exception as exc:  # noqa: BLE001 - any failure to configure is the finding
                errors.append(f"{name}: 'slimspect {' '.join(path)}' rejects its settings: {exc}")
                continue
            if settings:
                processes[name] = (path, settings, listening)
                for port in _container_ports(svc):
                    if port not in listening:
                        errors.append(
                            f"{name}: publishes container port {port}, but the process listens"
                            f" on {listening}"
                        )
                text = test if isinstance(test, str) else " ".join(test or [])
                for port in re.findall(r"(?:127\.0\.0\.1|localhost):(\d+)", text):
                    if int(port) not in listening:
                        errors.append(f"{name}: healthcheck probes port {port}, not in {listening}")

    for volume in declared - used:
        errors.append(f"volume {volume!r} is declared but no service mounts it")
    errors += _wiring_errors(services, processes)
    return errors


def _listening(processes: dict[str, Any], host: str, role: str) -> int | None:
    """The port the ``role`` settings of service ``host`` listen on."""
    if host not in processes:
        return None
    settings = processes[host][1]
    if role == "ingest" and "aggregator" in settings:
        return settings["aggregator"].port
    if role == "fleet" and "rollout" in settings and settings["api"].fleet:
        return settings["rollout"].port
    return None


def _wiring_errors(services: dict[str, Any], processes: dict[str, Any]) -> list[str]:
    """Endpoints in one service's settings point at a service that listens there."""
    errors: list[str] = []

    def minio_port(host: str) -> int | None:
        svc = services.get(host) or {}
        command = svc.get("command") or []
        if "minio" not in str(svc.get("image", "")) or "server" not in command:
            return None
        address = command[command.index("--address") + 1] if "--address" in command else ":9000"
        return int(address.rsplit(":", 1)[1])

    def redis_port(host: str) -> int | None:
        svc = services.get(host) or {}
        if not str(svc.get("image", "")).startswith("redis:"):
            return None
        found = re.search(r"--port\s+(\d+)", str(svc.get("command", "")))
        return int(found.group(1)) if found else 6379

    def expect(where: str, what: str, endpoint: str, port: int | None) -> None:
        host, p = host_port(endpoint)
        if port is None:
            errors.append(f"{where}: {what} {endpoint}: no service {host!r} serves that")
        elif p != port:
            errors.append(f"{where}: {what} {endpoint}: {host} listens on {port}")

    for name, (_, settings, _) in processes.items():
        agent = settings.get("agent")
        if agent is not None:
            host = host_port(agent.uplink.endpoint)[0]
            expect(name, "uplink", agent.uplink.endpoint, _listening(processes, host, "ingest"))
            if agent.fleet is not None:
                host = host_port(agent.fleet.endpoint)[0]
                expect(name, "fleet", agent.fleet.endpoint, _listening(processes, host, "fleet"))
        stores = [agent.store] if agent is not None else []
        stores += [settings["store"]] if "store" in settings else []
        for store in stores:
            expect(name, "store", store.endpoint, minio_port(host_port(store.endpoint)[0]))
        for key in ("aggregator", "api", "rollout"):
            url = getattr(settings.get(key), "redis_url", None)
            if url:
                parts = urlsplit(url)
                expect(
                    name,
                    f"{key} redis",
                    f"{parts.hostname}:{parts.port or 6379}",
                    redis_port(parts.hostname or ""),
                )

    # the pipeline's Ray address: ray://<head>:<client server port>
    for name, svc in services.items():
        for argv in slimspect_invocations(svc.get("command")):
            if "--address" not in argv:
                continue
            address = argv[argv.index("--address") + 1]
            parts = urlsplit(address)
            head = services.get(parts.hostname or "")
            if head is None:
                errors.append(f"{name}: Ray address {address}: no service {parts.hostname!r}")
                continue
            command = " ".join(map(str, head.get("command") or []))
            found = re.search(r"--ray-client-server-port[= ](\d+)", command)
            client_port = int(found.group(1)) if found else 10001
            if "--head" not in command or parts.port != client_port:
                errors.append(
                    f"{name}: Ray address {address}: the head's client port is {client_port}"
                )
    return errors


# ---------------------------------------------------------------------------------------------


def test_compose_parses_and_has_the_whole_system(compose: dict[str, Any]) -> None:
    services = compose["services"]
    commands = {
        name: " ".join(map(str, svc.get("command") or [])) for name, svc in services.items()
    }
    assert any(s["image"].startswith("redis:") for s in services.values() if "image" in s)
    assert "appendonly yes" in commands["redis"]
    assert any("slimspect aggregator serve" in c for c in commands.values())
    assert any("slimspect api serve" in c for c in commands.values())
    assert sum("slimspect agent" in c for c in commands.values()) >= 2
    assert any("slimspect pipeline run" in c for c in commands.values())
    assert any("ray start --head" in c for c in commands.values())
    assert any("ray start --address" in c for c in commands.values())


def test_compose_agrees_with_the_code(compose: dict[str, Any], checker: EnvChecker) -> None:
    assert compose_errors(compose, checker) == []


def test_minio_images_pinned_to_a_release_with_the_reason(compose: dict[str, Any]) -> None:
    minio = [s["image"] for s in compose["services"].values() if "minio/" in s.get("image", "")]
    assert len(minio) >= 2  # the server and the bucket-creating mc
    for image in minio:
        assert re.search(r":RELEASE\.\d{4}-\d{2}-\d{2}T", image), image
    text = COMPOSE_FILE.read_text()
    assert "2025" in text and "source" in text  # the comment that says why this tag


def test_stations_use_synthetic_cameras(compose: dict[str, Any], checker: EnvChecker) -> None:
    errors: list[str] = []
    n = 0
    for name, svc in compose["services"].items():
        for argv in slimspect_invocations(svc.get("command")):
            if command_path(argv) != ("agent",):
                continue
            files = {t: (REPO / s).resolve() for k, s, t in _mounts(svc) if k == "bind"}
            settings, _ = process_settings(("agent",), argv, service_env(svc, errors, name), files)
            agent = settings["agent"]
            assert {c.type for c in agent.cameras} == {"synthetic"}
            n += 1
    assert n >= 2 and not errors
    stations = [
        process_settings(
            ("agent",),
            a,
            service_env(s, errors, k),
            {t: (REPO / src).resolve() for kind, src, t in _mounts(s) if kind == "bind"},
        )[0]["agent"].station
        for k, s in compose["services"].items()
        for a in slimspect_invocations(s.get("command"))
        if command_path(a) == ("agent",)
    ]
    assert len(set(stations)) == len(stations), stations


def test_every_env_example_is_used_and_checked(
    compose: dict[str, Any], checker: EnvChecker
) -> None:
    used = {f for svc in compose["services"].values() for f in _env_files(svc)}
    for example in sorted(COMPOSE_DIR.glob("*.env.example")):
        rel = str(example.relative_to(REPO)).removesuffix(".example")
        assert rel in used, f"{example.name} is not used by any service"
        assert checker.errors(read_env_file(example), example.name) == []


# --- the checker catches what is wrong ------------------------------------------------------


def _broken(compose: dict[str, Any], edit) -> dict[str, Any]:
    copy_ = copy.deepcopy(compose)
    edit(copy_["services"], copy_)
    return copy_


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda s, c: s["aggregator"]["environment"].update(SLIMSPECT_AGGREGATOR_PROT="1"),
            "SLIMSPECT_AGGREGATOR_PROT: not a field",
        ),
        (
            lambda s, c: s["api"]["environment"].update(SLIMSPECT_APP_PORT="1"),
            "no settings class has a matching env_prefix",
        ),
        (
            lambda s, c: s["aggregator"]["environment"].update(SLIMSPECT_AGGREGATOR_PORT="50060"),
            "publishes container port 50051",
        ),
        (
            lambda s, c: s["api"]["environment"].update(SLIMSPECT_ROLLOUT_PORT="50099"),
            "fleet api:50052: api listens on 50099",
        ),
        (
            lambda s, c: s["api"]["environment"].update(SLIMSPECT_API_MAX_LIMIT="not-a-number"),
            "rejects its settings",
        ),
        (lambda s, c: s["redis"].update(image="redis:latest"), "is not pinned"),
        (lambda s, c: s["minio"].update(image="quay.io/minio/minio"), "has no tag"),
        (
            lambda s, c: s["aggregator"]["build"].update(dockerfile="infra/docker/nope.Dockerfile"),
            "does not exist",
        ),
        (
            lambda s, c: s["aggregator"].update(command=["slimspect", "aggregater", "serve"]),
            "is not a command of slimspect.cli",
        ),
        (
            lambda s, c: s["aggregator"].update(command=["slimspect", "aggregator", "srve"]),
            "'slimspect aggregator srve' is not a command",
        ),
        (lambda s, c: s["pipeline"]["command"].__setitem__(4, "--adress"), "No such option"),
        (
            lambda s, c: s["pipeline"]["command"].__setitem__(5, "ray://ray-head:10002"),
            "the head's client port is 10001",
        ),
        (lambda s, c: s["station-1"]["volumes"].append("nowhere:/x"), "'nowhere' is not declared"),
        (lambda s, c: c["volumes"].update({"orphan": None}), "'orphan' is declared but"),
        (lambda s, c: s["api"].update(depends_on=["redis", "postgres"]), "'postgres', which is"),
        (lambda s, c: s["aggregator"].pop("healthcheck"), "without a healthcheck"),
        (
            lambda s, c: s["api"].update(env_file=["infra/compose/nope.env"]),
            "no committed template",
        ),
        (
            lambda s, c: s["station-2"]["environment"].update(
                SLIMSPECT_AGENT_UPLINK__ENDPOINT="aggregator:6000"
            ),
            "uplink aggregator:6000: aggregator listens on 50051",
        ),
        (
            lambda s, c: s["station-2"]["environment"].update(
                SLIMSPECT_AGENT_CAMERAS='[{"id": "a", "type": "webcam"}]'
            ),
            "rejects its settings",
        ),
        (
            lambda s, c: s["pipeline"]["environment"].update(SLIMSPECT_STORE_ENDPOINT="minio:9100"),
            "store minio:9100: minio listens on 9000",
        ),
    ],
)
def test_checker_catches(compose: dict[str, Any], checker: EnvChecker, edit, expected) -> None:
    errors = compose_errors(_broken(compose, edit), checker)
    assert any(expected in e for e in errors), errors
