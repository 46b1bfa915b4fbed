"""The secrets an embedded stack needs, kept in ``<state_dir>/credentials`` and ``keys``.

- the Ed25519 key pair that signs published models (``keys/signing.key``, ``signing.pub``),
  made once per state directory and kept: models published on one ``up`` stay trusted on
  the next;
- the Ray head's authentication token (``credentials/ray.token``), made once;
- one token per station and an operator API key, made by the services' own commands
  (``slimspect aggregator token add``, ``slimspect api key add``) as sub-processes, run side
  by side: the core never imports a deployable, and the hashing stays in one home.

Tokens and keys live hashed in the stack's Redis, whose AOF sits in the same state
directory, so they are made once and reused as long as that Redis data exists; a fresh Redis
(first ``up``, or its data removed) gets fresh ones, and a station added by a larger
``--stations`` gets its own. Every secret file is written with mode 0600.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from slimspect.errors import EmbeddedServiceError
from slimspect.signing import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    KeyPairFiles,
    generate_keypair,
    key_id,
    load_public_key,
)

OPERATOR_KEY_NAME = "stack-operator"


def slimspect_argv(*args: str) -> list[str]:
    """``slimspect ARGS`` run with this interpreter (the console script may not be on PATH)."""
    return [sys.executable, "-m", "slimspect.cli", *args]


def ensure_signing_keys(directory: Path) -> KeyPairFiles:
    """The key pair in ``directory``, generated when there is none."""
    private, public = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    if private.is_file() and public.is_file():
        return KeyPairFiles(private, public, key_id(load_public_key(public)))
    return generate_keypair(directory, force=True)


def ensure_ray_token(path: Path) -> Path:
    """The Ray head's authentication token file, made once (256 random bits, hex)."""
    if not (path.is_file() and path.read_text().strip()):
        write_secret(path, secrets.token_hex(32) + "\n")
    return path


def write_secret(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` with mode 0600 (never briefly readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class StackCredentials:
    operator_key: Path
    station_tokens: dict[str, Path]


class Provisioning:
    """Station tokens and the operator key, made by sub-processes started at once.

    :meth:`start` launches the commands and returns; :meth:`wait` collects their output
    into the credential files. Files that exist are kept unless ``fresh``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        redis_url: str,
        stations: Sequence[str],
        fresh: bool,
        env: Mapping[str, str],
    ) -> None:
        self.directory = directory
        self.redis_url = redis_url
        self.stations = list(stations)
        self.fresh = fresh
        self.env = dict(env)
        self._running: dict[Path, tuple[list[str], subprocess.Popen[str]]] = {}

    @property
    def operator_key_path(self) -> Path:
        return self.directory / "operator.key"

    def token_path(self, station: str) -> Path:
        return self.directory / f"{station}.token"

    def start(self) -> Provisioning:
        wanted = {
            self.operator_key_path: slimspect_argv(
                "api",
                "key",
                "add",
                OPERATOR_KEY_NAME,
                "--role",
                "operator",
                "--redis-url",
                self.redis_url,
            ),
            **{
                self.token_path(s): slimspect_argv(
                    "aggregator", "token", "add", s, "--redis-url", self.redis_url
                )
                for s in self.stations
            },
        }
        for path, argv in wanted.items():
            if not self.fresh and path.is_file() and path.read_text().strip():
                continue
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env,
                text=True,
            )
            self._running[path] = (argv, process)
        return self

    def wait(self, timeout_s: float = 300.0) -> StackCredentials:
        """Writes what the commands printed; EmbeddedServiceError naming a failed one."""
        failures = []
        for path, (argv, process) in self._running.items():
            try:
                stdout, stderr = process.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate()
            lines = stdout.strip().splitlines()
            if process.returncode != 0 or not lines:
                failures.append(
                    f"'{' '.join(argv[2:])}' exited with {process.returncode}: "
                    f"{stderr.strip()[-2000:] or '(no output)'}"
                )
                continue
            write_secret(path, lines[-1].strip() + "\n")
        self._running.clear()
        if failures:
            raise EmbeddedServiceError("provisioning failed:\n" + "\n".join(failures))
        return StackCredentials(
            operator_key=self.operator_key_path,
            station_tokens={s: self.token_path(s) for s in self.stations},
        )

    def abort(self) -> None:
        for _, process in self._running.values():
            process.kill()
            process.wait()
        self._running.clear()
