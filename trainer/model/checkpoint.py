"""Checkpoints: spec + weights + metadata in one file, loadable with no other file.

Content (``torch.save``; plain containers and tensors only, so ``weights_only=True``
loads it)::

    {"format": "slimspect-ckpt", "version": 1,
     "spec": YoloSpec.to_dict(), "state_dict": {...}, "metadata": {...}}

A pruned model's checkpoint carries its pruned spec, so the old config can never be paired
with new weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .spec import YoloSpec
from .yolov4 import YOLOv4, build

FORMAT = "slimspect-ckpt"
VERSION = 1

_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


class WeightsMismatchError(ValueError):
    """Weights whose layer names or shapes differ from the model's spec."""


def save_checkpoint(
    path: str | Path, model: YOLOv4, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``model`` (its spec and weights) and ``metadata`` to ``path``.

    ``metadata`` must hold plain values (dict, list, tuple, str, int, float, bool, None,
    tensors): anything else would not load with ``weights_only=True``.
    """
    metadata = dict(metadata or {})
    _check_plain(metadata, "metadata")
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": model.spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": metadata,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[YOLOv4, dict[str, Any]]:
    """Rebuild the model from the embedded spec, load its weights; -> (model, metadata)."""
    payload = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    if payload.get("version") != VERSION:
        raise ValueError(
            f"{path}: {FORMAT} version {payload.get('version')!r}, "
            f"this code reads version {VERSION}"
        )
    spec = YoloSpec.from_dict(payload["spec"])
    with torch.device("meta"):
        model = build(spec)  # no init cost: every tensor comes from the file
    model = model.to_empty(device=map_location)
    load_weights(model, payload["state_dict"])
    return model, payload["metadata"]


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load ``state_dict`` into ``model``, strictly.

    Raises:
        WeightsMismatchError: naming the first tensor (in the model's order, then the
            checkpoint's extra keys) whose presence or shape differs.
    """
    own = model.state_dict()
    for key, t in own.items():
        if key not in state_dict:
            raise WeightsMismatchError(
                f"weights do not fit spec: {key} {_shape(t)} is in the spec but not in the "
                "checkpoint"
            )
        if tuple(state_dict[key].shape) != tuple(t.shape):
            raise WeightsMismatchError(
                f"weights do not fit spec: {key} has shape {_shape(state_dict[key])} in the "
                f"checkpoint, {_shape(t)} in the spec"
            )
    for key, t in state_dict.items():
        if key not in own:
            raise WeightsMismatchError(
                f"weights do not fit spec: {key} {_shape(t)} is in the checkpoint but not in "
                "the spec"
            )
    model.load_state_dict(state_dict, strict=True)


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _check_plain(obj: Any, path: str) -> None:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str | int):
                raise TypeError(f"{path}: key {k!r} must be a str or int")
            _check_plain(v, f"{path}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{path}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(
            f"{path} is a {type(obj).__name__}; checkpoint metadata takes only dicts, lists, "
            "str, int, float, bool, None and tensors"
        )
