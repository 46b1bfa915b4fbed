"""The small parts of the embedded stack: ports, probes, stack.json, the lock, the child env."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from slimspect.embedded import probes
from slimspect.embedded.ports import HOST, PORT_RANGE, pick_ports, port_free
from slimspect.embedded.processes import ProcessRecord
from slimspect.embedded.stack_env import child_env
from slimspect.embedded.stack_state import Service, StackState, locked
from slimspect.errors import EmbeddedServiceError


def test_pick_ports_are_distinct_free_and_avoid_what_is_asked() -> None:
    avoid = set(range(PORT_RANGE[0], PORT_RANGE[0] + 1000))
    ports = pick_ports(20, avoid=avoid)
    assert len(set(ports)) == 20
    assert not set(ports) & avoid
    assert all(PORT_RANGE[0] <= p < PORT_RANGE[1] and port_free(p) for p in ports)


def test_a_listening_port_is_not_free() -> None:
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen()
        port = s.getsockname()[1]
        assert not port_free(port)
        assert probes.tcp(port).ok
    assert not probes.tcp(port).ok


def test_probes_of_a_closed_port_say_no_answer() -> None:
    [port] = pick_ports(1)
    assert not probes.redis_ping(port).ok
    assert not probes.http(f"http://{HOST}:{port}/healthz").ok
    result = probes.grpc_health(port, timeout_s=0.5)
    assert not result.ok and "UNAVAILABLE" in result.detail


def test_stack_state_round_trip(tmp_path: Path) -> None:
    state = StackState(tmp_path)
    record = ProcessRecord("redis", 10, 20, argv=["redis-server"], log="logs/redis.log")
    state.services.append(Service(record, url="redis://x", probes=[{"kind": "redis", "port": 1}]))
    state.endpoints["redis"] = "redis://x"
    state.credentials["env"] = "env.sh"
    state.save()
    loaded = StackState.load(tmp_path)
    assert loaded is not None
    assert loaded.services[0].process == record
    assert loaded.services[0].probes == [{"kind": "redis", "port": 1}]
    assert loaded.endpoints == state.endpoints and loaded.credentials == state.credentials
    loaded.remove()
    assert StackState.load(tmp_path) is None


def test_a_second_holder_of_the_lock_is_refused(tmp_path: Path) -> None:
    second = locked(tmp_path)
    with locked(tmp_path), pytest.raises(EmbeddedServiceError, match="another"):
        second.__enter__()
    with locked(tmp_path):  # released
        pass


def test_child_env_drops_what_points_elsewhere_and_keeps_tuning() -> None:
    env = child_env(
        {
            "PATH": "/bin",
            "SLIMSPECT_API_REDIS_URL": "redis://elsewhere",
            "SLIMSPECT_ROLLOUT_PORT": "1",
            "SLIMSPECT_STORE_ENDPOINT": "s3:9000",
            "SLIMSPECT_AGENT_STATION": "x",
            "SLIMSPECT_API_KEY": "k",
            "RAY_ADDRESS": "ray://x:1",
            "RAY_AUTH_TOKEN": "t",
            "SLIMSPECT_ROLLOUT_SOAK_S": "30",
            "SLIMSPECT_API_LOG_LEVEL": "DEBUG",
        }
    )
    assert env == {
        "PATH": "/bin",
        "SLIMSPECT_ROLLOUT_SOAK_S": "30",
        "SLIMSPECT_API_LOG_LEVEL": "DEBUG",
        "PYTHONUNBUFFERED": "1",
    }


def test_the_station_config_is_a_valid_agent_config(tmp_path: Path) -> None:
    from edge_agent.settings import load_settings
    from slimspect.embedded.station_config import StationPlan, write_station_config
    from slimspect.settings import StoreSettings

    store = StoreSettings(
        endpoint="127.0.0.1:9000",
        access_key="a",
        secret_key="s",
        bucket="slimspect",
        trusted_keys=[tmp_path / "signing.pub"],
    )
    token = tmp_path / "station-2.token"
    token.write_text("sst_x\n")
    plan = StationPlan("station-2", 2, 23456, tmp_path / "stations" / "station-2")
    path = write_station_config(
        plan, token_file=token, aggregator_port=1234, fleet_port=5678, store=store,
        model_name="slimspect-yolo",
    )  # fmt: skip
    assert path.stat().st_mode & 0o077 == 0  # it holds the store's secret key
    settings = load_settings(path)
    assert settings.station == "station-2"
    assert settings.uplink.endpoint == "127.0.0.1:1234"
    assert settings.fleet is not None and settings.fleet.endpoint == "127.0.0.1:5678"
    assert settings.model.name == "slimspect-yolo" and settings.model.version is None
    assert [c.type for c in settings.cameras] == ["synthetic", "synthetic"]
    assert len({c.seed for c in settings.cameras}) == 2
    assert settings.store.secret_key is not None
    assert settings.store.secret_key.get_secret_value() == "s"
    assert settings.metrics.port == 23456
    assert settings.read_token() == "sst_x"


def test_restart_names_what_it_cannot_do(tmp_path):
    import pytest

    from slimspect.embedded.processes import ProcessRecord
    from slimspect.embedded.stack_restart import restart
    from slimspect.embedded.stack_state import Service, StackState
    from slimspect.errors import EmbeddedServiceError

    with pytest.raises(EmbeddedServiceError, match="no stack runs"):
        restart(tmp_path, "aggregator")
    assert list(tmp_path.iterdir()) == []  # no lock file left where no stack is
    with pytest.raises(EmbeddedServiceError, match="no stack runs"):
        restart(tmp_path / "missing", "aggregator")
    state = StackState(tmp_path)
    state.services = [Service(ProcessRecord("api", 2**22 - 1, 0, ["true"]), url="", probes=[])]
    state.save()
    with pytest.raises(EmbeddedServiceError, match="has no process 'redi'.*it has: api"):
        restart(tmp_path, "redi")
    with pytest.raises(EmbeddedServiceError, match="api cannot be restarted alone"):
        restart(tmp_path, "api")
