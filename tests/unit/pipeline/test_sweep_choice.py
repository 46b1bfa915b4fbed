"""The sweep's choice (pure functions): the Pareto front over size and mAP50, the smallest
model within the mAP50 budget, the plot; and how the optional stage is wired in."""

from __future__ import annotations

import itertools
import random

import cv2
import pytest

from trainer.pipeline.config import PipelineConfig, PipelineConfigError
from trainer.pipeline.records import decide
from trainer.pipeline.stages import (
    STAGES,
    enabled_stages,
    stage_settings,
    stage_upstream,
)
from trainer.pipeline.sweep import choose, pareto_front, plot_pareto


def _t(name: str, params: int, map50: float, **kw) -> dict:
    return {"trial": name, "params": params, "map50": map50, "mib": params * 4 / 2**20,
            "s": 1e-3, "percent": 50.0, **kw}  # fmt: skip


TRIALS = [
    _t("big-good", 1000, 0.80),
    _t("mid-good", 600, 0.78),
    _t("mid-bad", 600, 0.60),  # dominated by mid-good
    _t("small-ok", 300, 0.74),
    _t("tiny-bad", 100, 0.40),
    _t("big-worse", 1100, 0.79),  # dominated by big-good
]


def test_pareto_front_keeps_the_non_dominated_in_size_order():
    front = [t["trial"] for t in pareto_front(TRIALS)]
    assert front == ["tiny-bad", "small-ok", "mid-good", "big-good"]


def test_pareto_front_keeps_equal_points_and_handles_empty():
    a, b = _t("a", 10, 0.5), _t("b", 10, 0.5)
    assert {t["trial"] for t in pareto_front([a, b])} == {"a", "b"}
    assert pareto_front([]) == []


def test_choose_smallest_within_the_budget():
    chosen, within = choose(TRIALS, baseline_map50=0.80, max_map_drop=0.05)
    assert within and chosen["trial"] == "mid-good"  # small-ok is 0.06 below
    chosen, within = choose(TRIALS, baseline_map50=0.80, max_map_drop=0.06)
    assert within and chosen["trial"] == "small-ok"  # exactly at the budget counts
    chosen, within = choose(TRIALS, baseline_map50=0.80, max_map_drop=0.5)
    assert within and chosen["trial"] == "tiny-bad"


def test_choose_tie_in_size_goes_to_the_better_map():
    chosen, _ = choose([_t("x", 50, 0.70), _t("y", 50, 0.75)], 0.75, 0.1)
    assert chosen["trial"] == "y"


def test_choose_none_within_budget_takes_the_best_and_says_so():
    chosen, within = choose(TRIALS, baseline_map50=0.95, max_map_drop=0.05)
    assert not within and chosen["trial"] == "big-good"
    assert choose([], 0.5, 0.1) == (None, False)


@pytest.mark.parametrize("seed", range(20))
def test_choice_is_on_the_front_and_the_smallest_within_budget(seed):
    rng = random.Random(seed)
    trials = [
        _t(f"t{i}", rng.randint(1, 30) * 100, round(rng.random(), 2))
        for i in range(rng.randint(1, 12))
    ]
    baseline, drop = rng.random(), rng.choice([0.0, 0.02, 0.1, 0.3])
    chosen, within = choose(trials, baseline, drop)
    front = pareto_front(trials)
    assert any(chosen is t for t in front)
    ok = [t for t in trials if t["map50"] >= baseline - drop - 1e-12]
    assert within == bool(ok)
    if ok:
        assert chosen in ok and chosen["params"] == min(t["params"] for t in ok)
    # the front: nothing dominates a member; every non-member is dominated
    for a, b in itertools.product(trials, trials):
        if (
            b["params"] <= a["params"]
            and b["map50"] >= a["map50"]
            and (b["params"] < a["params"] or b["map50"] > a["map50"])
        ):
            assert not any(a is f for f in front)


def test_plot_is_a_png(tmp_path):
    chosen, _ = choose(TRIALS, 0.80, 0.05)
    png = plot_pareto(
        TRIALS, tmp_path / "p" / "pareto.png", baseline_map50=0.80, max_map_drop=0.05,
        chosen=chosen, baseline_mib=1200 * 4 / 2**20,
    )  # fmt: skip
    image = cv2.imread(str(png))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100
    empty = plot_pareto([], tmp_path / "empty.png", baseline_map50=0.5, max_map_drop=0.1)
    assert cv2.imread(str(empty)) is not None


# ---- the optional stage in the pipeline ---------------------------------------------------


def test_sweep_is_off_by_default_and_then_no_stage_depends_on_it():
    config = PipelineConfig()
    assert not config.sweep.enabled
    assert "sweep" in STAGES and "sweep" not in enabled_stages(config)
    assert all("sweep" not in ups for ups in stage_upstream(config).values())


def test_sweep_on_feeds_sparse_and_prune():
    config = PipelineConfig.from_dict({"sweep": {"enabled": True}})
    assert enabled_stages(config) == STAGES
    upstream = stage_upstream(config)
    assert "sweep" in upstream["sparse"] and "sweep" in upstream["prune"]
    assert upstream["sweep"] == ("data", "baseline")


def test_sweep_machine_settings_are_not_its_record():
    a = PipelineConfig.from_dict({"sweep": {"enabled": True}})
    b = PipelineConfig.from_dict(
        {"sweep": {"enabled": True, "cpus_per_trial": 2, "max_concurrent_trials": 1}}
    )
    assert stage_settings(a)["sweep"] == stage_settings(b)["sweep"]
    c = PipelineConfig.from_dict({"sweep": {"enabled": True}, "prune": {"layers": 0}})
    assert stage_settings(a)["sweep"] != stage_settings(c)["sweep"]  # trials prune layers too


def test_switching_the_sweep_on_redoes_the_stages_that_take_its_choice():
    """A sparse stage finished without the sweep was built from other inputs."""
    from trainer.pipeline.records import done_record

    off = PipelineConfig()
    on = PipelineConfig.from_dict({"sweep": {"enabled": True}})
    inputs_off = {u: f"id-{u}" for u in stage_upstream(off)["sparse"]}
    done = done_record(
        "sparse", settings=stage_settings(off)["sparse"], inputs=inputs_off, attempt="a",
        outputs={}, started_at="t", seconds=1.0,
    )  # fmt: skip
    inputs_on = {u: f"id-{u}" for u in stage_upstream(on)["sparse"]}
    d = decide(
        "sparse", done=done, started=None, settings=stage_settings(on)["sparse"],
        inputs=inputs_on, earlier_ran=False,
    )  # fmt: skip
    assert d.run and "other upstream" in d.reason


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"s": []}, "at least 1 item"),
        ({"s": [-1.0]}, "sparsity factors must be >= 0"),
        ({"percent": [100]}, "prune ratios must be in [0, 100)"),
        ({"reduction_factor": 1}, "greater than 1"),
    ],
)
def test_bad_sweep_sections(section, message):
    with pytest.raises(PipelineConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        PipelineConfig.from_dict({"sweep": section})
