"""The embedded stack: ``slimspect up``, ``down`` and ``status`` on one state directory.

Start order (``down`` stops in reverse): Redis (AOF on), the S3 store (SeaweedFS), a local
Ray head, the aggregator, the API (HTTP, dashboard and the Fleet gRPC server of the rollout
service) and N simulated stations. Each runs as a process of its own in its own session,
on free ports (on loopback, but for Ray: see ray_head.py), its output in ``logs/<name>.log``;
``stack.json`` records them (stack_state.py), so ``down`` and ``status`` work from any
shell. The services and the agents are started as ``slimspect`` sub-commands, as a user
would type them: the core never imports a deployable.

State directory::

    stack.json        what runs: pids, ports, probes, endpoints, credential paths
    env.sh            `source` it: SLIMSPECT_API_*, SLIMSPECT_STORE_*, RAY_ADDRESS, RAY_AUTH_*
    logs/             one log per process (the S3 store's: s3/weed.log)
    redis/            the Redis AOF
    s3/               SeaweedFS data and seaweed.json (its credentials)
    keys/             signing.key, signing.pub (models published to the stack's store)
    credentials/      operator.key, station-N.token, ray.token
    stations/station-N/station.yaml, state/ (spool, model cache)

Ray's session files go to ``/tmp/slimspect-ray-<hash>`` (ray_head.py says why), which
``down`` removes. Data, keys and credentials survive ``down``; the next ``up`` on the
directory reuses them. ``up`` refuses a directory whose recorded stack still runs (any of
its processes alive); a record whose processes are all gone (a reboot) is replaced, after
stopping any of their children that survived.

The processes inherit the caller's environment but for what would point them elsewhere
(stack_env.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path
from typing import Any

from slimspect.embedded import probes
from slimspect.embedded.credentials import (
    Provisioning,
    ensure_ray_token,
    ensure_signing_keys,
    slimspect_argv,
)
from slimspect.embedded.ports import HOST, pick_ports
from slimspect.embedded.processes import (
    ProcessRecord,
    is_alive,
    log_tail,
    proc_stat,
    spawn,
    stop_together,
)
from slimspect.embedded.ray_head import (
    RAY_READY_LINE,
    RayPorts,
    ray_address,
    ray_auth_env,
    ray_head_argv,
    ray_installed,
)
from slimspect.embedded.redis_server import find_redis_server, redis_argv, redis_url
from slimspect.embedded.s3 import SeaweedS3, find_weed
from slimspect.embedded.stack_env import child_env, store_env, write_env_file
from slimspect.embedded.stack_state import Service, StackState, locked
from slimspect.embedded.station_config import (
    STATION_PREFIX,
    StationPlan,
    station_name,
    write_station_config,
)
from slimspect.errors import EmbeddedServiceError
from slimspect.settings import StoreSettings
from slimspect.store import ModelStore

DEFAULT_STATE_DIR = Path(".slimspect")
DEFAULT_MODEL = "slimspect-yolo"  # what the pipeline publishes (configs/pipeline.example.yaml)
BUCKET = "slimspect"

Echo = Callable[[str], None]


class StackRunningError(EmbeddedServiceError):
    """A stack already runs in this state directory."""


class StartupError(EmbeddedServiceError):
    """A process of the stack did not start; the message ends with its log's last lines."""


@dataclass(frozen=True)
class StackOptions:
    state_dir: Path = DEFAULT_STATE_DIR
    stations: int = 2
    ray: bool = True
    ray_dashboard: bool = False
    model_name: str = DEFAULT_MODEL
    startup_timeout_s: float = 180.0


@dataclass(frozen=True)
class Row:
    """One line of ``slimspect status``."""

    name: str
    pid: int
    alive: bool
    answering: bool
    url: str
    detail: str
    log: str


# --- up ---------------------------------------------------------------------------------------


def up(options: StackOptions, echo: Echo = print) -> StackState:
    """Starts the stack and returns its record once every process answers.

    Raises StackRunningError when one runs there already, StartupError (after stopping what
    was started) when a process fails to start.
    """
    state_dir = options.state_dir.resolve()
    with locked(state_dir):
        _clear_stale(state_dir, echo)
        state = StackState(state_dir)
        try:
            _Starter(options, state, echo).run()
        except BaseException:
            if state.services:
                echo("stopping what was started ...")
                _stop_all(state, echo)
            state.remove()
            raise
        return state


class _Starter:
    """Starts the processes one by one, recording each in ``stack.json`` as it starts."""

    def __init__(self, options: StackOptions, state: StackState, echo: Echo) -> None:
        self.options = options
        self.state = state
        self.dir = state.state_dir
        self.echo = echo
        self.env = child_env(os.environ)
        # name -> (log offset at start, a line the process logs once it is ready)
        self._ready_lines: dict[str, tuple[int, str]] = {}

    def run(self) -> None:
        o, d = self.options, self.dir
        redis_bin, _ = find_redis_server(), find_weed()  # fail before starting anything
        with_ray = o.ray and ray_installed()
        if o.ray and not with_ray:
            self._note("Ray is not installed (pip install 'slimspect[train]'): no Ray head")

        fresh_redis = not any(
            (d / "redis" / f).exists() for f in ("appendonlydir", "appendonly.aof")
        )
        redis = self._start_redis(redis_bin)
        self._wait(redis)
        url = redis.url
        s3 = self._start_s3()
        keys = ensure_signing_keys(d / "keys")
        store = s3.store_settings(
            bucket=BUCKET, signing_key=keys.private_key, trusted_keys=[keys.public_key]
        )
        ModelStore.from_settings(store).ensure_bucket()

        if with_ray:
            # Alone and before the ports below are chosen: Ray binds random ports of its own.
            self._start_ray()

        # The commands that make tokens and keys run while the servers start.
        stations = [station_name(i) for i in range(1, o.stations + 1)]
        provisioning = Provisioning(
            d / "credentials", redis_url=url, stations=stations, fresh=fresh_redis, env=self.env
        ).start()
        try:
            agg, agg_metrics, api, fleet, *station_ports = pick_ports(4 + len(stations))
            pending = [
                self._start_aggregator(url, agg, agg_metrics),
                self._start_api(url, api, fleet, store),
            ]
            credentials = provisioning.wait()
        except BaseException:
            provisioning.abort()
            raise
        for index, (name, port) in enumerate(zip(stations, station_ports, strict=True), 1):
            plan = StationPlan(name, index, port, d / "stations" / name)
            config = write_station_config(
                plan,
                token_file=credentials.station_tokens[name],
                aggregator_port=agg,
                fleet_port=fleet,
                store=store,
                model_name=o.model_name,
            )
            pending.append(self._start_station(name, config, port))
        self._wait(*pending)

        self.state.endpoints.update(
            {
                "redis": url,
                "s3": store.endpoint,
                "bucket": store.bucket,
                "aggregator": f"{HOST}:{agg}",
                "aggregator_metrics": f"http://{HOST}:{agg_metrics}/metrics",
                "api": f"http://{HOST}:{api}",
                "dashboard": f"http://{HOST}:{api}/",
                "fleet": f"{HOST}:{fleet}",
                "model_name": o.model_name,
            }
        )
        self.state.credentials.update(
            {
                "operator_key": str(credentials.operator_key),
                "signing_key": str(keys.private_key),
                "trusted_key": str(keys.public_key),
                "s3": str(s3.state_dir / "seaweed.json"),
                **{f"token:{s}": str(p) for s, p in credentials.station_tokens.items()},
                **{f"config:{s}": str(d / "stations" / s / "station.yaml") for s in stations},
            }
        )
        env_file = write_env_file(d / "env.sh", self.state, store, credentials.operator_key)
        self.state.credentials["env"] = str(env_file)
        self.state.save()

    # --- the processes ---

    def _start_redis(self, binary: Path) -> Service:
        data_dir = self.dir / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        [port] = pick_ports(1)
        return self._spawn(
            "redis",
            redis_argv(binary, port=port, data_dir=data_dir),
            url=redis_url(port),
            probes=[{"kind": "redis", "port": port}],
            grace_s=15,
        )

    def _start_aggregator(self, redis: str, port: int, metrics_port: int) -> Service:
        argv = slimspect_argv(
            "aggregator", "serve", "--host", HOST, "--port", str(port),
            "--redis-url", redis, "--metrics-port", str(metrics_port),
        )  # fmt: skip
        return self._spawn(
            "aggregator", argv, url=f"{HOST}:{port}", probes=[{"kind": "grpc", "port": port}]
        )

    def _start_api(self, redis: str, port: int, fleet_port: int, store: StoreSettings) -> Service:
        argv = slimspect_argv(
            "api", "serve", "--host", HOST, "--port", str(port), "--redis-url", redis,
            "--fleet", "--fleet-port", str(fleet_port), "--model-store",
        )  # fmt: skip
        env = (
            self.env
            | store_env(store)
            | {"SLIMSPECT_ROLLOUT_DEFAULT_MODEL": self.options.model_name}
        )
        return self._spawn(
            "api",
            argv,
            url=f"http://{HOST}:{port} (Fleet gRPC {HOST}:{fleet_port})",
            probes=[
                {"kind": "http", "url": f"http://{HOST}:{port}/healthz", "expect": 200},
                {"kind": "grpc", "port": fleet_port},
            ],
            env=env,
        )

    def _start_station(self, name: str, config: Path, metrics_port: int) -> Service:
        healthz = f"http://{HOST}:{metrics_port}/healthz"
        return self._spawn(
            name,
            slimspect_argv("agent", "--config", str(config)),
            url=healthz,
            probes=[{"kind": "http", "url": healthz}],  # 503 until a model runs: still up
        )

    def _note(self, text: str) -> None:
        self.echo(f"note: {text}")
        self.state.notes.append(text)

    def _spawn(
        self,
        name: str,
        argv: list[str],
        *,
        url: str,
        probes: list[dict[str, Any]],
        env: Mapping[str, str] | None = None,
        grace_s: float = 10.0,
    ) -> Service:
        record = spawn(
            name,
            argv,
            log_path=self.dir / "logs" / f"{name}.log",
            env=env or self.env,
            cwd=self.dir,
        )
        return self._record(Service(record, url=url, probes=probes, grace_s=grace_s))

    def _record(self, service: Service) -> Service:
        self.state.services.append(service)
        self.state.save()
        return service

    def _start_s3(self) -> SeaweedS3:
        s3 = SeaweedS3(self.dir / "s3", startup_timeout_s=self.options.startup_timeout_s)
        try:
            s3.start()
        except EmbeddedServiceError as exc:
            raise StartupError(f"s3 did not start: {exc}") from None
        assert s3.pid is not None and s3.ports is not None
        stat = proc_stat(s3.pid)
        record = ProcessRecord(
            "s3",
            s3.pid,
            stat.start_ticks if stat else 0,
            argv=["weed", "mini", f"-dir={s3.data_dir}"],
            log=str(s3.log_path),
        )
        # weed's admin server can take 10 s to give up on shutdown (see SeaweedS3.stop).
        self._record(
            Service(
                record,
                url=f"http://{s3.endpoint}",
                probes=[{"kind": "http", "url": f"http://{s3.endpoint}/"}],
                grace_s=15,
            )
        )
        return s3

    def _start_ray(self, attempts: int = 2) -> Service:
        """Starts the Ray head and waits for it, alone: on a busy machine its raylet may miss
        the 30 s Ray allows it to register (then `ray start` exits), so it gets a retry."""
        for attempt in range(1, attempts + 1):
            service = self._spawn_ray()
            try:
                self._wait(service)
            except StartupError:
                if attempt == attempts or is_alive(service.process):
                    raise
                self.echo(
                    f"note: the Ray head exited while starting ({service.process.log}); retrying"
                )
                stop_together([service.process], grace_s=service.grace_s)
                self.state.services.remove(service)
                self.state.save()
                continue
            # Ray connects clients to the address it chose (ray_head.py), not to loopback.
            address = ray_address(Path(self.state.endpoints["ray_temp_dir"]))
            if address:
                service.url = self.state.endpoints["ray"] = address
                self.state.save()
            return service
        raise AssertionError("unreachable")

    def _spawn_ray(self) -> Service:
        ports = RayPorts.pick()
        digest = hashlib.sha1(str(self.dir).encode()).hexdigest()[:8]
        temp_dir = Path(tempfile.gettempdir()) / f"slimspect-ray-{digest}"
        self.state.endpoints.update(
            {
                "ray": f"{HOST}:{ports.gcs}",
                "ray_client": f"ray://{HOST}:{ports.client}",
                "ray_temp_dir": str(temp_dir),
            }
        )
        if self.options.ray_dashboard:
            self.state.endpoints["ray_dashboard"] = f"http://{HOST}:{ports.dashboard}"
        token = ensure_ray_token(self.dir / "credentials" / "ray.token")
        self.state.credentials["ray_token"] = str(token)
        argv = ray_head_argv(ports, temp_dir=temp_dir, dashboard=self.options.ray_dashboard)
        # Its ports listen before the raylet has registered (which may still fail): `ray start`
        # is ready once it says it blocks, after it wrote the cluster address.
        log = self.dir / "logs" / "ray.log"
        self._ready_lines["ray"] = (log.stat().st_size if log.exists() else 0, RAY_READY_LINE)
        return self._spawn(
            "ray",
            argv,
            # No drain on SIGTERM: `ray start` otherwise waits up to 30 s for a drain that
            # only matters to Ray Serve replicas (this head has none), and `down` kills it.
            env=self.env | ray_auth_env(token) | {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},
            url=f"{HOST}:{ports.gcs}",
            grace_s=20,
            probes=[{"kind": "tcp", "port": ports.gcs}, {"kind": "tcp", "port": ports.client}],
        )

    def _wait(self, *services: Service) -> None:
        """Returns once every service answers; StartupError when one exits or times out."""
        deadline = time.monotonic() + self.options.startup_timeout_s
        pending = list(services)
        while pending:
            for service in list(pending):
                if not is_alive(service.process):
                    raise StartupError(_failure(service, "exited while starting"))
                if self._logged_ready(service) and probes.check(service.probes).ok:
                    pending.remove(service)
            if pending and time.monotonic() > deadline:
                raise StartupError(
                    _failure(
                        pending[0], f"did not answer within {self.options.startup_timeout_s:.0f} s"
                    )
                )
            if pending:
                time.sleep(0.2)

    def _logged_ready(self, service: Service) -> bool:
        if service.name not in self._ready_lines:
            return True
        offset, line = self._ready_lines[service.name]
        with open(service.process.log, "rb") as f:
            f.seek(offset)
            return line.encode() in f.read()


def _failure(service: Service, what: str) -> str:
    return (
        f"{service.name} {what} ({' '.join(service.process.argv)}); "
        f"last lines of {service.process.log}:\n{log_tail(service.process.log)}"
    )


def _clear_stale(state_dir: Path, echo: Echo) -> None:
    """Refuses a running stack; stops the survivors of a dead one and forgets it."""
    old = StackState.load(state_dir)
    if old is None:
        return
    alive = [s.name for s in old.services if is_alive(s.process)]
    if alive:
        raise StackRunningError(
            f"a stack already runs in {state_dir} ({', '.join(alive)}); "
            f"see 'slimspect status --state-dir {state_dir}', or stop it with "
            f"'slimspect down --state-dir {state_dir}'"
        )
    echo(f"note: {state_dir / 'stack.json'} records a stack that no longer runs; replacing it")
    _stop_all(old, echo)
    old.remove()


# --- down -------------------------------------------------------------------------------------


def down(state_dir: Path, echo: Echo = print) -> list[str]:
    """Stops every recorded process, newest first; returns their names ([] when none)."""
    state_dir = state_dir.resolve()
    if not (state_dir / "stack.json").exists():
        return []
    with locked(state_dir):
        state = StackState.load(state_dir)
        if state is None:
            return []
        names = [s.name for s in state.services]
        _stop_all(state, echo)
        state.remove()
        return names


def _stop_all(state: StackState, echo: Echo) -> None:
    """Stops the services newest first, saving the record after each step.

    The stations stop together (each waits up to ``uplink.drain_s`` for its last acks,
    and they need the aggregator, which stops after them, for that).
    """
    errors = []
    while state.services:
        batch = list(takewhile(_is_station, reversed(state.services))) or [state.services[-1]]
        started = time.monotonic()
        try:
            killed = stop_together(
                [s.process for s in batch], grace_s=max(s.grace_s for s in batch)
            )
        except EmbeddedServiceError as exc:
            errors.append(str(exc))
            killed = {s.name for s in batch}
        took = time.monotonic() - started
        for service in batch:
            how = "killed after SIGTERM timed out" if service.name in killed else "stopped"
            echo(f"{how}: {service.name} (pid {service.process.pid}, {took:.1f} s)")
            if service.name == "s3":
                SeaweedS3(state.state_dir / "s3").remove_stale_sockets()
            if service.name == "ray" and state.endpoints.get("ray_temp_dir"):
                shutil.rmtree(state.endpoints["ray_temp_dir"], ignore_errors=True)
        del state.services[-len(batch) :]
        if state.path.exists():
            state.save()
    if errors:
        raise EmbeddedServiceError("; ".join(errors))


def _is_station(service: Service) -> bool:
    return service.name.startswith(STATION_PREFIX)


# --- status -----------------------------------------------------------------------------------


def status(state_dir: Path) -> list[Row] | None:
    """One row per recorded process (None when no stack is recorded in ``state_dir``)."""
    state = StackState.load(state_dir.resolve())
    if state is None:
        return None
    rows = []
    for service in state.services:
        alive = is_alive(service.process)
        probe = probes.check(service.probes) if alive else probes.Probe(False, "not running")
        rows.append(
            Row(
                service.name,
                service.process.pid,
                alive,
                probe.ok,
                service.url,
                probe.detail,
                service.process.log,
            )
        )
    return rows
