"""Agent settings: YAML file, environment overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edge_agent.cli import CONFIG_EXIT, agent
from edge_agent.errors import ConfigError
from edge_agent.settings import FolderCamera, VideoCamera, load_settings


@pytest.fixture
def config(tmp_path):
    """``config(**overrides)`` writes a valid station file (with overrides) and returns its path."""
    pub = tmp_path / "signing.pub"
    pub.write_text("not read by the settings")

    def write(**overrides):
        data = {
            "station": "line1-st3",
            "state_dir": str(tmp_path / "state"),
            "token": "sst_abc",
            "uplink": {"endpoint": "127.0.0.1:50051", "batch_max_events": 16},
            "store": {"endpoint": "127.0.0.1:8333", "trusted_keys": [str(pub)]},
            "model": {"name": "steel-yolo", "version": "1.0.0"},
            "cameras": [
                {"id": "top", "type": "video", "path": "/data/top.avi", "fps": 10, "loop": True},
                {"id": "scans", "type": "folder", "path": "/data/scans"},
            ],
        }
        data.update(overrides)
        path = tmp_path / "station.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write


def test_a_valid_file_loads_with_its_camera_types(config):
    settings = load_settings(config())
    assert settings.station == "line1-st3"
    assert [type(c) for c in settings.cameras] == [VideoCamera, FolderCamera]
    assert settings.cameras[0].loop is True
    assert settings.uplink.batch_max_events == 16
    assert settings.spool_path == settings.state_dir / "spool.sqlite"
    assert settings.spool.synchronous == "FULL"
    assert settings.runtime.providers == ["CPUExecutionProvider"]


def test_the_environment_wins_over_the_file_key_by_key(config, monkeypatch):
    monkeypatch.setenv("SLIMSPECT_AGENT_UPLINK__ENDPOINT", "aggregator.plant:50051")
    monkeypatch.setenv("SLIMSPECT_AGENT_RUNTIME__INTRA_OP_THREADS", "2")
    monkeypatch.setenv("SLIMSPECT_AGENT_CAMERAS", '[{"id": "c9", "type": "synthetic"}]')
    settings = load_settings(config())
    assert settings.uplink.endpoint == "aggregator.plant:50051"
    assert settings.uplink.batch_max_events == 16  # the file's other uplink keys stay
    assert settings.runtime.intra_op_threads == 2
    assert [c.id for c in settings.cameras] == ["c9"]


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        ({"cameras": [{"id": "c", "type": "usb"}]}, "cameras[0].type", "unknown camera type 'usb'"),
        ({"cameras": [{"id": "c", "type": "folder"}]}, "cameras[0].path", "required"),
        (
            {"cameras": [{"id": "c", "type": "synthetic", "fsp": 3}]},
            "cameras[0].fsp",
            "not permitted",
        ),
        ({"cameras": []}, "cameras", "at least 1"),
        (
            {"cameras": [{"id": "a", "type": "synthetic"}, {"id": "a", "type": "synthetic"}]},
            "cameras[1].id",
            "used twice",
        ),
        ({"uplink": {"endpoint": "grpc://x:1"}}, "uplink.endpoint", "without a scheme"),
        ({"uplink": {"endpoint": "aggregator"}}, "uplink.endpoint", "not host:port"),
        (
            {"uplink": {"endpoint": "a:1", "tls": {"ca": "/nope/ca.pem"}}},
            "uplink.tls.ca",
            "readable",
        ),
        ({"token": None}, "token", "token_file"),
        ({"store": {"trusted_keys": []}}, "store.trusted_keys", "public key"),
        ({"model": {"version": "1.0.0"}}, "model", "version needs name"),
        ({"model": {"name": "Bad Name"}}, "model.name", "pattern"),
        ({"spool": {"synchronous": "OFF"}}, "spool.synchronous", "FULL"),
        ({"stationn": "x"}, "stationn", "not permitted"),
    ],
)
def test_bad_configuration_names_the_key(config, overrides, key, words):
    with pytest.raises(ConfigError) as info:
        load_settings(config(**overrides))
    assert info.value.key == key
    assert words in str(info.value)
    assert str(info.value).startswith(f"{key}: ")


def test_unreadable_or_malformed_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"^config: cannot read .*missing.yaml"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("station: [unclosed\n")
    with pytest.raises(ConfigError, match=r"^config: .* is not valid YAML"):
        load_settings(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(bad)


def test_token_file_is_read_and_checked(config, tmp_path):
    token = tmp_path / "token"
    settings = load_settings(config(token=None, token_file=str(token)))
    with pytest.raises(ConfigError, match="^token_file: cannot read"):
        settings.read_token()
    token.write_text("sst_secret\n")
    assert settings.read_token() == "sst_secret"


def test_cli_exits_2_with_the_key_on_a_bad_config(config):
    result = CliRunner().invoke(
        agent, ["--config", str(config(cameras=[{"id": "c", "type": "usb"}]))]
    )
    assert result.exit_code == CONFIG_EXIT
    assert "cameras[0].type: unknown camera type 'usb'" in result.output


def test_cli_check_prints_the_effective_settings_without_the_token(config, monkeypatch):
    monkeypatch.setenv("SLIMSPECT_AGENT_LOG_LEVEL", "DEBUG")
    result = CliRunner().invoke(agent, ["--config", str(config()), "--check"])
    assert result.exit_code == 0, result.output
    assert '"log_level": "DEBUG"' in result.output
    assert "sst_abc" not in result.output


def test_the_example_station_file_of_the_systemd_unit_is_valid(monkeypatch, tmp_path):
    example = Path(__file__).resolve().parents[3] / "infra" / "systemd" / "station.example.yaml"
    data = yaml.safe_load(example.read_text())
    for section in ("uplink", "fleet"):  # its CA file is not on this machine
        data[section].pop("tls")
    copy = tmp_path / "station.yaml"
    copy.write_text(yaml.safe_dump(data))
    monkeypatch.setenv(
        "SLIMSPECT_AGENT_TOKEN_FILE", "/run/credentials/slimspect-agent.service/station.token"
    )
    settings = load_settings(copy)
    assert settings.state_dir == Path("/var/lib/slimspect-agent")  # the unit's StateDirectory
    assert [c.type for c in settings.cameras] == ["device", "url", "folder"]
    unit = example.with_name("slimspect-agent.service").read_text()
    assert "StateDirectory=slimspect-agent" in unit and "Restart=on-failure" in unit
