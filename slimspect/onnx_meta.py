"""What a slimspect ONNX model says about itself: the ``metadata_props`` the exporter writes.

The exporter (``trainer.export``) stores everything a runtime needs besides the graph as
``slimspect.<key>`` entries of the model's ``metadata_props``, each value JSON-encoded:
class names, input size and channels, anchors, strides and output names. This module
reads them back. It lives in the shared core, not in the trainer, because the station
runtime needs it and a station carries onnxruntime, never torch: onnxruntime exposes the
same map as ``session.get_modelmeta().custom_metadata_map``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from slimspect.errors import OnnxMetadataError

META_PREFIX = "slimspect."
"""Prefix of every metadata key the exporter writes (``slimspect.class_names``, ...)."""


def parse_metadata_props(props: Mapping[str, Any]) -> dict[str, Any]:
    """Decode a ``metadata_props`` map: every value JSON-decoded where it parses.

    Works on ``{p.key: p.value for p in model.metadata_props}`` as well as on onnxruntime's
    ``session.get_modelmeta().custom_metadata_map``. Keys are kept as stored
    (``slimspect.class_names``, ...); values the exporter did not write and that are not
    JSON stay strings.
    """
    out: dict[str, Any] = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except (TypeError, ValueError):
            out[key] = value
    return out


@dataclass(frozen=True)
class DetectorMetadata:
    """The parts of a slimspect ONNX model's metadata that decoding its outputs needs.

    ``anchors`` are flat, ``(w, h)`` in input pixels, small to large (scale ``i`` uses
    ``anchors[A*i : A*(i+1)]``, the order :func:`slimspect.detection.decode` expects);
    ``outputs`` are the raw map names, in stride order.
    """

    class_names: tuple[str, ...]
    input_width: int
    input_height: int
    channels: int
    anchors: tuple[tuple[float, float], ...]
    strides: tuple[int, ...]
    outputs: tuple[str, ...]
    thresholds: Mapping[str, float]

    @classmethod
    def from_props(cls, props: Mapping[str, Any], *, source: str = "model") -> DetectorMetadata:
        """Reads a props map, raw (JSON strings, as onnxruntime gives it) or already decoded.

        Raises :class:`OnnxMetadataError` naming ``source`` when a key is missing or malformed.
        """
        meta = parse_metadata_props(props)  # decoded values pass through unchanged

        def get(key: str) -> Any:
            if META_PREFIX + key not in meta:
                raise OnnxMetadataError(
                    f"{source}: no {META_PREFIX}{key} metadata (not a slimspect export)"
                )
            return meta[META_PREFIX + key]

        try:
            inp = get("input")
            anchors = tuple((float(w), float(h)) for scale in get("anchors") for w, h in scale)
            result = cls(
                class_names=tuple(str(n) for n in get("class_names")),
                input_width=int(inp["width"]),
                input_height=int(inp["height"]),
                channels=int(inp["channels"]),
                anchors=anchors,
                strides=tuple(int(s) for s in get("strides")),
                outputs=tuple(str(o) for o in get("outputs")),
                thresholds=dict(meta.get(META_PREFIX + "thresholds") or {}),
            )
        except OnnxMetadataError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise OnnxMetadataError(
                f"{source}: malformed slimspect metadata ({type(exc).__name__}: {exc})"
            ) from None
        if len(result.outputs) != len(result.strides):
            raise OnnxMetadataError(
                f"{source}: {len(result.outputs)} outputs but {len(result.strides)} strides"
            )
        return result
