"""The training configuration: one validated object, read from YAML and CLI overrides.

What a user of Ultralytics expects, with the same names where one exists::

    data: data/steel/data.yaml   # dataset YAML or folder (YOLO, COCO, VOC, NEU-DET)
    model: yolov4-s              # variant name | spec .yaml/.json | checkpoint .pt
    imgsz: 256
    epochs: 100
    batch: 16
    augment: {mosaic: {p: 0.5}, mixup: {p: 0.1}}

``TrainConfig.load("train.yaml", {"epochs": 30, "augment.mosaic.p": 0})`` merges the file
with overrides (dotted keys reach into nested sections; string values are parsed as YAML,
so ``"0.5"`` becomes a number) and validates once. ``args.yaml`` of a run is
``config.dump()``: the full, resolved config, loadable again with :meth:`TrainConfig.load`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainer.data.augment import AugmentConfig

__all__ = ["ConfigError", "LossConfig", "TrainConfig", "parse_overrides"]


class ConfigError(ValueError):
    """A configuration that cannot run: the message says which field and why, on one line."""


class LossConfig(BaseModel):
    """Loss gains and assignment (``trainer.loss.YoloLoss``).

    The gains are YOLOv5's ``hyp.scratch-low`` values *before* its scaling; with
    ``scale_gains`` (default) the engine scales them as YOLOv5's ``train.py`` does, for
    ``nl = 3`` output layers, ``nc`` classes and the image size::

        box *= 3 / nl
        cls *= nc / 80 * 3 / nl
        obj *= (imgsz / 640) ** 2 * 3 / nl

    (the objectness BCE is a mean over every cell, and a small image has fewer of them;
    the class BCE is a mean over classes).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    box: float = Field(0.05, ge=0.0)
    obj: float = Field(1.0, ge=0.0)
    cls: float = Field(0.5, ge=0.0)
    scale_gains: bool = True
    balance: tuple[float, float, float] = (4.0, 1.0, 0.4)
    anchor_t: float = Field(4.0, gt=1.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)

    def scaled(self, num_classes: int, imgsz: int, num_layers: int = 3) -> dict[str, float]:
        """The gains the loss gets: ``{"box_gain", "obj_gain", "cls_gain"}``."""
        if not self.scale_gains:
            return {"box_gain": self.box, "obj_gain": self.obj, "cls_gain": self.cls}
        layers = 3 / num_layers
        return {
            "box_gain": self.box * layers,
            "obj_gain": self.obj * (imgsz / 640) ** 2 * layers,
            "cls_gain": self.cls * num_classes / 80 * layers,
        }


class TrainConfig(BaseModel):
    """Everything a training run depends on; ``args.yaml`` of the run holds it resolved."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # what to train on, and what
    data: str = Field(description="dataset YAML or folder (YOLO, COCO, VOC, NEU-DET)")
    model: str = Field(
        "yolov4-s", description="variant name, spec .yaml/.json, or checkpoint .pt to start from"
    )
    imgsz: int = Field(256, ge=32, description="square network input side, multiple of 32")
    anchors: Literal["auto", "default", "spec"] = Field(
        "auto",
        description="auto: K-means++ on the training labels at imgsz, unless the model comes "
        "from a spec file or checkpoint (its anchors are kept); default: YOLOv4's anchors "
        "scaled from 608 px to imgsz; spec: the spec's anchors as written",
    )

    # how long, how much at once
    epochs: int = Field(100, ge=1)
    batch: int = Field(16, ge=1)
    nbs: int = Field(
        64,
        ge=1,
        description="nominal batch size (Ultralytics): gradients of "
        "round(nbs / batch) batches are summed before a step",
    )
    accumulate: int | Literal["auto"] = Field(
        "auto", description="batches per optimizer step; auto = max(round(nbs / batch), 1)"
    )

    # optimizer and schedule
    optimizer: Literal["SGD", "AdamW"] = "SGD"
    lr0: float = Field(
        0.01, gt=0.0, description="initial lr; default 0.01 for SGD, 0.001 for AdamW"
    )
    lrf: float = Field(0.01, gt=0.0, le=1.0, description="final lr = lr0 * lrf (cosine)")
    momentum: float = Field(0.937, ge=0.0, lt=1.0, description="SGD momentum / Adam beta1")
    weight_decay: float = Field(5e-4, ge=0.0, description="scaled by batch * accumulate / nbs")
    warmup_epochs: float = Field(3.0, ge=0.0)
    warmup_min_iters: int = Field(
        100, ge=0, description="warm-up lasts at least this many batches (Ultralytics: 100)"
    )
    warmup_momentum: float = Field(0.8, ge=0.0, lt=1.0)
    warmup_bias_lr: float = Field(0.1, ge=0.0)
    grad_clip: float | None = Field(10.0, gt=0.0, description="max gradient norm; null: off")

    # weights averaging, precision, determinism
    ema: bool = True
    ema_decay: float = Field(0.9999, gt=0.0, lt=1.0)
    ema_tau: float = Field(2000.0, gt=0.0, description="decay ramp: decay * (1 - exp(-n/tau))")
    amp: bool | Literal["auto"] = Field(
        "auto", description="mixed precision; auto: on CUDA only (CPU always trains in fp32)"
    )
    seed: int = Field(0, ge=0)
    deterministic: bool = True
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    workers: int | Literal["auto"] = Field(
        "auto",
        description="DataLoader worker processes; auto: 0 on CPU (workers take the cores "
        "torch trains on: 14.5 vs 13.2 images/s for yolov4-n on 2 cores), min(8, CPUs) on CUDA",
    )

    # data augmentation and loss
    augment: AugmentConfig = AugmentConfig()
    close_mosaic: int = Field(
        10,
        ge=0,
        description="train the last N epochs without mosaic and mixup (Ultralytics): the model "
        "ends on whole images as it will see them; 0: never",
    )
    loss: LossConfig = LossConfig()

    # validation, early stop
    val_every: int = Field(1, ge=1, description="validate every N epochs (and the last)")
    val_conf: float = Field(0.001, ge=0.0, lt=1.0)
    val_iou: float = Field(0.6, gt=0.0, le=1.0)
    patience: int | None = Field(
        None, ge=1, description="stop after N epochs without a better fitness; null: never"
    )
    conf: float = Field(
        0.25,
        ge=0.0,
        lt=1.0,
        description="deployment score threshold, stored in the checkpoints for predict and export",
    )
    iou: float = Field(0.45, gt=0.0, le=1.0, description="deployment NMS IoU threshold")

    # where the run goes
    project: str = "runs"
    name: str = "train"
    exist_ok: bool = False
    plots: bool = True
    verbose: bool = True

    @model_validator(mode="before")
    @classmethod
    def _default_lr0(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("lr0") is None:
            data = {**data, "lr0": 0.001 if data.get("optimizer") == "AdamW" else 0.01}
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.imgsz % 32:
            raise ValueError(f"imgsz must be a multiple of 32, got {self.imgsz}")
        if isinstance(self.workers, int) and self.workers < 0:
            raise ValueError(f"workers must be >= 0 or 'auto', got {self.workers}")
        if isinstance(self.accumulate, int) and self.accumulate < 1:
            raise ValueError(f"accumulate must be >= 1 or 'auto', got {self.accumulate}")
        return self

    # ---- derived values --------------------------------------------------------------

    @property
    def accumulate_steps(self) -> int:
        """Batches whose gradients are summed into one optimizer step (after warm-up)."""
        if self.accumulate == "auto":
            return max(round(self.nbs / self.batch), 1)
        return int(self.accumulate)

    def loader_workers(self, device_type: str) -> int:
        """DataLoader workers on a device of this type (``cpu``, ``cuda``)."""
        if self.workers != "auto":
            return int(self.workers)
        return 0 if device_type == "cpu" else min(8, os.cpu_count() or 1)

    @property
    def run_dir(self) -> Path:
        """``project/name`` before incrementing (see ``trainer.engine.increment_path``)."""
        return Path(self.project) / self.name

    # ---- files ------------------------------------------------------------------------

    @classmethod
    def load(
        cls, path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
    ) -> TrainConfig:
        """Read ``path`` (YAML, optional), apply ``overrides`` (dotted keys), validate.

        Raises:
            ConfigError: unreadable file, unknown key or invalid value (one line).
        """
        data: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file not found: {path}")
            try:
                loaded = yaml.safe_load(path.read_text())
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
            if loaded is not None and not isinstance(loaded, dict):
                raise ConfigError(f"{path}: expected a mapping of config keys")
            data = loaded or {}
        for key, value in (overrides or {}).items():
            set_dotted(data, key, value)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Validate a plain dict; errors become one-line :class:`ConfigError`."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigError(_one_line(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML values (tuples as lists): what ``args.yaml`` holds."""
        return self.model_dump(mode="json")

    def dump(self, path: str | Path) -> Path:
        """Write the resolved config as YAML (``args.yaml``)."""
        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None))
        return path

    def updated(self, **changes: Any) -> TrainConfig:
        """A validated copy with some top-level fields changed."""
        return self.from_dict({**self.to_dict(), **changes})


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["epochs=30", "augment.mosaic.p=0"]`` -> ``{"epochs": 30, "augment.mosaic.p": 0}``.

    Values are parsed as YAML (numbers, booleans, ``null``, lists); anything else stays a
    string.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        out[key.strip()] = value
    return out


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{where}: {msg}")
    return "invalid config: " + "; ".join(parts)
