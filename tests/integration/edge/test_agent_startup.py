"""Start-up checks: a configuration that cannot work stops the agent at once, with a
message naming the key (unreachable endpoints, unreadable or missing models, bad keys),
and ``slimspect agent`` exits with status 2 on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from agent_harness import agent_running, folder_camera, settings_of, station_config, write_config
from agent_models import publish_good
from aggregator_harness import run_async

from edge_agent.agent import Agent
from edge_agent.cli import CONFIG_EXIT
from edge_agent.errors import ConfigError

pytestmark = [pytest.mark.s3, pytest.mark.timeout(600)]


@pytest.fixture
def station(tmp_path, ns, store_settings):
    """``station(**overrides)``: settings data of a station whose servers are not needed."""
    (tmp_path / "scans").mkdir()

    def make(**overrides):
        data = station_config(
            tmp_path,
            station=ns.station(0),
            token="sst_unused",
            uplink_port=1,
            store=store_settings,
            cameras=[folder_camera(tmp_path / "scans")],
        )
        data.update(overrides)
        return data

    return make


def start_error(data) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        run_async(Agent(settings_of(data)).run())
    return info.value


def test_endpoints_that_do_not_resolve_name_their_key(station):
    error = start_error(station(uplink={"endpoint": "no-such-host.invalid:50051"}))
    assert error.key == "uplink.endpoint" and "cannot resolve 'no-such-host.invalid'" in str(error)
    error = start_error(station(fleet={"endpoint": "fleet.invalid:50052"}))
    assert error.key == "fleet.endpoint"


def test_missing_keys_and_token_files_name_their_key(station, tmp_path):
    error = start_error(
        station(store=dict(station()["store"], trusted_keys=[str(tmp_path / "nope.pub")]))
    )
    assert error.key == "store.trusted_keys" and "does not exist" in str(error)
    error = start_error(station(token=None, token_file=str(tmp_path / "no-token")))
    assert error.key == "token_file"


def test_unreadable_or_missing_models_name_their_key(station, tmp_path, model_store, tiny_model):
    error = start_error(station(model={"path": str(tmp_path / "no-such-model")}))
    assert error.key == "model.path"
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    error = start_error(station(model={"path": str(broken)}))
    assert error.key == "model.path" and "manifest.sig" in str(error)
    error = start_error(station(model={"name": "tiny-yolo", "version": "9.9.9"}))
    assert error.key == "model.version" and "not found" in str(error)


def test_execution_providers_that_are_not_there_name_their_key(station):
    error = start_error(
        station(runtime={"providers": ["NoSuchExecutionProvider", "CPUExecutionProvider"]})
    )
    assert error.key == "runtime.providers" and "NoSuchExecutionProvider" in str(error)


def test_a_model_directory_is_verified_cached_and_used(station, tmp_path, model_store, tiny_model):
    publish_good(model_store, tiny_model, "1.0.0")
    fetched = model_store.fetch("tiny-yolo", "1.0.0", tmp_path / "provisioned")

    async def scenario():
        data = station(model={"path": str(fetched.directory)})
        async with agent_running(settings_of(data)) as agent:
            return agent.slot.active.manifest.key, agent.updater.cache.has(
                agent.updater.cache.read_current()[0]
            )

    key, cached = run_async(scenario())
    assert key == "tiny-yolo/1.0.0" and cached


def test_the_command_exits_2_and_names_the_key(station, tmp_path):
    config = write_config(
        tmp_path / "station.yaml", station(uplink={"endpoint": "nowhere.invalid:1"})
    )
    slimspect = Path(sys.executable).with_name("slimspect")  # the console script
    command = [str(slimspect)] if slimspect.exists() else [sys.executable, "-m", "slimspect.cli"]
    result = subprocess.run(
        [*command, "agent", "--config", str(config)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == CONFIG_EXIT, result.stderr
    assert (
        "error: configuration: uplink.endpoint: cannot resolve 'nowhere.invalid'" in result.stderr
    )
