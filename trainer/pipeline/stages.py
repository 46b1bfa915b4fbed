"""The pipeline's stages: what each one runs, reads and writes.

Every stage is ``fn(run, stage_dir, attempt) -> (outputs, info)``: it writes into
``stage_dir`` (``<workdir>/<stage>``), returns its outputs as paths relative to the
workdir and what it found (both go to its ``done.json``). The stage functions of
``slimspect compress`` (:mod:`trainer.compress.chain`: prune, export, bench) are called
as they are; the training stages run on Ray Train (:mod:`trainer.pipeline.ray_train`).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.compress.chain import (
    StageContext,
    bench_stage,
    export_stage,
    prune_stage,
    resolve_eval_split,
)
from trainer.pipeline.config import PipelineConfig
from trainer.pipeline.records import PipelineError
from trainer.pipeline.run_store import RunStore

__all__ = [
    "OPTIONAL",
    "RUNNERS",
    "STAGES",
    "UPSTREAM",
    "PipelineRun",
    "dataset_hash",
    "enabled_stages",
    "stage_settings",
    "stage_upstream",
]

STAGES = (
    "data", "baseline", "sweep", "sparse", "prune", "distill", "export", "bench", "publish",
)  # fmt: skip
UPSTREAM: dict[str, tuple[str, ...]] = {
    "data": (),
    "baseline": ("data",),
    "sweep": ("data", "baseline"),
    "sparse": ("data", "baseline", "sweep"),
    "prune": ("data", "sparse", "sweep"),
    "distill": ("data", "baseline", "sparse", "prune"),
    "export": ("data", "distill"),
    "bench": ("data", "baseline", "sparse", "prune", "distill", "export"),
    "publish": ("data", "export", "bench"),
}
_MACHINE = ("device",)  # TrainSection fields that are not part of a stage's record
_SWEEP_MACHINE = ("enabled", "cpus_per_trial", "max_concurrent_trials")
OPTIONAL = ("sweep",)  # stages a config may switch off: then they neither run nor count


def enabled_stages(config: PipelineConfig) -> tuple[str, ...]:
    """The stages this config runs, in order (an optional stage switched off is left out)."""
    return tuple(s for s in STAGES if s not in OPTIONAL or getattr(config, s).enabled)


def stage_upstream(config: PipelineConfig) -> dict[str, tuple[str, ...]]:
    """:data:`UPSTREAM` without the stages switched off: a stage's record names the
    upstream records it was built from, so switching the sweep on or off redoes the
    stages that take its choice."""
    on = set(enabled_stages(config))
    return {name: tuple(u for u in ups if u in on) for name, ups in UPSTREAM.items()}


@dataclass
class PipelineRun:
    """What the stages share: the config, the run's store folder, the local workdir
    (a mirror of it), the workers' cache and the finished stages' records."""

    config: PipelineConfig
    runs: RunStore
    workdir: Path
    cache: Path
    console: Any
    store_settings: Any = None
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.runs.run_id

    @property
    def ctx(self) -> StageContext:
        """The view ``trainer.compress.chain``'s stage functions take."""
        return StageContext(out=self.workdir, console=self.console, records=self.records)

    def path(self, stage: str, key: str) -> Path:
        return self.workdir / self.records[stage]["outputs"][key]

    def rel(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.workdir.resolve()).as_posix()

    @property
    def data(self) -> str:
        return str(self.path("data", "data"))

    @property
    def eval_split(self) -> str:
        return resolve_eval_split(self.data, self.config.bench.split)


def stage_settings(config: PipelineConfig) -> dict[str, dict[str, Any]]:
    """What each stage's record holds as its settings (machine settings left out)."""
    train = config.train.model_dump(mode="json", exclude=set(_MACHINE))
    return {
        "data": config.data.model_dump(mode="json"),
        "baseline": {"train": train, **config.baseline.model_dump(mode="json")},
        "sweep": {
            "train": train,
            **config.sweep.model_dump(mode="json", exclude=set(_SWEEP_MACHINE)),
            # what a trial shares with the sparse and prune stages
            "sparse": {
                "schedule": config.sparse.schedule,
                "proximal": config.sparse.proximal,
                "bn_lr_scale": config.sparse.bn_lr_scale,
            },
            "prune": {
                "layers": config.prune.layers,
                "round_to": config.prune.round_to,
                "min_keep_frac": config.prune.min_keep_frac,
                "keep_by": config.prune.keep_by,
            },
        },
        "sparse": {"train": train, **config.sparse.model_dump(mode="json")},
        "prune": config.prune.model_dump(mode="json"),
        "distill": {"train": train, **config.distill.model_dump(mode="json")},
        "export": {
            **config.export.model_dump(mode="json"),
            "split": config.bench.split,
            "threads": config.bench.threads,
            "repeats": config.bench.repeats,
            "warmup": config.bench.warmup,
        },
        "bench": config.bench.model_dump(mode="json"),
        "publish": config.publish.model_dump(mode="json"),
    }


def dataset_hash(root: Path) -> str:
    """``sha256:<hex>`` over every file's relative path and bytes, in path order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------


def run_data(run: PipelineRun, stage_dir: Path, attempt: str):
    """The data set, in the run: a copy of ``data.path``, or a synthetic one. Its data.yaml
    gets ``path: .`` so the folder works wherever a worker fetches it to."""
    from trainer.data.formats import read_dataset
    from trainer.data.synth import synthesize

    d = run.config.data
    if d.path:
        source = Path(d.path).expanduser()
        if not source.exists():
            raise PipelineError(f"data.path not found: {source}")
        root = source.parent if source.is_file() else source
        shutil.copytree(root, stage_dir, dirs_exist_ok=True)
        entry = stage_dir / source.name if source.is_file() else stage_dir
    else:
        contrast = "" if d.contrast == 1 else f", defect contrast x{d.contrast:g}"
        run.console.print(
            f"  synthesizing {d.images} images of {d.size} px (seed {d.seed}{contrast})"
        )
        synthesize(
            stage_dir, images=d.images, size=d.size, seed=d.seed,
            val_fraction=d.val_fraction, contrast=d.contrast,
        )  # fmt: skip
        entry = stage_dir / "data.yaml"
    yaml_file = entry if entry.suffix in (".yaml", ".yml") else stage_dir / "data.yaml"
    if yaml_file.is_file():
        spec = yaml.safe_load(yaml_file.read_text()) or {}
        spec["path"] = "."
        yaml_file.write_text(yaml.safe_dump(spec, sort_keys=False))
        entry = yaml_file
    ds = read_dataset(entry)
    counts = {split: len(samples) for split, samples in ds.splits.items()}
    run.console.print(f"  {', '.join(f'{n} {s}' for s, n in counts.items())} images")
    return {"data": run.rel(entry)}, {
        "dataset_hash": dataset_hash(stage_dir),
        "images": counts,
        "class_names": list(ds.names),
    }


# --------------------------------------------------------------------------------------
# training stages (Ray Train)
# --------------------------------------------------------------------------------------


def _train_args(run: PipelineRun, epochs: int) -> dict[str, Any]:
    from trainer.config import ConfigError, TrainConfig, set_dotted

    t = run.config.train
    args: dict[str, Any] = {
        "data": run.data,
        "model": t.model,
        "imgsz": t.imgsz,
        "batch": t.batch,
        "epochs": epochs,
        "seed": t.seed,
        "device": t.device,
        "workers": 0,
        "patience": None,  # early stopping on a falling mAP would end sparse training
        "verbose": True,
    }
    for key, value in {**t.recipe, **t.overrides}.items():
        set_dotted(args, key, value)
    try:
        return TrainConfig.from_dict(args).to_dict()
    except (ConfigError, ValueError) as exc:
        raise PipelineError(f"train settings: {exc}") from None


def input_versions(run: PipelineRun, files) -> dict[str, str]:
    """``stage -> record id`` of the data stage and of the stages ``files`` come from: the
    workers cache each version apart (:func:`trainer.pipeline.ray_train.fetch_inputs`)."""
    stages = {"data", *(Path(rel).parts[0] for rel in files)}
    return {s: str(run.records[s]["id"]) for s in sorted(stages) if run.records[s].get("id")}


def worker_nodes(stage_dir: Path) -> list[str]:
    """The Ray node id of each rank (rank order) from the stage's ``workers.json``."""
    import json

    from trainer.pipeline.ray_train import WORKERS_FILE

    path = stage_dir / WORKERS_FILE
    if not path.is_file():
        return []
    workers = sorted(json.loads(path.read_text()), key=lambda w: w["rank"])
    return [str(w["node_id"]) for w in workers]


def _fit(run: PipelineRun, kind: str, stage_dir: Path, attempt: str, epochs: int, files, options):
    from trainer.pipeline.ray_train import fit_stage

    r = run.config.ray
    data_rel = run.records["data"]["outputs"]["data"]
    args = _train_args(run, epochs)
    metrics = fit_stage(
        kind=kind,
        stage=stage_dir.name,
        runs=run.runs,
        attempt=attempt,
        train_args={**args, "data": data_rel},
        files=files,
        options=options,
        out_dir=stage_dir,
        num_workers=r.num_workers,
        cpus_per_worker=r.cpus_per_worker,
        torch_threads=r.torch_threads,
        max_failures=r.max_failures,
        cache=run.cache,
        versions=input_versions(run, files),
        augment_on=r.augment_on,
        data_workers=r.data_workers,
        cpus_per_data_worker=r.cpus_per_data_worker,
    )
    nodes = worker_nodes(stage_dir)
    # where the workers say they augmented (a group restarted after the last epoch: the config)
    augment_on = r.augment_on
    if "ray_data" in metrics:
        augment_on = "ray_data" if metrics["ray_data"] else "worker"
    where = "in the workers" if augment_on == "worker" else "on Ray Data"
    run.console.print(
        f"  {r.num_workers} worker(s) on {len(set(nodes))} node(s), augmenting {where}, "
        f"{int(metrics.get('epoch', epochs))} epoch(s); run folder {stage_dir}"
    )
    info = {k: metrics[k] for k in ("workers", "images_per_worker") if k in metrics}
    return {**info, "worker_nodes": nodes, "augment_on": augment_on}


def _map(stage_dir: Path) -> dict[str, float | None]:
    import csv

    rows = list(csv.DictReader((stage_dir / "results.csv").open()))
    values = [
        float(r["metrics/mAP50(B)"]) for r in rows if r.get("metrics/mAP50(B)") not in ("", "nan")
    ]
    return {"map50_last": values[-1] if values else None}


def run_baseline(run: PipelineRun, stage_dir: Path, attempt: str):
    ray = _fit(run, "baseline", stage_dir, attempt, run.config.baseline.epochs, [], {})
    outputs = {"checkpoint": run.rel(stage_dir / "weights" / "best.pt")}
    outputs["last"] = run.rel(stage_dir / "weights" / "last.pt")
    return outputs, {**_map(stage_dir), **ray}


def _swept(run: PipelineRun, key: str) -> float | None:
    """The sweep's choice of ``key`` (``s`` or ``percent``) when the sweep is on."""
    if not run.config.sweep.enabled:
        return None
    return float(run.records["sweep"][key])


def run_sweep(run: PipelineRun, stage_dir: Path, attempt: str):
    from trainer.pipeline.sweep import run_sweep as sweep

    return sweep(run, stage_dir, attempt)


def run_sparse(run: PipelineRun, stage_dir: Path, attempt: str):
    c = run.config.sparse
    start = run.records["baseline"]["outputs"]["checkpoint"]
    s = _swept(run, "s")
    if s is not None:
        run.console.print(f"  s = {s:g}, chosen by the sweep")
    options = {
        "s": c.s if s is None else s,
        "schedule": c.schedule,
        "proximal": c.proximal,
        "bn_lr_scale": c.bn_lr_scale,
    }
    ray = _fit(run, "sparse", stage_dir, attempt, c.epochs, [start], options)
    info = {
        **_map(stage_dir),
        **ray,
        "s": options["s"],
        "s_from": "config" if s is None else "sweep",
    }
    penalty = stage_dir / "penalty.json"  # the probe's report: the s "auto" chose
    if options["s"] == "auto" and penalty.is_file():
        import json

        info["s_auto"] = json.loads(penalty.read_text()).get("s")
    return {"checkpoint": run.rel(stage_dir / "weights" / "last.pt")}, info


def run_prune(run: PipelineRun, stage_dir: Path, attempt: str):
    p = run.config.prune
    percent, max_map_drop = p.percent, p.max_map_drop
    swept = _swept(run, "percent")
    if swept is not None:
        percent, max_map_drop = swept, None
        run.console.print(f"  percent = {percent:g}, chosen by the sweep")
    return prune_stage(
        run.ctx, stage_dir, run.path("sparse", "checkpoint"), run.data, run.eval_split,
        percent=percent, max_map_drop=max_map_drop, layers=p.layers,
        round_to=p.round_to, min_keep_frac=p.min_keep_frac, keep_by=p.keep_by,
    )  # fmt: skip


def run_distill(run: PipelineRun, stage_dir: Path, attempt: str):
    c = run.config.distill
    teacher = run.records[c.teacher]["outputs"]["checkpoint"]
    student = run.records["prune"]["outputs"]["checkpoint"]
    options = {
        "teacher": teacher,
        "student": student,
        "temperature": c.temperature,
        "alpha_obj": c.alpha,
        "alpha_cls": c.alpha,
        "alpha_box": c.alpha,
        "feat_weight": c.feat_weight,
        "margin": c.margin,
    }
    ray = _fit(run, "distill", stage_dir, attempt, c.epochs, [teacher, student], options)
    outputs = {
        "checkpoint": run.rel(stage_dir / "weights" / "best.pt"),
        "last": run.rel(stage_dir / "weights" / "last.pt"),
    }
    return outputs, {"teacher": teacher, **_map(stage_dir), **ray}


# --------------------------------------------------------------------------------------
# export, bench (the compress chain's own stage functions), publish
# --------------------------------------------------------------------------------------


def run_export(run: PipelineRun, stage_dir: Path, attempt: str):
    e, b = run.config.export, run.config.bench
    return export_stage(
        run.ctx, stage_dir, run.path("distill", "checkpoint"), run.data, run.eval_split,
        int8=e.int8, calibration_images=e.calibration_images,
        int8_max_map_drop=e.int8_max_map_drop, threads=b.threads, repeats=b.repeats,
        warmup=b.warmup,
    )  # fmt: skip


def run_bench(run: PipelineRun, stage_dir: Path, attempt: str):
    b = run.config.bench
    split = run.eval_split
    baseline = run.path("baseline", "checkpoint")
    outputs, info = bench_stage(
        run.ctx, stage_dir, baseline, run.data, split,
        threads=b.threads, repeats=b.repeats, warmup=b.warmup,
        extra={"run_id": run.run_id, "data": run.data, "split": split},
    )  # fmt: skip
    # the chain writes its table beside the stage folders: keep the run's inside bench/
    moved = {}
    for key, rel in outputs.items():
        target = stage_dir / Path(rel).name
        shutil.move(run.workdir / rel, target)
        moved[key] = run.rel(target)
    return moved, info


def run_publish(run: PipelineRun, stage_dir: Path, attempt: str):
    from trainer.pipeline.publish import publish_model

    return publish_model(run, stage_dir)


RUNNERS: dict[str, Callable[[PipelineRun, Path, str], tuple[dict[str, str], dict[str, Any]]]] = {
    "data": run_data,
    "baseline": run_baseline,
    "sweep": run_sweep,
    "sparse": run_sparse,
    "prune": run_prune,
    "distill": run_distill,
    "export": run_export,
    "bench": run_bench,
    "publish": run_publish,
}
