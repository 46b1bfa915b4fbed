"""The Dockerfiles of infra/docker/: slim, non-root, multi-stage, installing the repository's
own pyproject with the deployable's extra; COPY sources exist and pass .dockerignore; the
commands, variables and ports they carry agree with the code."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from deploy_checks import (
    DOCKER_DIR,
    REPO,
    EnvChecker,
    check_invocation,
    dockerfile_errors,
    dockerfile_instructions,
    slimspect_invocations,
)

# deployable -> the pyproject extra its image installs
EXTRAS = {"trainer": "train", "services": "services", "agent": "edge"}


def _dockerfile(name: str) -> Path:
    return DOCKER_DIR / f"{name}.Dockerfile"


def _instructions(name: str) -> list[tuple[str, str]]:
    return dockerfile_instructions(_dockerfile(name).read_text(encoding="utf-8"))


def test_one_dockerfile_per_deployable() -> None:
    assert sorted(p.name for p in DOCKER_DIR.glob("*.Dockerfile")) == sorted(
        f"{n}.Dockerfile" for n in EXTRAS
    )
    optional = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert set(EXTRAS.values()) <= set(optional)


@pytest.mark.parametrize("name", sorted(EXTRAS))
def test_dockerfile_agrees_with_the_repository(name: str) -> None:
    assert dockerfile_errors(_dockerfile(name)) == []


@pytest.mark.parametrize("name", sorted(EXTRAS))
def test_slim_multistage_base_and_the_right_extra(name: str) -> None:
    instructions = _instructions(name)
    args = dict(rest.split("=", 1) for word, rest in instructions if word == "ARG" and "=" in rest)
    froms = [rest.split()[0] for word, rest in instructions if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    bases = {re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], f) for f in froms}
    assert bases and all(b.startswith("python:3.11-slim") for b in bases), bases
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert f'pip install ".[{EXTRAS[name]}]"' in runs or (
        f'".[{EXTRAS[name]}]"' in runs and "pip install" in runs
    ), runs


def test_trainer_takes_the_cpu_torch_of_the_constraints() -> None:
    text = _dockerfile("trainer").read_text()
    pin = next(
        line
        for line in (REPO / "constraints" / "cpu.txt").read_text().splitlines()
        if line.startswith("torch==")
    )
    assert pin in text, "the comment names the pin of constraints/cpu.txt"
    assert "download.pytorch.org/whl/cpu" in text
    assert "-c constraints/cpu.txt" in text


@pytest.mark.parametrize("name", sorted(EXTRAS))
def test_commands_env_and_ports_agree_with_the_code(name: str) -> None:
    from edge_agent.settings import MetricsSettings
    from services.aggregator.settings import AggregatorSettings
    from services.api.settings import ApiSettings
    from services.rollout.settings import RolloutSettings

    errors: list[str] = []
    env: dict[str, str] = {}
    exposed: list[int] = []
    for word, rest in _instructions(name):
        if word in ("CMD", "ENTRYPOINT") and rest.startswith("["):
            for argv in slimspect_invocations(json.loads(rest)):
                errors += check_invocation(argv, f"{name} {word}")
        elif word == "HEALTHCHECK":
            exec_form = rest[rest.index("CMD") + 3 :].strip()
            port = re.search(r"127\.0\.0\.1:(\d+)", exec_form)
            assert port and name == "agent"
            assert int(port.group(1)) == MetricsSettings.model_fields["port"].default
        elif word == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", rest))
        elif word == "EXPOSE":
            exposed += [int(p.split("/")[0]) for p in rest.split()]
    errors += EnvChecker().errors(env, name)
    assert errors == []
    defaults = {
        "services": {
            AggregatorSettings.model_fields["port"].default,
            AggregatorSettings.model_fields["metrics_port"].default,
            ApiSettings.model_fields["port"].default,
            RolloutSettings.model_fields["port"].default,
        },
        "agent": {MetricsSettings.model_fields["port"].default},
        "trainer": {6379, 10001, 8265},  # Ray's GCS, client server and dashboard defaults
    }[name]
    assert set(exposed) == defaults


# --- the checker catches what is wrong ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("FROM python:3.11-slim\nCOPY nowhere ./nowhere\nUSER 10001\n", "'nowhere' does not exist"),
        ("FROM python:3.11-slim\nCOPY tests ./tests\nUSER 10001\n", "excluded by .dockerignore"),
        ("FROM python:3.11-slim\nCOPY pyproject.toml ./\n", "non-root USER"),
        ("FROM python:3.11-slim\nUSER root\n", "non-root USER"),
        ("FROM python:latest\nUSER 1\n", "is not pinned"),
        ("FROM python\nUSER 1\n", "has no tag"),
    ],
)
def test_checker_catches(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.Dockerfile"
    path.write_text(text)
    errors = dockerfile_errors(path)
    assert any(expected in e for e in errors), errors


def test_checker_catches_a_file_dropped_from_a_copied_package(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "ingest.lua").write_text("")
    (tmp_path / ".dockerignore").write_text("**/*.lua\n")
    path = tmp_path / "x.Dockerfile"
    path.write_text("FROM python:3.11-slim\nCOPY pkg ./pkg\nUSER 10001\n")
    errors = dockerfile_errors(path, context=tmp_path)
    assert any("drops pkg/sub/ingest.lua" in e for e in errors), errors
    (tmp_path / ".dockerignore").write_text("**/*.pyc\n")
    assert dockerfile_errors(path, context=tmp_path) == []


def test_checker_passes_a_good_one(tmp_path: Path) -> None:
    path = tmp_path / "good.Dockerfile"
    path.write_text(
        "ARG B=python:3.11-slim\nFROM ${B} AS build\nCOPY pyproject.toml README.md ./\n"
        "COPY slimspect ./slimspect\nFROM ${B}\nCOPY --from=build /x /x\nUSER 10001:10001\n"
    )
    assert dockerfile_errors(path) == []
