"""The training stages (baseline, sparse, distill) as Ray Train ``TorchTrainer`` runs.

The driver (:func:`fit_stage`) starts ``num_workers`` workers; each runs
:func:`train_loop`: it fetches its inputs from the run's folder in the store (the data
set, the checkpoints the stage starts from) into a node-local cache, then calls the one
training loop (:func:`trainer.engine.train`, or ``sparse_train`` / ``distill_train``
around it) as one replica of a data-parallel run
(:class:`trainer.pipeline.data_parallel.DataParallel`: its shard of every epoch, gradients
summed over the workers). Rank 0 writes ``workers.json`` into its run folder: the Ray node
id, host and pid of every rank, so a run shows where it trained. After every epoch rank 0
reports its run folder (``weights/last.pt``, ``best.pt``, ``results.csv``,
``workers.json``) as a Ray checkpoint, stored through a
pyarrow S3 filesystem under ``runs/<id>/<stage>/ray/``; with ``FailureConfig`` a lost
worker restarts the group, which resumes from the last checkpoint (``last.pt`` carries the
optimizer, EMA and schedule state, so the resumed run continues exactly).

With ``augment_on="ray_data"`` the workers do not augment in their own process: each
streams its batches from a Ray Data pipeline (``RayDataAugment`` of
:mod:`trainer.pipeline.data_parallel`: ``data_workers`` tasks of ``cpus_per_data_worker``
CPUs per training worker, anywhere in the cluster; a task fetches the data set from the
store into its node's cache, :class:`StoreDataSource`). The batches are the in-process
ones, so the choice changes where the CPU time goes, never what is trained.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.callbacks import Callback, TrainContext
from trainer.pipeline.data_parallel import DataParallel, RayDataAugment
from trainer.pipeline.run_store import RAY_FOLDER, RunStore

__all__ = [
    "AUGMENT_ON",
    "KINDS",
    "WORKERS_FILE",
    "StoreDataSource",
    "fetch_inputs",
    "fit_stage",
    "train_loop",
]

KINDS = ("baseline", "sparse", "distill")
AUGMENT_ON = ("worker", "ray_data")  # where a training stage's augmentation runs
WORKERS_FILE = "workers.json"  # in a training stage's folder: where each rank ran


class _Report(Callback):
    """Reports each epoch's metrics to Ray Train; rank 0 adds its run folder as checkpoint."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.run_dir: Path | None = None

    def on_train_start(self, ctx: TrainContext) -> None:
        self.run_dir = Path(ctx.run_dir)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.report({**metrics, "epoch": epoch})

    def on_train_end(self, ctx: TrainContext, result: Any) -> None:
        self.report(
            {
                "epoch": result.epochs_done,
                "final": 1,
                "workers": ctx.extra.get("world", 1),
                "images_per_worker": result.train_images,
                "train_seconds": result.train_seconds,
                "ray_data": int(ctx.extra.get("augment_on") == "ray_data"),
            }
        )

    def report(self, metrics: Mapping[str, Any]) -> None:
        report(metrics, self.run_dir if self.rank == 0 else None)


def report(metrics: Mapping[str, Any], run_dir: Path | None) -> None:
    import ray.train

    clean = {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and math.isfinite(float(v))
    }
    checkpoint = ray.train.Checkpoint.from_directory(str(run_dir)) if run_dir else None
    ray.train.report(clean, checkpoint=checkpoint)


def _epochs_done(last: Path) -> int:
    import torch

    payload = torch.load(last, map_location="cpu", weights_only=True)
    return int((payload.get("metadata") or {}).get("epoch", 0))


def fetch_inputs(
    runs: RunStore,
    cache: Path,
    data_rel: str,
    files: list[str],
    versions: Mapping[str, str] | None = None,
) -> tuple[Path, list[Path]]:
    """The data set and ``files`` (run-relative store paths) in the node-local ``cache``:
    ``(data entry, [file paths])``. ``versions`` maps a stage name (a path's first
    component) to the id of its record: each version gets its own folder, so a stage that
    was redone under the same run id is never answered from a stale copy."""
    versions = dict(versions or {})

    def folder(rel: str) -> Path:
        version = versions.get(rel.split("/")[0])
        return cache / f"v-{version[:16]}" if version else cache

    data_root = folder("data")
    runs.download_prefix("data", data_root / "data", skip=(RAY_FOLDER,))
    paths = []
    for rel in files:
        target = folder(rel) / rel
        if not target.is_file():
            runs.download_file(rel, target)
        paths.append(target)
    return data_root / data_rel, paths


@dataclass(frozen=True)
class StoreDataSource:
    """The run's data set in this node's cache (fetched from the store once per version):
    the ``data_source`` of a Ray Data augmentation task, which may run on any node. Its
    ``repr`` (the store's settings left out) names the data set's version."""

    store: str = field(repr=False)  # StoreSettings as JSON, secret included
    run_id: str
    cache: str
    data_rel: str
    versions: tuple[tuple[str, str], ...] = ()

    def __call__(self) -> Path:
        from slimspect.settings import StoreSettings

        runs = RunStore(StoreSettings(**json.loads(self.store)), self.run_id)
        data, _ = fetch_inputs(runs, Path(self.cache), self.data_rel, [], dict(self.versions))
        return data


def _record_workers(run_dir: Path, rank: int, world: int) -> None:
    """``workers.json`` (rank 0): node id, host and pid of every rank of this group."""
    import json
    import os
    import socket

    import ray
    import torch.distributed as dist

    me = {
        "rank": rank,
        "node_id": ray.get_runtime_context().get_node_id(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    everyone: list[Any] = [me]
    if world > 1 and dist.is_available() and dist.is_initialized():
        everyone = [None] * world
        dist.all_gather_object(everyone, me)
    if rank == 0:
        (run_dir / WORKERS_FILE).write_text(json.dumps(everyone, indent=2) + "\n")


def train_loop(cfg: dict[str, Any]) -> None:
    """One Ray Train worker of a training stage (``cfg``: see :func:`fit_stage`)."""
    import ray.train
    import torch

    from slimspect.settings import StoreSettings
    from trainer.config import TrainConfig

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(int(cfg["torch_threads"]))

    # ---- inputs from the store, into the node-local cache -----------------------------
    runs = RunStore(StoreSettings(**cfg["store"]), cfg["run_id"])
    cache = Path(cfg["cache"])
    data, paths = fetch_inputs(
        runs, cache, cfg["train_args"]["data"], cfg["files"], cfg.get("versions")
    )
    local = dict(zip(cfg["files"], paths, strict=True))
    args = {**cfg["train_args"], "data": str(data)}
    if rank != 0:
        args.update(verbose=False, plots=False)
    config = TrainConfig.from_dict(args)

    run_dir = cache / "workers" / f"{cfg['stage']}-{cfg['attempt']}-rank{rank}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restarted worker group: go on from the last epoch
        with checkpoint.as_directory() as saved:
            shutil.copytree(saved, run_dir, dirs_exist_ok=True)
        last = run_dir / "weights" / "last.pt"
        if _epochs_done(last) >= config.epochs:
            report({"epoch": config.epochs, "final": 1}, run_dir if rank == 0 else None)
            return
        resume = last
    _record_workers(run_dir, rank, world)

    ray_data = None
    if cfg.get("augment_on", "worker") == "ray_data":
        source = StoreDataSource(
            store=json.dumps(cfg["store"]),
            run_id=cfg["run_id"],
            cache=str(cache),
            data_rel=cfg["train_args"]["data"],
            versions=tuple(sorted((cfg.get("versions") or {}).items())),
        )
        ray_data = RayDataAugment(
            workers=int(cfg["data_workers"]),
            cpus=float(cfg["cpus_per_data_worker"]),
            data_source=source,
        )
    dp = DataParallel(rank, world, ray_data=ray_data)
    callbacks = [dp, _Report(rank)]
    common = {"callbacks": callbacks, "train_batches": dp.batches}
    if resume is None:
        common["run_dir"] = run_dir
    else:
        common["resume"] = resume
    options = dict(cfg["options"])
    kind = cfg["kind"]
    if kind == "baseline":
        from trainer.engine import train

        train(config, **common)
    elif kind == "sparse":
        from trainer.compress.sparsity import sparse_train

        if resume is None:
            options["weights"] = local[cfg["files"][0]]
        sparse_train(config, **options, **common)
    elif kind == "distill":
        from trainer.compress.distill import distill_train

        teacher = local[options.pop("teacher")]
        student = local[options.pop("student")]
        distill_train(config, teacher, None if resume else student, **options, **common)
    else:
        raise ValueError(f"unknown training stage {kind!r}; known: {', '.join(KINDS)}")


def _check_data_cpus(num_workers: int, cpus_per_worker: float, cpus_per_data: float) -> None:
    """A Ray Data augmentation task must find a CPU slot the training workers leave free:
    else the first batch never comes."""
    import ray

    if cpus_per_data <= 0:
        return
    total = float(ray.cluster_resources().get("CPU", 0.0))
    training = num_workers * cpus_per_worker
    if total - training < cpus_per_data:
        raise ValueError(
            f"augment_on ray_data: the cluster has {total:g} CPU(s), the {num_workers} "
            f"training worker(s) take {training:g}, and an augmentation task needs "
            f"{cpus_per_data:g} more: lower ray.cpus_per_worker or "
            "ray.cpus_per_data_worker (0 shares the CPUs), or add CPUs"
        )


def fit_stage(
    *,
    kind: str,
    stage: str,
    runs: RunStore,
    attempt: str,
    train_args: Mapping[str, Any],
    files: list[str],
    options: Mapping[str, Any],
    out_dir: Path,
    num_workers: int,
    cpus_per_worker: float,
    torch_threads: int,
    max_failures: int,
    cache: Path,
    versions: Mapping[str, str] | None = None,
    augment_on: str = "worker",
    data_workers: int = 1,
    cpus_per_data_worker: float = 1.0,
) -> dict[str, Any]:
    """Run a training stage on the Ray cluster ``ray.init`` connected to; its final run
    folder (rank 0's) is copied to ``out_dir``. Returns the last reported metrics.

    Args:
        kind: baseline, sparse or distill.
        attempt: the stage's attempt id: the Ray run is named ``<stage>-<attempt>``.
        train_args: the TrainConfig (its ``data`` is replaced by the worker's copy).
        files: run-relative store paths the workers fetch into ``cache`` (sparse: the
            starting checkpoint first; distill: ``options["teacher"/"student"]`` name them).
        options: keyword arguments of ``sparse_train`` / ``distill_train``.
        versions: ``stage -> record id`` of the stages ``files`` and the data come from
            (see :func:`fetch_inputs`).
        augment_on: ``worker`` (each training worker augments its shard in its own
            process) or ``ray_data`` (on Ray Data: ``data_workers`` tasks at once per
            training worker, each claiming ``cpus_per_data_worker`` CPUs). The batches are
            the same either way.
    Raises:
        ValueError: an unknown kind or ``augment_on``; ``ray_data`` on a cluster whose
            CPUs the training workers leave too few for one augmentation task (it would
            wait forever).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if kind not in KINDS:
        raise ValueError(f"unknown training stage {kind!r}; known: {', '.join(KINDS)}")
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"unknown augment_on {augment_on!r}; known: {', '.join(AUGMENT_ON)}")
    if augment_on == "ray_data":
        _check_data_cpus(num_workers, cpus_per_worker, cpus_per_data_worker)
    s = runs.settings
    store = s.model_dump(mode="json")
    store["secret_key"] = s.secret_key.get_secret_value() if s.secret_key else None
    filesystem, storage_path = runs.ray_storage(stage)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "kind": kind,
            "stage": stage,
            "attempt": attempt,
            "run_id": runs.run_id,
            "store": store,
            "cache": str(cache),
            "train_args": dict(train_args),
            "files": list(files),
            "versions": dict(versions or {}),
            "options": dict(options),
            "torch_threads": torch_threads,
            "augment_on": augment_on,
            "data_workers": int(data_workers),
            "cpus_per_data_worker": float(cpus_per_data_worker),
        },
        scaling_config=ScalingConfig(
            num_workers=num_workers, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=RunConfig(
            name=f"{stage}-{attempt}",
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"stage {stage}: the training run reported no checkpoint")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    with result.checkpoint.as_directory() as saved:
        shutil.copytree(saved, out_dir)
    return dict(result.metrics or {})
