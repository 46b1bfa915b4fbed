"""The skip / redo rule of the pipeline's stage records, and the data-parallel shards."""

from __future__ import annotations

import pytest

from trainer.pipeline.data_parallel import shard_indices
from trainer.pipeline.records import PipelineError, decide, done_record, started_record

SETTINGS = {"epochs": 3, "train": {"batch": 8, "overrides": {}}}
INPUTS = {"data": "id-data", "baseline": "id-base"}


def _done(**changes):
    record = done_record(
        "sparse", settings=SETTINGS, inputs=INPUTS, attempt="att1",
        outputs={"checkpoint": "sparse/weights/last.pt"}, started_at="2024-05-01T12:00:00+00:00",
        seconds=12.5, info={"map50_last": 0.5},
    )  # fmt: skip
    record.update(changes)
    return record


def _decide(**kw):
    args = {
        "done": None,
        "started": None,
        "settings": SETTINGS,
        "inputs": INPUTS,
        "earlier_ran": False,
        "outputs_exist": True,
    }
    args.update(kw)
    return decide("sparse", **args)


def test_done_record_fields():
    record = _done()
    assert record["stage"] == "sparse" and record["attempt"] == "att1"
    assert record["settings"] == SETTINGS and record["inputs"] == INPUTS
    assert record["seconds"] == 12.5 and record["map50_last"] == 0.5
    assert len(record["id"]) == 32 and record["finished_at"]
    assert _done()["id"] != record["id"]


def test_never_started_runs_fresh():
    d = _decide()
    assert d.run and d.reason == "not run yet" and d.attempt


def test_finished_same_settings_is_skipped_keeping_its_attempt():
    d = _decide(done=_done())
    assert not d.run and d.attempt == "att1"


def test_settings_are_compared_as_json():
    settings = {"epochs": 3, "train": {"batch": 8, "overrides": {}}, "threads": (1, 2)}
    done = done_record(
        "x", settings=settings, inputs={}, attempt="a", outputs={}, started_at="t", seconds=1.0
    )
    d = decide("x", done=done, started=None, settings=settings, inputs={}, earlier_ran=False)
    assert not d.run


def test_finished_with_other_settings_is_an_error_naming_the_change():
    with pytest.raises(PipelineError, match=r"train\.batch: 8 -> 16"):
        _decide(done=_done(), settings={**SETTINGS, "train": {"batch": 16, "overrides": {}}})


def test_an_earlier_stage_ran_so_this_one_runs_too():
    d = _decide(done=_done(), earlier_ran=True)
    assert d.run and d.reason == "an earlier stage ran" and d.attempt != "att1"


def test_other_upstream_or_missing_outputs_redo():
    assert _decide(done=_done(), inputs={**INPUTS, "baseline": "other"}).run
    d = _decide(done=_done(), outputs_exist=False)
    assert d.run and "missing" in d.reason


def test_started_not_finished_resumes_its_attempt():
    started = started_record(SETTINGS, INPUTS, "att7")
    d = _decide(started=started)
    assert d.run and d.attempt == "att7" and "resum" in d.reason


def test_started_with_other_settings_or_inputs_starts_over():
    started = started_record({**SETTINGS, "epochs": 5}, INPUTS, "att7")
    assert _decide(started=started).attempt != "att7"
    started = started_record(SETTINGS, {**INPUTS, "data": "other"}, "att7")
    assert _decide(started=started).attempt != "att7"
    started = started_record(SETTINGS, INPUTS, "att7")
    assert _decide(started=started, earlier_ran=True).attempt != "att7"


@pytest.mark.parametrize(("n", "world"), [(12, 2), (13, 2), (7, 3), (5, 1), (3, 4)])
def test_shards_are_equal_length_and_cover_every_index(n, world):
    shards = [shard_indices(n, rank, world, seed=0, epoch=1) for rank in range(world)]
    assert len({len(s) for s in shards}) == 1
    assert set().union(*shards) == set(range(n))
    if n % world == 0:
        assert sorted(i for s in shards for i in s) == list(range(n))  # disjoint


def test_shards_follow_seed_and_epoch():
    a = shard_indices(20, 0, 2, seed=0, epoch=0)
    assert a == shard_indices(20, 0, 2, seed=0, epoch=0)
    assert a != shard_indices(20, 0, 2, seed=0, epoch=1)
    assert a != shard_indices(20, 0, 2, seed=1, epoch=0)


def test_input_versions_name_the_records_the_workers_cache_apart():
    from types import SimpleNamespace

    from trainer.pipeline.stages import input_versions

    run = SimpleNamespace(
        records={"data": {"id": "d1"}, "sparse": {"id": "s1"}, "prune": {"id": "p1"}}
    )
    files = ["sparse/weights/last.pt", "prune/weights/pruned.pt"]
    assert input_versions(run, files) == {"data": "d1", "prune": "p1", "sparse": "s1"}
    assert input_versions(run, []) == {"data": "d1"}


def test_worker_nodes_in_rank_order(tmp_path):
    import json

    from trainer.pipeline.ray_train import WORKERS_FILE
    from trainer.pipeline.stages import worker_nodes

    assert worker_nodes(tmp_path) == []
    workers = [{"rank": 1, "node_id": "n2", "pid": 2}, {"rank": 0, "node_id": "n1", "pid": 1}]
    (tmp_path / WORKERS_FILE).write_text(json.dumps(workers))
    assert worker_nodes(tmp_path) == ["n1", "n2"]
