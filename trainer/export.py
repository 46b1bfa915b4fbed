"""Export a YOLOv4-family model to ONNX, check it, and prove it detects what torch detects.

The graph
---------
One input ``images``: float32 ``(N, C, H, W)`` in [0, 1] (what
:func:`slimspect.detection.preprocess` produces; N is dynamic unless
``dynamic_batch=False``, H and W are the spec's input size). Three outputs ``p3``,
``p4``, ``p5``: the raw head maps of strides 8, 16, 32, ``(N, A*(5+C), H/s, W/s)``,
exactly the torch model's output contract (:mod:`trainer.model.yolov4`). Decoding and
NMS stay OUT of the graph: they are :func:`slimspect.detection.postprocess`, the one
post-processing shared by evaluation and the edge runtime, so the ONNX model and the
torch model agree on detections by construction and :func:`check_parity` verifies it.

The exporter is torch's TorchScript one (``dynamo=False``; onnxscript is not a
dependency). In eval mode it folds every BatchNorm into its conv, so the file holds
fewer tensors than the state dict. The graph is then checked (``onnx.checker``) and
simplified with onnxslim; a failed simplification falls back to the plain export with a
warning.

Mish (the backbone's activation) is written as ``x * (1 - q) / (1 + q)`` with
``q = sigmoid(-x)**2`` (:class:`MishSigmoidForm`, exact to 1e-6) unless
``fast_mish=False``: the exporter's own Softplus/Tanh/Mul form spends most of ONNX
Runtime's CPU time in the Softplus kernel (68 % of yolov4-n at 256 px), and the sigmoid
form makes the whole network about 3x faster.

Metadata
--------
``metadata_props`` (string key -> string value; an ONNX Runtime session exposes the
same map as ``session.get_modelmeta().custom_metadata_map``) carry everything a runtime
needs besides the graph, each value JSON-encoded:

==========================  ==========================================================
``slimspect.spec``          the full (possibly pruned) spec, ``YoloSpec.to_dict()``
``slimspect.class_names``   list of C names
``slimspect.input``         ``{"width", "height", "channels", "layout": "NCHW",
                            "range": [0, 1], "letterbox": true, "pad_value": 114}``
``slimspect.anchors``       per scale (stride 8, 16, 32) lists of ``[w, h]`` input pixels
``slimspect.strides``       ``[8, 16, 32]``
``slimspect.outputs``       ``["p3", "p4", "p5"]``
``slimspect.export``        exporter, torch version, opset, Mish form
``slimspect.<key>``         every entry of the caller's ``metadata``
==========================  ==========================================================

:func:`slimspect.onnx_meta.parse_metadata_props` decodes such a map (from onnx or from
onnxruntime; it lives in the shared core because the station runtime reads it without
torch); :func:`read_onnx_metadata` reads it from a file.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from torch import nn

from slimspect.detection import DEFAULT_PAD_VALUE, LetterboxInfo, postprocess, preprocess
from slimspect.onnx_meta import META_PREFIX, parse_metadata_props  # home: the shared core

INPUT_NAME = "images"
OUTPUT_NAMES = ("p3", "p4", "p5")
DEFAULT_OPSET = 17
RESERVED_KEYS = ("spec", "class_names", "input", "anchors", "strides", "outputs", "export")
"""Metadata keys (after ``slimspect.``) the exporter writes itself."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class ExportError(RuntimeError):
    """The model could not be exported, or the exported graph is invalid."""


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (ints, or strings for symbolic dims) and element type of a graph I/O."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def __str__(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.name} {self.dtype}[{dims}]"


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote."""

    path: Path
    opset: int
    size_bytes: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    simplified: bool
    simplify_error: str | None  # why onnxslim was skipped/failed, None when it ran
    nodes_before: int  # graph nodes as exported
    nodes_after: int  # after simplification (== nodes_before when not simplified)
    dynamic_batch: bool
    fast_mish: bool
    seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)  # decoded metadata_props

    @property
    def size_mib(self) -> float:
        return self.size_bytes / 2**20


@dataclass(frozen=True)
class ParityReport:
    """Torch vs ONNX Runtime on the same inputs (see :func:`check_parity`)."""

    num_images: int
    max_abs_diff: float  # over all raw maps and images
    max_abs_diff_per_output: dict[str, float]
    max_abs_output: float  # largest |value| in the torch maps, for scale
    torch_detections: tuple[int, ...]  # count per image
    onnx_detections: tuple[int, ...]
    classes_equal: bool  # same count and class ids, in the same order, on every image
    max_box_diff: float  # px, source image; 0.0 when no detections; inf on count mismatch
    max_score_diff: float
    box_tolerance: float
    raw_tolerance: float

    @property
    def detections_equal(self) -> bool:
        return self.classes_equal and self.max_box_diff <= self.box_tolerance

    @property
    def ok(self) -> bool:
        return self.detections_equal and self.max_abs_diff <= self.raw_tolerance

    def summary(self) -> str:
        n = sum(self.torch_detections)
        return (
            f"{self.num_images} image(s): raw max |diff| {self.max_abs_diff:.2e} "
            f"(outputs up to {self.max_abs_output:.3g}); detections torch {n} / onnx "
            f"{sum(self.onnx_detections)}, classes {'equal' if self.classes_equal else 'DIFFER'}"
            f", max box diff {self.max_box_diff:.2e} px, max score diff "
            f"{self.max_score_diff:.2e} -> {'OK' if self.ok else 'FAILED'}"
        )


# --------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------


def _meta_key(key: str) -> str:
    return key if key.startswith(META_PREFIX) else META_PREFIX + key


def build_metadata(spec, metadata: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The ``metadata_props`` map (JSON-encoded values) for a model of ``spec``.

    Class names come from the spec, else from ``metadata["class_names"]``, else
    ``class0..class{C-1}``. Other keys of ``metadata`` are stored as ``slimspect.<key>``;
    they may not override the spec-derived ones (ValueError).
    """
    extra = dict(metadata or {})
    names = extra.pop("class_names", None)
    if names is None:
        names = extra.pop(META_PREFIX + "class_names", None)
    if spec.class_names is not None:
        if names is not None and list(names) != list(spec.class_names):
            raise ValueError(
                f"metadata class_names {list(names)} differ from the spec's "
                f"{list(spec.class_names)}"
            )
        names = list(spec.class_names)
    elif names is not None:
        names = [str(n) for n in names]
        if len(names) != spec.num_classes:
            raise ValueError(
                f"metadata lists {len(names)} class names for a {spec.num_classes}-class model"
            )
    else:
        names = [f"class{i}" for i in range(spec.num_classes)]
    props: dict[str, Any] = {
        "spec": spec.to_dict(),
        "class_names": names,
        "input": {
            "width": spec.input_size,
            "height": spec.input_size,
            "channels": spec.in_channels,
            "layout": "NCHW",
            "range": [0, 1],
            "letterbox": True,
            "pad_value": DEFAULT_PAD_VALUE,
        },
        "anchors": [[list(a) for a in scale] for scale in spec.anchors],
        "strides": list(spec.strides),
        "outputs": list(OUTPUT_NAMES),
    }
    out = {_meta_key(k): json.dumps(v) for k, v in props.items()}
    for key, value in extra.items():
        full = _meta_key(str(key))
        if full.removeprefix(META_PREFIX) in RESERVED_KEYS:
            raise ValueError(f"metadata key {key!r} is written by the exporter itself")
        try:
            out[full] = json.dumps(value)
        except TypeError as e:
            raise ValueError(f"metadata[{key!r}] is not JSON-serialisable: {e}") from None
    return out


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The decoded ``metadata_props`` of an ONNX file (weights are not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return parse_metadata_props({p.key: p.value for p in model.metadata_props})


# --------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------


def _tensor_infos(values) -> tuple[TensorInfo, ...]:
    import onnx

    infos = []
    for v in values:
        t = v.type.tensor_type
        shape = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim
        )
        infos.append(
            TensorInfo(v.name, shape, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name)
        )
    return tuple(infos)


class _RawMaps(nn.Module):
    """The detector with a forward that returns exactly the 3 maps, as a tuple."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.inner(x))


class MishSigmoidForm(nn.Module):
    """Mish as ONNX Runtime computes it fast: ``x * (1 - q) / (1 + q)``, ``q = sigmoid(-x)**2``.

    The identity: with ``s = sigmoid(-x) = 1 / (1 + e**x)``,
    ``tanh(softplus(x)) = ((1+e**x)**2 - 1) / ((1+e**x)**2 + 1) = (1 - s**2) / (1 + s**2)``.
    Every intermediate lies in [0, 1] (no overflow for any x); it differs from
    ``torch.nn.functional.mish`` by under 1e-6 in float32 over [-30, 30]. The TorchScript
    exporter writes Mish as Softplus, Tanh, Mul, and ONNX Runtime's CPU Softplus kernel is
    slow: it took 68 % of yolov4-n's time at 256 px (1 thread); this form cuts the latency
    about 3x (see benchmarks/results/variants.json).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.sigmoid(-x)
        q = q * q
        return x * (1 - q) / (1 + q)


@contextlib.contextmanager
def _mish_swapped(model: nn.Module, enabled: bool):
    """Temporarily replace every ``nn.Mish`` child module by :class:`MishSigmoidForm`."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    if enabled:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Mish):
                    swapped.append((parent, name, child))
                    setattr(parent, name, MishSigmoidForm())
    try:
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def export_onnx(
    model,
    out_path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    simplify: bool = True,
    dynamic_batch: bool = True,
    metadata: Mapping[str, Any] | None = None,
    fast_mish: bool = True,
) -> ExportReport:
    """Export ``model`` (a :class:`trainer.model.YOLOv4`) to ``out_path`` as ONNX.

    See the module docstring for the graph and its metadata. The model is traced in eval
    mode on its own device and left as it came (mode and modules).

    ``fast_mish``: write Mish in the sigmoid form (:class:`MishSigmoidForm`, about 3x
    faster in ONNX Runtime on CPU, within 1e-6 of Mish) instead of the exporter's
    Softplus/Tanh/Mul. The choice is recorded in ``slimspect.export``.

    Raises:
        ExportError: the exporter failed or the result does not pass ``onnx.checker``.
        ValueError: ``metadata`` collides with the exporter's keys or is not JSON.
    """
    import onnx

    spec = getattr(model, "spec", None)
    if spec is None:
        raise TypeError("export_onnx needs a model built from a YoloSpec (model.spec)")
    props = build_metadata(spec, metadata)  # fail before the (slow) export
    props[META_PREFIX + "export"] = json.dumps(
        {
            "exporter": "torch.onnx (TorchScript)",
            "torch": torch.__version__.split("+")[0],
            "opset": opset,
            "mish": "sigmoid-form" if fast_mish else "softplus-tanh",
        }
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    dummy = torch.zeros(1, spec.in_channels, spec.input_size, spec.input_size, device=device)
    dynamic_axes = (
        {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)} if dynamic_batch else None
    )
    with _eval_mode(model), _mish_swapped(model, fast_mish), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)  # legacy exporter notice
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        try:
            torch.onnx.export(
                _RawMaps(model).eval(),
                (dummy,),
                str(out_path),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                opset_version=opset,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        except Exception as e:
            raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {e}") from e

    proto = onnx.load(str(out_path))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise ExportError(f"exported graph fails onnx.checker: {e}") from e
    nodes_before = len(proto.graph.node)

    simplify_error: str | None = None if simplify else "disabled"
    if simplify:
        try:
            import onnxslim

            slim = onnxslim.slim(proto)
            if slim is None:
                raise RuntimeError("onnxslim returned nothing")
            onnx.checker.check_model(slim, full_check=True)
            proto = slim
        except Exception as e:  # noqa: BLE001 - keep the plain export, say why
            simplify_error = f"{type(e).__name__}: {e}"
            warnings.warn(
                f"onnxslim failed, keeping the unsimplified graph: {simplify_error}",
                RuntimeWarning,
                stacklevel=2,
            )

    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "slimspect"
    proto.doc_string = f"slimspect {spec.name}: raw YOLO maps p3/p4/p5; decode+NMS outside"
    onnx.save(proto, str(out_path))
    seconds = time.perf_counter() - start
    return ExportReport(
        path=out_path,
        opset=next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset),
        size_bytes=out_path.stat().st_size,
        inputs=_tensor_infos(proto.graph.input),
        outputs=_tensor_infos(proto.graph.output),
        simplified=simplify_error is None,
        simplify_error=simplify_error,
        nodes_before=nodes_before,
        nodes_after=len(proto.graph.node),
        dynamic_batch=dynamic_batch,
        fast_mish=fast_mish,
        seconds=seconds,
        metadata=parse_metadata_props(props),
    )


# --------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------


def ort_session(onnx_path: str | Path, threads: int | None = None):
    """A CPU onnxruntime session with full graph optimisation (what a station runs)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def _network_input(image: np.ndarray, spec) -> tuple[np.ndarray, LetterboxInfo]:
    """A source image -> (1, C, S, S) tensor + info; a ready (1, C, S, S) tensor as is."""
    img = np.asarray(image)
    if img.ndim == 4:
        expected = (1, spec.in_channels, spec.input_size, spec.input_size)
        if img.shape != expected:
            raise ValueError(f"network input has shape {img.shape}, expected {expected}")
        return np.ascontiguousarray(img, dtype=np.float32), LetterboxInfo.identity(
            spec.input_size, spec.input_size
        )
    return preprocess(img, spec.input_size, channels=spec.in_channels, source_order="bgr")


def check_parity(
    model,
    onnx_path: str | Path,
    images: Sequence[np.ndarray],
    class_names: Sequence[str],
    score_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    *,
    box_tolerance: float = 1e-2,
    raw_tolerance: float = 1e-4,
    max_detections: int = 300,
) -> ParityReport:
    """Run torch and ONNX Runtime on the same images; compare maps and detections.

    ``images``: source images ((H, W) gray or (H, W, 3) BGR, uint8/uint16/float in [0,1]),
    each pre-processed with :func:`slimspect.detection.preprocess` to the spec's input
    (so boxes come back in source pixels), or ready network inputs of shape
    (1, C, S, S). Each image runs alone (batch 1). Raw maps are compared by max absolute
    difference; detections after the shared :func:`postprocess` must have the same count
    and class ids in the same order, boxes within ``box_tolerance`` px (0.01: raw maps
    that agree to 3e-5 give box differences of ~1e-3 px once decoded through exp() and
    scaled to the source image; 1e-3 failed on fp32 rounding alone).
    """
    spec = model.spec
    session = ort_session(onnx_path)
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]
    anchors = spec.flat_anchors
    per_output = dict.fromkeys(output_names, 0.0)
    max_out = 0.0
    t_counts: list[int] = []
    o_counts: list[int] = []
    classes_equal = True
    box_diff = 0.0
    score_diff = 0.0
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    with _eval_mode(model), torch.no_grad():
        for image in images:
            x, info = _network_input(image, spec)
            t_maps = [m.detach().cpu().numpy() for m in model(torch.from_numpy(x).to(device))]
            o_maps = session.run(output_names, {input_name: x})
            for name, a, b in zip(output_names, t_maps, o_maps, strict=True):
                if a.shape != b.shape:
                    raise ExportError(f"output {name}: torch {a.shape} vs onnx {b.shape}")
                per_output[name] = max(per_output[name], float(np.abs(a - b).max()))
                max_out = max(max_out, float(np.abs(a).max()))
            kw = {
                "anchors": anchors,
                "strides": spec.strides,
                "class_names": class_names,
                "info": info,
                "score_threshold": score_threshold,
                "iou_threshold": iou_threshold,
                "max_detections": max_detections,
            }
            (t_det,) = postprocess(t_maps, **kw)
            (o_det,) = postprocess(o_maps, **kw)
            t_counts.append(len(t_det))
            o_counts.append(len(o_det))
            if len(t_det) != len(o_det) or not np.array_equal(t_det[:, 5], o_det[:, 5]):
                classes_equal = False
                box_diff = math.inf
                continue
            if len(t_det):
                box_diff = max(box_diff, float(np.abs(t_det[:, :4] - o_det[:, :4]).max()))
                score_diff = max(score_diff, float(np.abs(t_det[:, 4] - o_det[:, 4]).max()))
    return ParityReport(
        num_images=len(t_counts),
        max_abs_diff=max(per_output.values(), default=0.0),
        max_abs_diff_per_output=per_output,
        max_abs_output=max_out,
        torch_detections=tuple(t_counts),
        onnx_detections=tuple(o_counts),
        classes_equal=classes_equal,
        max_box_diff=box_diff,
        max_score_diff=score_diff,
        box_tolerance=box_tolerance,
        raw_tolerance=raw_tolerance,
    )


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _parity_images(source: str | None, spec, count: int, seed: int = 0) -> list[np.ndarray]:
    """Images from a file or folder (first ``count``, sorted), or random network inputs."""
    if source is None or source == "random":
        rng = np.random.default_rng(seed)
        shape = (1, spec.in_channels, spec.input_size, spec.input_size)
        return [rng.random(shape, dtype=np.float32) for _ in range(count)]
    import cv2

    path = Path(source)
    if not path.exists():
        raise click.ClickException(f"--check-parity: {path} does not exist")
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    )[:count]
    if not files:
        raise click.ClickException(
            f"--check-parity: no images ({', '.join(IMAGE_SUFFIXES)}) in {path}"
        )
    images = []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise click.ClickException(f"--check-parity: cannot read image {f}")
        images.append(img)
    return images


def json_safe(metadata: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The checkpoint metadata entries that survive JSON (tensors and the like are skipped)."""
    kept, skipped = {}, []
    for key, value in metadata.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            skipped.append(str(key))
            continue
        if str(key).removeprefix(META_PREFIX) in RESERVED_KEYS and key != "class_names":
            skipped.append(str(key))
            continue
        kept[str(key)] = value
    return kept, skipped


@click.command("export")
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Checkpoint written by save_checkpoint (spec + weights).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Output .onnx file [default: the checkpoint's path with .onnx].",
)
@click.option("--opset", type=click.IntRange(11, 21), default=DEFAULT_OPSET, show_default=True)
@click.option("--no-simplify", is_flag=True, help="Skip onnxslim.")
@click.option("--static-batch", is_flag=True, help="Fix the batch dimension to 1.")
@click.option(
    "--exact-mish",
    is_flag=True,
    help="Export Mish as Softplus/Tanh/Mul (about 3x slower in ONNX Runtime on CPU) instead "
    "of the equivalent sigmoid form.",
)
@click.option(
    "--check-parity",
    "parity_source",
    metavar="[DATA]",
    is_flag=False,
    flag_value="random",
    default="random",
    show_default=True,
    help="Compare torch and ONNX Runtime on images of DATA (an image or a folder), or on "
    "random inputs ('random', the default).",
)
@click.option("--no-parity", is_flag=True, help="Skip the parity check.")
@click.option("--parity-images", type=click.IntRange(1, 100), default=3, show_default=True)
@click.option(
    "--score-threshold", type=float, default=None, help="[default: checkpoint's, else 0.25]"
)
@click.option(
    "--iou-threshold", type=float, default=None, help="[default: checkpoint's, else 0.45]"
)
def export_command(
    model_path: Path,
    out: Path | None,
    opset: int,
    no_simplify: bool,
    static_batch: bool,
    exact_mish: bool,
    parity_source: str,
    no_parity: bool,
    parity_images: int,
    score_threshold: float | None,
    iou_threshold: float | None,
) -> None:
    """Export a checkpoint to ONNX (raw p3/p4/p5 maps; decode + NMS stay outside)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from trainer.model import load_checkpoint

    console = Console()
    if not model_path.exists():
        raise click.ClickException(f"checkpoint not found: {model_path}")
    try:
        model, ckpt_meta = load_checkpoint(model_path)
    except Exception as e:
        raise click.ClickException(
            f"{model_path} is not a slimspect checkpoint: {type(e).__name__}: {e}"
        ) from e
    out = out or model_path.with_suffix(".onnx")
    meta, skipped = json_safe(ckpt_meta if isinstance(ckpt_meta, Mapping) else {})
    meta["source_checkpoint"] = model_path.name
    thresholds = meta.get("thresholds") if isinstance(meta.get("thresholds"), Mapping) else {}
    score = score_threshold if score_threshold is not None else thresholds.get("score", 0.25)
    iou = iou_threshold if iou_threshold is not None else thresholds.get("iou", 0.45)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            report = export_onnx(
                model,
                out,
                opset=opset,
                simplify=not no_simplify,
                dynamic_batch=not static_batch,
                metadata=meta,
                fast_mish=not exact_mish,
            )
    except (ExportError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    for w in caught:
        console.print(Text(f"warning: {w.message}", style="yellow"))
    spec = model.spec
    table = Table(title=f"slimspect export: {spec.name}", show_header=False)

    def row(key: str, value: str) -> None:
        table.add_row(key, Text(value))  # plain text: shapes like [batch, 1, 64, 64] are no markup

    row("file", str(report.path))
    row("size", f"{report.size_mib:.2f} MiB")
    row("opset", str(report.opset))
    row("inputs", "; ".join(str(t) for t in report.inputs))
    row("outputs", "; ".join(str(t) for t in report.outputs))
    row(
        "simplified",
        f"yes ({report.nodes_before} -> {report.nodes_after} nodes)"
        if report.simplified
        else f"no ({report.simplify_error})",
    )
    row("mish", "sigmoid form (fast)" if report.fast_mish else "softplus/tanh (exact)")
    row("classes", ", ".join(report.metadata[META_PREFIX + "class_names"]))
    if skipped:
        row("metadata skipped", ", ".join(skipped))
    parity = None
    if not no_parity:
        images = _parity_images(parity_source, spec, parity_images)
        parity = check_parity(
            model,
            report.path,
            images,
            report.metadata[META_PREFIX + "class_names"],
            score,
            iou,
        )
        row(
            "parity",
            f"{'random inputs' if parity_source == 'random' else parity_source}: "
            + parity.summary(),
        )
    row("time", f"{report.seconds:.1f} s")
    console.print(table)
    if parity is not None and not parity.ok:
        raise click.ClickException(
            f"parity check failed ({parity.summary()}); {report.path} was written anyway"
        )


def report_dict(report: ExportReport) -> dict[str, Any]:
    """An :class:`ExportReport` as plain JSON-ready values."""
    d = asdict(report)
    d["path"] = str(report.path)
    d["size_mib"] = report.size_mib
    return d
