"""Checkers shared by the deployment tests (docker-compose, Dockerfiles, Kubernetes).

Every checker returns a list of human-readable errors (empty: fine), so the tests can show
all problems at once and can feed deliberately broken input to prove a checker bites.
What is allowed is derived from the code: settings classes (their ``model_fields`` and
``env_prefix``), the ``slimspect`` command tree (``slimspect.cli.COMMANDS`` and click), and
the Dockerfiles in ``infra/docker/``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shlex
import types
import typing
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import click
import yaml
from click.testing import CliRunner
from pydantic import BaseModel
from pydantic_settings import BaseSettings

REPO = Path(__file__).resolve().parents[3]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKER_DIR = REPO / "infra" / "docker"
COMPOSE_DIR = REPO / "infra" / "compose"
K8S_DIR = REPO / "infra" / "k8s"
CODE_PACKAGES = ("slimspect", "services", "edge_agent", "trainer")

# ---------------------------------------------------------------------------------------------
# settings classes and the environment variable names they read
# ---------------------------------------------------------------------------------------------


def settings_classes() -> list[type[BaseSettings]]:
    """Every BaseSettings class with an ``env_prefix`` in the code (found by scanning the
    sources for ``env_prefix``, then importing those modules)."""
    found: dict[str, type[BaseSettings]] = {}
    for package in CODE_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "env_prefix" not in path.read_text(encoding="utf-8"):
                continue
            rel = path.relative_to(REPO).with_suffix("")
            module = importlib.import_module(".".join(rel.parts))
            for obj in vars(module).values():
                if (
                    isinstance(obj, type)
                    and issubclass(obj, BaseSettings)
                    and obj.__module__ == module.__name__
                    and obj.model_config.get("env_prefix")
                ):
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return list(found.values())


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The BaseModel classes an annotation can hold (through Optional, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def _field_names(model: type[BaseModel], prefix: str, delimiter: str | None) -> set[str]:
    names: set[str] = set()
    for name, field in model.model_fields.items():
        env = f"{prefix}{name}".upper()
        names.add(env)  # the whole field (JSON for a nested section or a list)
        if delimiter:
            for sub in _models_in(field.annotation):
                names |= _field_names(sub, env + delimiter, delimiter)
    return names


def env_names(cls: type[BaseSettings]) -> set[str]:
    """The variables ``cls`` reads: env_prefix + field name, nested keys joined by the
    class's ``env_nested_delimiter`` (if it has one)."""
    config = cls.model_config
    return _field_names(cls, config["env_prefix"], config.get("env_nested_delimiter"))


def command_envvars(names: Iterable[str]) -> set[str]:
    """SLIMSPECT_* variables that click options of the commands ``names`` read themselves
    (``slimspect agent`` reads SLIMSPECT_AGENT_CONFIG, not a settings field)."""
    from slimspect.cli import cli

    out: set[str] = set()
    ctx = click.Context(cli)

    def walk(cmd: click.Command) -> None:
        for param in cmd.params:
            envvars = param.envvar if isinstance(param.envvar, list | tuple) else [param.envvar]
            out.update(e for e in envvars if isinstance(e, str) and e.startswith("SLIMSPECT_"))
        if isinstance(cmd, click.Group):
            for sub in cmd.commands.values():
                walk(sub)

    for name in names:
        command = cli.get_command(ctx, name)
        if command is not None:
            walk(command)
    return out


class EnvChecker:
    """Is a SLIMSPECT_* name one the code reads? Matched by the longest env_prefix."""

    def __init__(self, commands: Iterable[str] = ("agent", "aggregator", "api", "pipeline")):
        self.by_prefix: dict[str, set[str]] = {}
        for cls in settings_classes():
            prefix = cls.model_config["env_prefix"].upper()
            self.by_prefix.setdefault(prefix, set()).update(env_names(cls))
        self.extra = command_envvars(commands)

    def errors(self, names: Iterable[str], where: str) -> list[str]:
        out = []
        for name in names:
            if not name.startswith("SLIMSPECT_") or name in self.extra:
                continue
            prefixes = [p for p in self.by_prefix if name.startswith(p)]
            if not prefixes:
                out.append(f"{where}: {name}: no settings class has a matching env_prefix")
                continue
            prefix = max(prefixes, key=len)
            if name not in self.by_prefix[prefix]:
                out.append(f"{where}: {name}: not a field of the {prefix}* settings")
        return out


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ without any SLIMSPECT_* variable of the test process, plus ``env``."""
    saved = dict(os.environ)
    try:
        for key in [k for k in os.environ if k.startswith("SLIMSPECT_")]:
            del os.environ[key]
        os.environ.update(env)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# ---------------------------------------------------------------------------------------------
# slimspect command lines
# ---------------------------------------------------------------------------------------------

_SHELL_STOP = {"||", "&&", ";", "|", ">", ">>", "<", "2>", "&", ")", "then", "do", "done"}


def slimspect_invocations(command: str | list[str] | None) -> list[list[str]]:
    """The ``slimspect ...`` argument lists in a command: an exec-form list, or a shell
    script (each ``slimspect`` word up to the next shell operator)."""
    if not command:
        return []
    if isinstance(command, list) and command and command[0] == "slimspect":
        return [[str(a) for a in command]]
    text = " ".join(command) if isinstance(command, list) else command
    out: list[list[str]] = []
    for line in text.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            words = line.split()
        for i, word in enumerate(words):
            if word == "slimspect":
                argv = []
                for w in words[i:]:
                    if w in _SHELL_STOP or w.startswith(">"):
                        break
                    argv.append(w)
                out.append(argv)
    return out


def command_path(argv: list[str]) -> tuple[str, ...]:
    """``("api", "serve")`` of ``slimspect api serve --port 1``: the command words."""
    from slimspect.cli import cli

    path: list[str] = []
    cmd: click.Command = cli
    ctx = click.Context(cli)
    for word in argv[1:]:
        if not isinstance(cmd, click.Group) or word.startswith("-"):
            break
        sub = cmd.get_command(ctx, word)
        if sub is None:
            break
        path.append(word)
        cmd = sub
    return tuple(path)


def check_invocation(argv: list[str], where: str) -> list[str]:
    """``argv`` is a real ``slimspect`` command line: each word a real (sub)command (their
    ``--help`` exits 0), and the leaf command parses the remaining options and arguments."""
    from slimspect.cli import COMMANDS, cli

    if not argv or argv[0] != "slimspect":
        return [f"{where}: not a slimspect command line: {argv}"]
    if len(argv) < 2 or argv[1] not in COMMANDS:
        return [f"{where}: 'slimspect {' '.join(argv[1:2])}' is not a command of slimspect.cli"]
    runner = CliRunner()
    cmd: click.Command = cli
    ctx = click.Context(cli, info_name="slimspect")
    path: list[str] = []
    rest = argv[1:]
    while rest and isinstance(cmd, click.Group) and not rest[0].startswith("-"):
        sub = cmd.get_command(ctx, rest[0])
        if sub is None:
            return [f"{where}: 'slimspect {' '.join([*path, rest[0]])}' is not a command"]
        path.append(rest[0])
        rest = rest[1:]
        result = runner.invoke(cli, [*path, "--help"])
        if result.exit_code != 0:
            return [f"{where}: 'slimspect {' '.join(path)} --help' exited {result.exit_code}"]
        ctx = click.Context(sub, info_name=path[-1], parent=ctx)
        cmd = sub
    if isinstance(cmd, click.Group) and not getattr(cmd, "invoke_without_command", False):
        return [f"{where}: 'slimspect {' '.join(path)}' is a group: a sub-command is missing"]
    # Placeholders of a shell script ("$station") stand for one argument each.
    args = ["X" if "$" in a else a for a in rest]
    try:
        cmd.make_context(path[-1], args, parent=ctx.parent)
    except click.UsageError as exc:
        return [f"{where}: 'slimspect {' '.join(path)}': {exc.format_message()}"]
    return []


# ---------------------------------------------------------------------------------------------
# images and Dockerfiles
# ---------------------------------------------------------------------------------------------


def dockerfile_for_image(image: str) -> Path | None:
    """``slimspect-<name>[:tag]`` is built from ``infra/docker/<name>.Dockerfile``."""
    name = image.split("@")[0].rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image
    base = name.split("/")[-1]
    if base.startswith("slimspect-"):
        return DOCKER_DIR / f"{base.removeprefix('slimspect-')}.Dockerfile"
    return None


def image_errors(image: str, where: str) -> list[str]:
    """An image is pinned: a digest, or a tag that is not ``latest``; our own images
    (slimspect-*) must have their Dockerfile in infra/docker/."""
    if not image:
        return [f"{where}: no image"]
    if "@sha256:" in image:
        return []
    last = image.split("/")[-1]
    if ":" not in last:
        return [f"{where}: image {image!r} has no tag (implicitly latest)"]
    tag = last.rsplit(":", 1)[1]
    if tag in ("latest", "") or "$" in tag:
        return [f"{where}: image {image!r} is not pinned"]
    dockerfile = dockerfile_for_image(image)
    if dockerfile is not None and not dockerfile.is_file():
        return [f"{where}: image {image!r} has no Dockerfile {dockerfile.relative_to(REPO)}"]
    return []


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def _dockerignored(rel: str, patterns: list[str]) -> bool:
    import fnmatch

    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hit = any(
            fnmatch.fnmatch(p, pat) or (pat.startswith("**/") and fnmatch.fnmatch(p, pat[3:]))
            for p in prefixes
        )
        if hit:
            ignored = not negate
    return ignored


def dockerfile_errors(path: Path, context: Path = REPO) -> list[str]:
    """A Dockerfile's build-context COPY/ADD sources exist and are not .dockerignored, it
    runs as a non-root USER and starts FROM a pinned base."""
    errors: list[str] = []
    where = path.name
    ignore_file = context / ".dockerignore"
    patterns = [
        line.strip()
        for line in (ignore_file.read_text().splitlines() if ignore_file.is_file() else [])
        if line.strip() and not line.startswith("#")
    ]
    args: dict[str, str] = {}
    stages: set[str] = set()
    user = None
    for word, rest in dockerfile_instructions(path.read_text(encoding="utf-8")):
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip()
        elif word == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            if image not in stages:
                errors += image_errors(image, f"{where} FROM")
            if len(parts) >= 3 and parts[1].upper() == "AS":
                stages.add(parts[2])
            user = None  # USER is per stage
        elif word == "USER":
            user = rest.split(":")[0]
        elif word in ("COPY", "ADD"):
            words = shlex.split(rest) if not rest.startswith("[") else yaml.safe_load(rest)
            if any(w.startswith("--from") for w in words):
                continue
            sources = [w for w in words if not w.startswith("--")][:-1]
            if not sources:
                errors.append(f"{where}: {word} {rest}: no source")
            for source in sources:
                matches = list(context.glob(source.removeprefix("./") or "."))
                if not matches:
                    errors.append(f"{where}: {word} source {source!r} does not exist")
                elif any(_dockerignored(str(m.relative_to(context)), patterns) for m in matches):
                    errors.append(f"{where}: {word} source {source!r} is excluded by .dockerignore")
                else:
                    # a package directory must reach the image whole (generated or cache
                    # files aside): no .dockerignore pattern may drop one of its files
                    for match in (m for m in matches if m.is_dir()):
                        dropped = [
                            f.relative_to(context)
                            for f in sorted(match.rglob("*"))
                            if f.is_file()
                            and "__pycache__" not in f.parts
                            and f.suffix != ".pyc"
                            and _dockerignored(str(f.relative_to(context)), patterns)
                        ]
                        if dropped:
                            errors.append(
                                f"{where}: .dockerignore drops {dropped[0]} from {source!r}"
                            )
    if user is None or user in ("root", "0"):
        errors.append(f"{where}: the final stage does not switch to a non-root USER")
    return errors


# ---------------------------------------------------------------------------------------------
# what each process reads, and the ports that follow from it
# ---------------------------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: {raw!r} is not KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def process_settings(
    path: tuple[str, ...], argv: list[str], env: dict[str, str], files: dict[str, Path]
) -> tuple[dict[str, Any], list[int]]:
    """Builds the settings the process ``slimspect <path>`` builds (from ``env``; ``files``
    maps container paths to repository files) and returns them with the ports it listens on.
    Raises whatever the settings raise on a bad value."""
    from services.aggregator.settings import AggregatorSettings
    from services.api.settings import ApiSettings
    from services.rollout.settings import RolloutSettings
    from slimspect.settings import StoreSettings

    with environment(env):
        if path == ("aggregator", "serve") or path == ("aggregator",):
            agg = AggregatorSettings()
            ports = [agg.port] + ([agg.metrics_port] if agg.metrics_port else [])
            return {"aggregator": agg}, ports
        if path == ("api", "serve"):
            api = ApiSettings()
            rollout = RolloutSettings()
            out: dict[str, Any] = {"api": api, "rollout": rollout}
            if api.model_store:
                out["store"] = StoreSettings()
            return out, [api.port] + ([rollout.port] if api.fleet else [])
        if path == ("agent",):
            from edge_agent.settings import load_settings

            config = _option(argv, "--config") or env.get("SLIMSPECT_AGENT_CONFIG")
            local = files.get(config) if config else None
            if config and local is None:
                raise FileNotFoundError(f"--config {config} is not mounted from the repository")
            agent = load_settings(local)
            return {"agent": agent}, [agent.metrics.port] if agent.metrics.port else []
        if path in (("pipeline", "run"), ("models",)) or path[:1] == ("models",):
            return {"store": StoreSettings()}, []
        if path[:2] == ("aggregator", "token"):
            return {"aggregator": AggregatorSettings()}, []
    return {}, []


def _option(argv: list[str], name: str) -> str | None:
    for i, word in enumerate(argv):
        if word == name and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)
