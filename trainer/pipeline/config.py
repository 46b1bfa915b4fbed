"""The pipeline's settings: one YAML file, validated once, passed in as typed objects.

    config = PipelineConfig.load("pipeline.yaml")   # PipelineConfigError: file:field: why

Every section has defaults that run on the synthetic data set (``data.path`` unset:
the data stage draws ``data.images`` synthetic images). A stage's record holds its
section (plus the shared ``train`` section for the training stages): rerunning a run id
with other settings for a finished stage is an error, never a silent overwrite. The
``ray`` section, ``train.device`` and ``sweep.cpus_per_trial`` / ``max_concurrent_trials``
are machine settings: they may change between a run and its rerun. The ``sweep`` stage is
optional (``sweep.enabled``, off by default).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from slimspect.manifest import check_name, check_version

__all__ = ["CPU_RECIPE", "RUN_ID_PATTERN", "PipelineConfig", "PipelineConfigError", "check_run_id"]

# a path component of the store layout and a manifest lineage slug at once
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class PipelineConfigError(ValueError):
    """A pipeline YAML that cannot be read or does not validate (the message says where)."""


def check_run_id(run_id: str) -> str:
    if not re.fullmatch(RUN_ID_PATTERN, run_id):
        raise PipelineConfigError(
            f"run id {run_id!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return run_id


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSection(_Section):
    """The data set: an existing one (``path``: its folder or data.yaml), else synthetic.

    The synthetic defects are drawn at 3x the contrast of ``slimspect data synth``'s
    NEU-DET-like default (``contrast``): the default pipeline's 30 epochs of yolov4-n
    learn those (on the faint default its baseline reached mAP50 0.003; BENCHMARKS.md
    "The pipeline on Ray"). ``contrast: 1`` gives the faint set of the benchmarks.
    """

    path: str | None = None
    images: int = Field(default=400, ge=4)
    size: int = Field(default=256, ge=32)
    seed: int = 0
    val_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    contrast: float = Field(
        default=3.0, gt=0.0, le=20.0, description="synthetic defects' contrast scale"
    )


# The short-budget recipe of BENCHMARKS.md ("CPU training recipe"): on tens of epochs from
# scratch, optimizer steps matter most (TrainConfig's YOLOv5 defaults, SGD with a nominal
# batch of 64, take 4-8x fewer and learned nothing in 30 epochs), AdamW beats SGD, and
# mosaic delays learning on these textures.
CPU_RECIPE: dict[str, Any] = {
    "optimizer": "AdamW",
    "accumulate": 1,
    "warmup_epochs": 1,
    "augment.mosaic.p": 0.0,
}


class TrainSection(_Section):
    """Shared by the baseline, sparse and distill trainings (a TrainConfig's fields).

    ``recipe`` (dotted TrainConfig keys; default :data:`CPU_RECIPE`) is applied first,
    then ``overrides``: a user changes one key in ``overrides`` and keeps the rest of the
    recipe, or sets ``recipe: {}`` for TrainConfig's own defaults."""

    model: str = "yolov4-n"
    imgsz: int = Field(default=256, ge=32)
    batch: int = Field(default=8, ge=1)
    seed: int = 0
    device: str = "cpu"
    recipe: dict[str, Any] = Field(
        default_factory=lambda: dict(CPU_RECIPE), description="TrainConfig fields, dotted keys"
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="more TrainConfig fields, dotted keys as --set"
    )


class BaselineSection(_Section):
    epochs: int = Field(default=30, ge=1)


class SparseSection(_Section):
    """Sparse training (:func:`trainer.compress.sparsity.sparse_train`). The defaults are
    the calibrated recipe of BENCHMARKS.md ("Sparse training that ranks channels"): ``s``
    chosen by the penalty probe (``auto``), the BatchNorm scales' learning rate x 8,
    ``local_decay`` sparing the top channels, plain (not proximal) subgradient steps."""

    epochs: int = Field(default=20, ge=1)
    s: float | Literal["auto"] = Field(
        default="auto", description="the L1 factor (>= 0), or auto: the penalty probe's"
    )
    bn_lr_scale: float = Field(default=8.0, gt=0.0, description="BN scales' lr multiplier")
    schedule: Literal["constant", "global_decay", "local_decay"] = "local_decay"
    proximal: bool = False

    @field_validator("s")
    @classmethod
    def _s(cls, s: float | str) -> float | str:
        if not isinstance(s, str) and s < 0:
            raise ValueError("the sparsity factor must be >= 0 (or auto)")
        return s


class PruneSection(_Section):
    percent: float | None = Field(default=50.0, ge=0.0, lt=100.0)
    max_map_drop: float | None = Field(default=None, ge=0.0, le=1.0)
    layers: int = Field(default=2, ge=0)
    round_to: int = Field(default=8, ge=1)
    min_keep_frac: float = Field(default=0.1, gt=0.0, le=1.0)
    keep_by: Literal["gamma", "scaled", "flops"] = Field(
        default="gamma", description="channel ranking (slimspect prune --keep-by)"
    )

    @model_validator(mode="after")
    def _one_rule(self) -> PruneSection:
        if self.percent is not None and self.max_map_drop is not None:
            raise ValueError("percent and max_map_drop exclude each other: set one to null")
        if self.percent is None and self.max_map_drop is None and not self.layers:
            raise ValueError("nothing to prune: give percent, max_map_drop or layers")
        return self


class SweepSection(_Section):
    """Ray Tune over the sparsity factor and the prune ratio (off by default); see
    :mod:`trainer.pipeline.sweep`. When on, its choice is the sparse stage's ``s`` and the
    prune stage's ``percent`` (``prune.percent`` / ``max_map_drop`` are then not used)."""

    enabled: bool = False
    s: list[float] = Field(default_factory=lambda: [1e-4, 1e-3, 1e-2], min_length=1)
    percent: list[float] = Field(default_factory=lambda: [30.0, 50.0, 70.0], min_length=1)
    epochs: int = Field(default=5, ge=1, description="sparse epochs per trial")
    finetune_epochs: int = Field(default=2, ge=0)
    max_map_drop: float = Field(default=0.05, ge=0.0, le=1.0)
    grace_period: int = Field(default=1, ge=1, description="ASHA: epochs before a stop")
    reduction_factor: float = Field(default=2.0, gt=1.0, description="ASHA")
    # machine settings (not part of the stage's record)
    cpus_per_trial: float = Field(default=1.0, gt=0.0)
    max_concurrent_trials: int | None = Field(default=None, ge=1)

    @field_validator("s")
    @classmethod
    def _s(cls, values: list[float]) -> list[float]:
        if any(v < 0 for v in values):
            raise ValueError("sparsity factors must be >= 0")
        return values

    @field_validator("percent")
    @classmethod
    def _percent(cls, values: list[float]) -> list[float]:
        if any(not 0 <= v < 100 for v in values):
            raise ValueError("prune ratios must be in [0, 100)")
        return values


class DistillSection(_Section):
    epochs: int = Field(default=20, ge=1)
    teacher: Literal["sparse", "baseline"] = "sparse"
    temperature: float = Field(default=2.0, gt=0.0)
    alpha: float = Field(default=0.5, ge=0.0)
    feat_weight: float = Field(default=0.0, ge=0.0)
    margin: float = 0.0


class ExportSection(_Section):
    int8: bool = True
    calibration_images: int = Field(default=64, ge=1)
    int8_max_map_drop: float = Field(default=0.01, ge=0.0, le=1.0)


class BenchSection(_Section):
    split: str = "val"
    threads: list[int] = Field(default_factory=lambda: [1, 2], min_length=1)
    repeats: int = Field(default=20, ge=1)
    warmup: int = Field(default=5, ge=0)

    @field_validator("threads")
    @classmethod
    def _positive(cls, threads: list[int]) -> list[int]:
        if any(t < 1 for t in threads):
            raise ValueError("thread counts must be >= 1")
        return threads


class CanarySection(_Section):
    """After publishing: a canary rollout of the new version, started through the HTTP API
    (``SLIMSPECT_API_URL``, an operator key in ``SLIMSPECT_API_KEY``; trainer/pipeline/
    canary.py). ``share`` of the fleet (a stable hash of the station id picks them) or
    named ``stations``; ``soak_s``: the rollout service's default when unset."""

    share: float | None = Field(default=None, gt=0.0, le=1.0)
    stations: list[str] | None = Field(default=None, min_length=1)
    soak_s: float | None = Field(default=None, ge=0.0)

    @model_validator(mode="after")
    def _one_target(self) -> CanarySection:
        if (self.share is None) == (self.stations is None):
            raise ValueError("publish.canary needs either share or stations (not both)")
        return self


class PublishSection(_Section):
    """The registry entry: ``name`` and ``version`` (default: the run id)."""

    enabled: bool = True
    name: str = "slimspect-yolo"
    version: str | None = None
    parent_version: str | None = None
    score: float | None = Field(
        default=None, gt=0.0, lt=1.0, description="manifest score threshold (default: model's)"
    )
    canary: CanarySection | None = Field(
        default=None, description="start a canary rollout once published (off when unset)"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return check_name(name)

    @field_validator("version", "parent_version")
    @classmethod
    def _version(cls, version: str | None) -> str | None:
        return None if version is None else check_version(version)


class RaySection(_Section):
    """Machine settings of the training stages (not part of any stage's record).

    ``augment_on``: where the training stages decode and augment their images: ``worker``
    (each training worker, in its own process) or ``ray_data`` (a Ray Data pipeline per
    training worker: ``data_workers`` tasks at once, each claiming ``cpus_per_data_worker``
    CPUs, anywhere in the cluster; see :mod:`trainer.pipeline.data_parallel`). The batches
    are the same either way, so it may change between a run and its rerun. ``worker`` is
    the default: on a small machine the training workers already hold every CPU, and
    moving augmentation into other processes only adds copies (measured in
    ``benchmarks/bench_pipeline_train.py``); ``ray_data`` pays off when the cluster has
    CPUs the training workers do not use.

    The default is one training worker with two torch threads: on a 2-core machine it
    trains 28 % faster than two single-threaded workers (whose gloo all-reduce of every
    gradient shares the same cores; BENCHMARKS.md "The pipeline on Ray"). On a cluster,
    raise ``num_workers`` (one per node or GPU) and ``torch_threads`` to the CPUs each has.
    """

    num_workers: int = Field(default=1, ge=1)
    cpus_per_worker: float = Field(default=1.0, gt=0.0)
    torch_threads: int = Field(default=2, ge=1)
    augment_on: Literal["worker", "ray_data"] = "worker"
    data_workers: int = Field(default=1, ge=1, description="ray_data: tasks per worker")
    cpus_per_data_worker: float = Field(
        default=1.0, ge=0.0, description="ray_data: CPUs a task claims (0: shares them)"
    )
    max_failures: int = Field(default=2, ge=0)
    worker_cache: str | None = Field(
        default=None, description="where workers keep files fetched from the store"
    )


class PipelineConfig(_Section):
    """The whole pipeline (see the module docstring)."""

    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    baseline: BaselineSection = BaselineSection()
    sweep: SweepSection = SweepSection()
    sparse: SparseSection = SparseSection()
    prune: PruneSection = PruneSection()
    distill: DistillSection = DistillSection()
    export: ExportSection = ExportSection()
    bench: BenchSection = BenchSection()
    publish: PublishSection = PublishSection()
    ray: RaySection = RaySection()

    @classmethod
    def load(cls, path: str | Path) -> PipelineConfig:
        """Read and validate a YAML file; :class:`PipelineConfigError` names what is wrong."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise PipelineConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise PipelineConfigError(f"{path}{where}: not valid YAML: {problem}") from None
        return cls.from_dict(data if data is not None else {}, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "pipeline config") -> PipelineConfig:
        if not isinstance(data, dict):
            raise PipelineConfigError(
                f"{source}: expected a mapping of sections, got {type(data).__name__}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
                for err in exc.errors()[:5]
            ]
            raise PipelineConfigError(f"{source}: {'; '.join(problems)}") from None

    def dump(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))
        return path
