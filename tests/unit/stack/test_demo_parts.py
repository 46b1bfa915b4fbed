"""The demo's parts that need no stack: its pipeline settings and the stack's env.sh."""

from __future__ import annotations

import yaml

from slimspect.demo.api_watch import DemoTimeout, wait_until
from slimspect.demo.pipelines import pipeline_config, pipeline_yaml
from slimspect.embedded.stack_env import read_env_file
from trainer.pipeline.config import PipelineConfig


def test_both_demo_pipelines_are_valid_pipeline_configs_that_publish_the_named_version():
    for quick in (True, False):
        data = yaml.safe_load(
            pipeline_yaml(
                pipeline_config(quick=quick, model_name="m-demo", version="v-1"), quick=quick
            )
        )
        config = PipelineConfig.from_dict(data)
        assert (config.publish.name, config.publish.version) == ("m-demo", "v-1")
        assert config.publish.enabled and not config.sweep.enabled
    quick = PipelineConfig.from_dict(pipeline_config(quick=True, model_name="m", version="v"))
    full = PipelineConfig.from_dict(pipeline_config(quick=False, model_name="m", version="v"))
    assert quick.baseline.epochs < full.baseline.epochs and quick.data.images < full.data.images


def test_env_file_round_trips_what_a_shell_would_export(tmp_path):
    env = tmp_path / "env.sh"
    env.write_text("# written by slimspect up\nexport A='http://127.0.0.1:1/'\nexport B='x=y'\n")
    assert read_env_file(env) == {"A": "http://127.0.0.1:1/", "B": "x=y"}


def test_wait_until_returns_the_first_truthy_value_and_names_what_timed_out():
    calls = iter([None, 0, {"state": "promoted"}])
    assert wait_until(lambda: next(calls), timeout_s=5, what="x", interval_s=0) == {
        "state": "promoted"
    }
    try:
        wait_until(lambda: None, timeout_s=0, what="the canary", describe=lambda: "v1",
                   interval_s=0)  # fmt: skip
    except DemoTimeout as exc:
        assert "the canary" in str(exc) and "v1" in str(exc)
    else:
        raise AssertionError("no timeout")
