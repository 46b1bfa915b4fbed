"""INT8 post-training quantization of an exported detector, and the decision to ship it.

What :func:`quantize_int8` does
-------------------------------
ONNX Runtime static quantization of the fp32 model :func:`trainer.export.export_onnx`
wrote, in the QDQ format (``QuantizeLinear``/``DequantizeLinear`` pairs around the
quantized ops; ORT's CPU provider fuses ``DQ -> Conv -> Q`` into ``QLinearConv`` when the
session is created):

1. ``onnxruntime.quantization.shape_inference.quant_pre_process`` (symbolic shape
   inference + ORT's basic graph optimisation) on a copy of the model. The exported graph
   has a dynamic batch dimension that ``Resize`` turns into ``floor(1.0*batch)``; symbolic
   inference stops there unless ``auto_merge=True``, which is what we pass. If the
   pre-processing still fails, the raw model is quantized and the report says why.
2. Calibration: source images (or a data set split) pre-processed exactly as a station
   does (:func:`slimspect.detection.preprocess`: letterbox to the model input, [0, 1]),
   one image per run, fed by :class:`ImageCalibrationReader`. Methods ``minmax``
   (default), ``entropy``, ``percentile`` (ORT's calibrators).
3. ``quantize_static(quant_format=QDQ, per_channel=True, weight_type=QInt8,
   activation_type=QUInt8, op_types_to_quantize=["Conv"])``.
4. The fp32 model's ``metadata_props`` are copied onto the int8 model, plus
   ``slimspect.format = "onnx-int8"`` and ``slimspect.quantization`` (the settings
   below, JSON), so a station reads the same input contract from either file.

Why these settings (``benchmarks/bench_int8.py`` -> results/int8.json; AMD EPYC with
AVX2, AVX-512 and AVX512_VNNI, no AVX-VNNI/AMX; ONNX Runtime 1.32; 256 px gray, batch 1;
median ms of 30 runs, the formats of a model alternating; random weights):

==========  =========  ===========  ===========  ===========  ===================
model       threads    fp32         U8S8         S8S8         U8S8, all ops
==========  =========  ===========  ===========  ===========  ===================
yolov4-n    1          18.2         13.5         19.9         15.4
yolov4-n    2          12.2         10.5         16.0         12.8
yolov4-s    1          57.4         29.5
yolov4-s    2          55.1         30.7
==========  =========  ===========  ===========  ===========  ===================

* **U8S8** (uint8 activations, int8 per-channel weights), fastest here. With int8
  activations (S8S8) ORT's CPU provider fused only 27 of the 79 quantized convs into
  ``QLinearConv`` (the neck's, between LeakyReLUs); the 52 convs of the Mish backbone
  ran as float ``Conv`` on dequantized weights, so S8S8 was slower than fp32. With U8S8
  all 79 fuse. On x86 CPUs *without* VNNI (plain AVX2 / AVX-512), U8S8 uses
  ``vpmaddubsw``, whose int16 intermediate sums can saturate; for such stations quantize
  with ``reduce_range=True`` (7-bit weights) and check accuracy on one of them. The edge
  CPU, not the quantizing machine's, decides: this module does not guess
  ``reduce_range`` from the local CPU (:func:`cpu_int8_features` reports the local flags).
* **Only Conv is quantized.** Quantizing every op ORT supports (Mul, Add, Sigmoid,
  Concat, LeakyRelu, MaxPool: the Mish sigmoid form alone is seven elementwise ops per
  conv) adds QDQ pairs everywhere (600 DQ, 450 Q nodes in yolov4-n), was slower than
  Conv-only and lost more SQNR. The elementwise activations stay float between a
  ``QLinearConv`` and the next conv's ``QuantizeLinear``.
* **Per-channel weights**: a YOLO conv's output channels differ in range by orders of
  magnitude (BatchNorm folded into the weights); one scale per tensor wastes most of
  the 8 bits on the widest channel.
* The machine is a shared 2-vCPU VM: 2-thread runs lose most when other jobs run (the
  load average was 2.5-3 during the run above; yolov4-s gained nothing from the second
  thread there, while an earlier quiet moment gave 2-thread times near half the
  1-thread ones). Ratios between formats timed in the same loop are the evidence.

Nodes excluded (kept fp32)
--------------------------
``exclude="auto"``: the three prediction convs (the 1x1 convs whose outputs are
``p3``/``p4``/``p5``). Common practice: their outputs are the box, objectness and class
logits themselves, with no later layer to average the rounding out, and they are a few
percent of the FLOPs. With ``sensitivity_k > 0`` a sensitivity pass follows: the model
is quantized, then fp32 and int8 run side by side on up to ``sensitivity_images``
calibration images with every intermediate tensor saved (ORT's
``qdq_loss_debug``: ``modify_model_output_intermediate_tensors``,
``collect_activations``, ``create_activation_matching``, ``compute_activation_error``,
``create_weight_matching``, ``compute_weight_error``). Per quantized conv
(:class:`LayerSensitivity`):

* ``weight_sqnr_db``: SQNR of its dequantized weights against the fp32 ones;
* ``input_sqnr_db`` / ``output_sqnr_db``: SQNR of its input / output activation before
  and after its own quantize-dequantize (in the int8 model);
* ``local_sqnr_db``: the three noise powers added, ``-10 log10(sum 10**(-s/10))``: what
  quantizing this one conv costs, which is what excluding it would save;
* ``cumulative_sqnr_db``: its output in the int8 model against the fp32 model's (all
  the error accumulated up to it; reported, not used to rank: deep layers always look
  worst there, and excluding them does not remove the error upstream).

The ``sensitivity_k`` convs with the lowest ``local_sqnr_db`` *below*
``sensitivity_threshold_db`` (default 30 dB; 8-bit quantization of a well-spread tensor
gives about 35-50 dB, so below 30 dB an outlier stretches the range) are excluded too and
the model is quantized again (reusing the calibration ranges). Every excluded conv costs
speed: it runs in fp32 with a DQ before and a Q after it.

Comparing and choosing
----------------------
:func:`compare` gives latency (fp32 and int8 timed alternately, run by run, with
:func:`trainer.bench.ort_latency`'s session options, 1 and 2 threads), raw-map error
(max/mean absolute error, SQNR in dB per output) and detection agreement after the
shared :func:`slimspect.detection.postprocess`. :func:`evaluate_onnx` gives mAP on a data
set split. :func:`choose_default` ships ``onnx-int8`` only when it is faster AND loses at
most ``max_map_drop`` mAP50 (default 0.01, one point); otherwise ``onnx-fp32``: INT8 on
CPU can be slower than fp32 in ORT, so it is measured, never assumed.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from slimspect.detection import LetterboxInfo, box_iou, postprocess, preprocess

FORMAT_INT8 = "onnx-int8"
FORMAT_FP32 = "onnx-fp32"
META_FORMAT = "slimspect.format"
META_QUANT = "slimspect.quantization"
OUTPUT_NAMES = ("p3", "p4", "p5")
METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("uint8", "int8")
DEFAULT_OP_TYPES = ("Conv",)
DEFAULT_SENSITIVITY_THRESHOLD_DB = 30.0


class QuantizationError(RuntimeError):
    """The model could not be quantized."""


@dataclass(frozen=True)
class LayerSensitivity:
    """What quantizing one conv costs (see the module docstring); dB, higher is better.

    Measured on the model quantized with the default exclusions only (before the
    sensitive convs were excluded as well).
    """

    node: str
    weight_sqnr_db: float | None
    input_sqnr_db: float | None
    output_sqnr_db: float | None
    local_sqnr_db: float | None
    cumulative_sqnr_db: float | None


@dataclass(frozen=True)
class QuantReport:
    """What :func:`quantize_int8` wrote, and how."""

    fp32_path: Path
    int8_path: Path
    fp32_bytes: int
    int8_bytes: int
    quant_format: str  # "QDQ"
    method: str
    per_channel: bool
    reduce_range: bool
    activation_type: str  # "uint8" | "int8"
    weight_type: str  # "int8"
    op_types: tuple[str, ...]
    input_size: tuple[int, int]  # (H, W)
    channels: int
    calibration_images: int
    preprocessed: bool  # quant_pre_process ran
    preprocess_error: str | None
    excluded: tuple[str, ...]  # every node kept fp32 on purpose
    head_excluded: tuple[str, ...]
    sensitive_excluded: tuple[str, ...]
    sensitivity_threshold_db: float
    sensitivity: tuple[LayerSensitivity, ...]  # empty unless the pass ran
    quantize_linear: int  # QuantizeLinear nodes in the int8 file
    dequantize_linear: int
    quantized_convs: int  # convs whose weight is int8
    float_convs: int  # convs left in fp32
    seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)  # decoded metadata_props

    @property
    def size_ratio(self) -> float:
        """fp32 bytes / int8 bytes."""
        return self.fp32_bytes / self.int8_bytes if self.int8_bytes else math.inf

    def summary(self) -> str:
        return (
            f"{self.int8_path.name}: {self.fp32_bytes / 2**20:.2f} -> "
            f"{self.int8_bytes / 2**20:.2f} MiB ({self.size_ratio:.1f}x), QDQ "
            f"{self.activation_type}/{self.weight_type} per-channel={self.per_channel}, "
            f"{self.method} on {self.calibration_images} image(s), {self.quantized_convs} convs "
            f"int8, {self.float_convs} fp32 ({', '.join(self.excluded) or 'none excluded'})"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fp32_path"], d["int8_path"] = str(self.fp32_path), str(self.int8_path)
        d["size_ratio"] = self.size_ratio
        return d


class DefaultChoice(NamedTuple):
    """The format a station should run (``onnx-int8`` or ``onnx-fp32``) and why."""

    format: str
    reason: str


# --------------------------------------------------------------------------------------
# Model facts
# --------------------------------------------------------------------------------------


def _load(model_or_path):
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    return onnx.load(str(model_or_path))


def _metadata(model) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _decoded(props: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in props.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


def _input_geometry(model) -> tuple[str, tuple[int, int], int]:
    """Input name, (H, W) and channels: from ``slimspect.input``, else the graph input."""
    inp = model.graph.input[0]
    dims = [
        d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim
    ]
    meta = _decoded(_metadata(model)).get("slimspect.input")
    if isinstance(meta, Mapping):
        return inp.name, (int(meta["height"]), int(meta["width"])), int(meta["channels"])
    if len(dims) == 4 and all(d for d in dims[1:]):
        return inp.name, (int(dims[2]), int(dims[3])), int(dims[1])
    raise ValueError(
        f"cannot tell the input size of the model (input {inp.name} {dims}, no slimspect.input "
        "metadata): pass input_size and channels"
    )


def _producers(model) -> dict[str, Any]:
    return {out: node for node in model.graph.node for out in node.output}


def head_conv_nodes(model_or_path) -> list[str]:
    """Names of the convs that produce the graph outputs (``p3``, ``p4``, ``p5``).

    Walks back from each output through single-input pass-through nodes (Identity,
    Reshape, ...) to the first Conv. Raises ValueError when an output has no Conv behind it.
    """
    model = _load(model_or_path)
    producers = _producers(model)
    names = []
    for out in model.graph.output:
        node = producers.get(out.name)
        while node is not None and node.op_type != "Conv":
            node = producers.get(node.input[0]) if node.input else None
        if node is None:
            raise ValueError(f"no Conv produces output {out.name!r}")
        names.append(node.name)
    return names


def _conv_weight_kinds(model) -> tuple[list[str], list[str]]:
    """(convs whose weight comes through a DequantizeLinear, convs with a float weight)."""
    producers = _producers(model)
    quantized, floating = [], []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        p = producers.get(node.input[1])
        (quantized if p is not None and p.op_type == "DequantizeLinear" else floating).append(
            node.name
        )
    return quantized, floating


def cpu_int8_features() -> dict[str, bool]:
    """The local CPU's flags that decide x86 int8 speed (Linux ``/proc/cpuinfo``)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    keys = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
    return {k: k in flags for k in keys}


# --------------------------------------------------------------------------------------
# Calibration data
# --------------------------------------------------------------------------------------


def _to_input(image: np.ndarray, size: tuple[int, int], channels: int) -> list[np.ndarray]:
    """A source image -> [(1, C, H, W)]; a ready (N, C, H, W) tensor -> N of them."""
    img = np.asarray(image)
    if img.ndim == 4:
        if img.shape[1:] != (channels, *size):
            raise ValueError(
                f"network input has shape {img.shape}, expected (N, {channels}, {size[0]}, "
                f"{size[1]})"
            )
        return [np.ascontiguousarray(img[i : i + 1], dtype=np.float32) for i in range(len(img))]
    tensor, _ = preprocess(img, size, channels=channels, source_order="bgr")
    return [tensor]


def calibration_tensors(
    source: Iterable[np.ndarray] | str | Path,
    input_size: int | Sequence[int],
    channels: int,
    *,
    split: str | None = "train",
    count: int | None = 64,
) -> list[np.ndarray]:
    """Network inputs (1, C, H, W) float32 for calibration.

    ``source``: source images ((H, W) gray or (H, W, 3) BGR, any dtype :func:`preprocess`
    takes) or ready (N, C, H, W) tensors; or the path of a data set
    (:func:`trainer.data.formats.read_dataset`), of which ``count`` images of ``split``
    evenly spread over the split are read (``split=None``: all splits). ``count`` caps
    the number of tensors either way (None: all).
    """
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    size = (int(size[0]), int(size[1]))
    tensors: list[np.ndarray] = []
    if isinstance(source, (str, Path)):
        from trainer.data.dataset import load_image
        from trainer.data.formats import read_dataset

        ds = read_dataset(Path(source))
        if split is None:
            samples = [s for _, s in ds.samples()]
        elif split in ds.splits:
            samples = ds.splits[split]
        else:
            raise ValueError(
                f"data set {source} has no split {split!r} (splits: {', '.join(ds.splits)})"
            )
        if not samples:
            raise ValueError(f"no images in {source} ({split or 'all splits'})")
        n = len(samples) if count is None else min(count, len(samples))
        picks = np.unique(np.linspace(0, len(samples) - 1, n).round().astype(int))
        for i in picks:
            path = ds.image_path(samples[i])
            img = load_image(path, gray=channels == 1)
            if img is None:
                raise ValueError(f"cannot read calibration image {path}")
            tensors.extend(_to_input(img, size, channels))
    else:
        if isinstance(source, np.ndarray) and source.ndim == 4:
            source = [source]  # one batch of ready inputs, not an iterable of images
        for image in source:
            tensors.extend(_to_input(image, size, channels))
            if count is not None and len(tensors) >= count:
                break
        if count is not None:
            tensors = tensors[:count]
    if not tensors:
        raise ValueError("no calibration images")
    return tensors


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds ready network inputs to ORT, one (1, C, H, W) image per run; rewindable."""

    def __init__(self, tensors: Sequence[np.ndarray], input_name: str = "images") -> None:
        self.tensors = list(tensors)
        self.input_name = input_name
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.tensors):
            return None
        x = self.tensors[self._next]
        self._next += 1
        return {self.input_name: x}

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return len(self.tensors)

    def set_range(self, start_index: int, end_index: int) -> None:  # CalibStridedMinMax
        self.tensors = self.tensors[start_index:end_index]
        self._next = 0


# --------------------------------------------------------------------------------------
# Sensitivity
# --------------------------------------------------------------------------------------


def _noise_sum_db(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None
    return -10.0 * math.log10(sum(10.0 ** (-v / 10.0) for v in vals))


def layer_sensitivity(
    fp32_onnx: str | Path,
    int8_onnx: str | Path,
    tensors: Sequence[np.ndarray],
    *,
    work_dir: str | Path | None = None,
) -> list[LayerSensitivity]:
    """Per quantized conv of ``int8_onnx``, in graph order: see :class:`LayerSensitivity`.

    ``fp32_onnx`` must be the model ``int8_onnx`` was quantized from (the pre-processed
    one: tensor names must match). Every intermediate tensor of both models is kept for
    every image, so pass few images (a handful at 256 px is some tens of MB).
    """
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as dbg
    from onnxruntime.quantization.quant_utils import TENSOR_NAME_QUANT_SUFFIX

    q_model = onnx.load(str(int8_onnx))
    input_name = q_model.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="slimspect-sens-", dir=work_dir) as tmp:
        aug_f, aug_q = Path(tmp, "fp32_aug.onnx"), Path(tmp, "int8_aug.onnx")
        dbg.modify_model_output_intermediate_tensors(str(fp32_onnx), str(aug_f))
        dbg.modify_model_output_intermediate_tensors(str(int8_onnx), str(aug_q))
        f_acts = dbg.collect_activations(str(aug_f), ImageCalibrationReader(tensors, input_name))
        q_acts = dbg.collect_activations(str(aug_q), ImageCalibrationReader(tensors, input_name))
    act_err = dbg.compute_activation_error(dbg.create_activation_matching(q_acts, f_acts))
    del f_acts, q_acts
    w_err = dbg.compute_weight_error(dbg.create_weight_matching(str(fp32_onnx), str(int8_onnx)))

    producers = _producers(q_model)

    def through_qdq(name: str) -> str:
        """The tensor a DQ(Q(x)) chain carries: x (or the weight's base name)."""
        dq = producers.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            return name
        q = producers.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            return q.input[0]
        return dq.input[0].removesuffix(TENSOR_NAME_QUANT_SUFFIX)

    rows = []
    for node in q_model.graph.node:
        if node.op_type != "Conv":
            continue
        w_prod = producers.get(node.input[1])
        if w_prod is None or w_prod.op_type != "DequantizeLinear":
            continue  # a float conv: nothing of it is quantized
        w = w_err.get(through_qdq(node.input[1]))
        a_in = act_err.get(through_qdq(node.input[0]), {})
        a_out = act_err.get(node.output[0], {})
        parts = (w, a_in.get("qdq_err"), a_out.get("qdq_err"))
        rows.append(
            LayerSensitivity(
                node=node.name,
                weight_sqnr_db=_f(w),
                input_sqnr_db=_f(a_in.get("qdq_err")),
                output_sqnr_db=_f(a_out.get("qdq_err")),
                local_sqnr_db=_f(_noise_sum_db(parts)),
                cumulative_sqnr_db=_f(a_out.get("xmodel_err")),
            )
        )
    return rows


def _f(v) -> float | None:
    return None if v is None else float(v)


def pick_sensitive(
    layers: Sequence[LayerSensitivity],
    k: int,
    threshold_db: float = DEFAULT_SENSITIVITY_THRESHOLD_DB,
    skip: Iterable[str] = (),
) -> list[str]:
    """The ``k`` nodes with the lowest ``local_sqnr_db`` below ``threshold_db``."""
    skip = set(skip)
    cands = [
        row
        for row in layers
        if row.local_sqnr_db is not None
        and row.local_sqnr_db < threshold_db
        and row.node not in skip
    ]
    cands.sort(key=lambda row: row.local_sqnr_db)
    return [row.node for row in cands[: max(0, k)]]


# --------------------------------------------------------------------------------------
# Quantization
# --------------------------------------------------------------------------------------


def _quant_types(activation_type: str):
    from onnxruntime.quantization import QuantType

    if activation_type not in ACTIVATION_TYPES:
        raise ValueError(
            f"activation_type must be one of {ACTIVATION_TYPES}, not {activation_type!r}"
        )
    return QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8


def _calib_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in table:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    return table[method]


def quantize_int8(
    fp32_onnx: str | Path,
    out_onnx: str | Path,
    calibration_images: Iterable[np.ndarray] | str | Path,
    *,
    split: str | None = "train",
    count: int | None = 64,
    per_channel: bool = True,
    method: str = "minmax",
    exclude: str | Sequence[str] | None = "auto",
    sensitivity_k: int = 0,
    sensitivity_threshold_db: float = DEFAULT_SENSITIVITY_THRESHOLD_DB,
    sensitivity_images: int = 4,
    input_size: int | Sequence[int] | None = None,
    channels: int | None = None,
    activation_type: str = "uint8",
    reduce_range: bool = False,
    op_types: Sequence[str] | None = DEFAULT_OP_TYPES,
    extra_options: Mapping[str, Any] | None = None,
) -> QuantReport:
    """Quantize ``fp32_onnx`` to INT8 (ORT static, QDQ) and write ``out_onnx``.

    Args:
        calibration_images: source images or ready (N, C, H, W) inputs, or a data set path
            (then ``split`` and ``count`` pick the images; see :func:`calibration_tensors`).
        per_channel: one weight scale per output channel (default).
        method: ``minmax``, ``entropy`` or ``percentile`` calibration.
        exclude: ``"auto"`` (the prediction convs, plus the sensitivity pass when
            ``sensitivity_k > 0``), a list of node names (exactly those, no pass), or None.
        sensitivity_k: at most this many more convs kept fp32, the worst by local SQNR
            below ``sensitivity_threshold_db``, measured on ``sensitivity_images`` images.
        input_size, channels: default from the model's ``slimspect.input`` metadata.
        activation_type: ``uint8`` (default, fastest on x86; see the module docstring) or
            ``int8``. Weights are always int8.
        reduce_range: 7-bit weights, for non-VNNI x86 stations (saturation).
        op_types: op types to quantize (default Conv only); None: all ORT supports.
        extra_options: passed to ``quantize_static`` (e.g. ``{"CalibPercentile": 99.99}``).

    Returns a :class:`QuantReport`. Raises QuantizationError when ORT fails, ValueError on
    bad arguments (unknown node names, no images, ...).
    """
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    start = time.perf_counter()
    fp32_onnx, out_onnx = Path(fp32_onnx), Path(out_onnx)
    if not fp32_onnx.is_file():
        raise FileNotFoundError(fp32_onnx)
    if fp32_onnx.resolve() == out_onnx.resolve():
        raise ValueError("out_onnx must differ from fp32_onnx")
    act_qtype = _quant_types(activation_type)
    calib_method = _calib_method(method)
    original = onnx.load(str(fp32_onnx))
    input_name, meta_size, meta_channels = _input_geometry_or(original, input_size, channels)
    size = meta_size if input_size is None else _hw(input_size)
    ch = meta_channels if channels is None else int(channels)
    tensors = calibration_tensors(calibration_images, size, ch, split=split, count=count)
    out_onnx.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="slimspect-quant-") as tmp:
        pre_path = Path(tmp, "fp32_pre.onnx")
        preprocess_error = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quant_pre_process(str(fp32_onnx), str(pre_path), auto_merge=True)
            src = pre_path
        except Exception as e:  # noqa: BLE001 - quantize the raw graph, say why
            preprocess_error = f"{type(e).__name__}: {e}"
            warnings.warn(
                f"quant_pre_process failed, quantizing the raw graph: {preprocess_error}",
                RuntimeWarning,
                stacklevel=2,
            )
            src = fp32_onnx
        src_model = onnx.load(str(src))
        node_names = {n.name for n in src_model.graph.node}

        if exclude == "auto":
            head = head_conv_nodes(src_model)
            excluded = list(head)
        elif exclude is None:
            head, excluded = [], []
        elif isinstance(exclude, str):
            raise ValueError(
                f"exclude must be 'auto', a list of node names or None, not {exclude!r}"
            )
        else:
            excluded = list(dict.fromkeys(exclude))
            unknown = [n for n in excluded if n not in node_names]
            if unknown:
                convs = [n.name for n in src_model.graph.node if n.op_type == "Conv"]
                raise ValueError(
                    f"exclude names nodes not in the graph: {unknown}; its convs are e.g. "
                    f"{convs[-4:]} (see head_conv_nodes())"
                )
            head = [n for n in head_conv_nodes(src_model) if n in excluded]

        options = {"ActivationSymmetric": False, "WeightSymmetric": True}
        options.update(extra_options or {})
        cache = Path(tmp, "calibration.json")

        def run(nodes_to_exclude: list[str], dest: Path) -> None:
            try:
                quantize_static(
                    str(src),
                    str(dest),
                    ImageCalibrationReader(tensors, input_name),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(op_types) if op_types else None,
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    activation_type=act_qtype,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=nodes_to_exclude,
                    calibrate_method=calib_method,
                    extra_options=dict(options),
                    calibration_cache_path=cache,
                )
            except Exception as e:
                raise QuantizationError(
                    f"onnxruntime quantize_static failed: {type(e).__name__}: {e}"
                ) from e

        first = Path(tmp, "int8_pass1.onnx")
        run(excluded, first)
        sensitivity: list[LayerSensitivity] = []
        sensitive: list[str] = []
        if exclude == "auto" and sensitivity_k > 0:
            sensitivity = layer_sensitivity(
                src, first, tensors[: max(1, sensitivity_images)], work_dir=tmp
            )
            sensitive = pick_sensitive(
                sensitivity, sensitivity_k, sensitivity_threshold_db, skip=excluded
            )
        if sensitive:
            excluded += sensitive
            run(excluded, Path(tmp, "int8_final.onnx"))
            final = Path(tmp, "int8_final.onnx")
        else:
            final = first

        model = onnx.load(str(final))
        props = _metadata(original)
        settings = {
            "quant_format": "QDQ",
            "activation_type": activation_type,
            "weight_type": "int8",
            "per_channel": per_channel,
            "reduce_range": reduce_range,
            "method": method,
            "op_types": list(op_types) if op_types else None,
            "calibration_images": len(tensors),
            "excluded": excluded,
            "onnxruntime": onnxruntime.__version__,
            "source_sha256": _sha256(fp32_onnx),
        }
        props[META_FORMAT] = json.dumps(FORMAT_INT8)
        props[META_QUANT] = json.dumps(settings)
        del model.metadata_props[:]
        for key, value in props.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        model.producer_name = original.producer_name or "slimspect"
        model.doc_string = (original.doc_string + " " if original.doc_string else "") + (
            "INT8 (ORT static quantization, QDQ)"
        )
        onnx.save(model, str(out_onnx))

    ops = [n.op_type for n in model.graph.node]
    q_convs, f_convs = _conv_weight_kinds(model)
    return QuantReport(
        fp32_path=fp32_onnx,
        int8_path=out_onnx,
        fp32_bytes=fp32_onnx.stat().st_size,
        int8_bytes=out_onnx.stat().st_size,
        quant_format="QDQ",
        method=method,
        per_channel=per_channel,
        reduce_range=reduce_range,
        activation_type=activation_type,
        weight_type="int8",
        op_types=tuple(op_types) if op_types else (),
        input_size=size,
        channels=ch,
        calibration_images=len(tensors),
        preprocessed=preprocess_error is None,
        preprocess_error=preprocess_error,
        excluded=tuple(excluded),
        head_excluded=tuple(head),
        sensitive_excluded=tuple(sensitive),
        sensitivity_threshold_db=float(sensitivity_threshold_db),
        sensitivity=tuple(sensitivity),
        quantize_linear=ops.count("QuantizeLinear"),
        dequantize_linear=ops.count("DequantizeLinear"),
        quantized_convs=len(q_convs),
        float_convs=len(f_convs),
        seconds=time.perf_counter() - start,
        metadata=_decoded(props),
    )


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def _input_geometry_or(
    model, input_size, channels
) -> tuple[str, tuple[int, int] | None, int | None]:
    """Like :func:`_input_geometry`, but missing facts are fine when the caller gives them."""
    try:
        return _input_geometry(model)
    except ValueError:
        if input_size is None or channels is None:
            raise
        return model.graph.input[0].name, None, None


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# Comparing fp32 and int8
# --------------------------------------------------------------------------------------


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """``20 log10(|ref| / |ref - test|)`` (ORT's definition); inf when they are equal."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    diff = ref - np.asarray(test, dtype=np.float64).ravel()
    noise = float(np.linalg.norm(diff))
    if noise == 0.0:
        return math.inf
    return 20.0 * math.log10(max(float(np.linalg.norm(ref)), 1e-30) / noise)


def interleaved_latency(
    models: Mapping[str, str | Path],
    threads: int,
    input_size: int | Sequence[int],
    channels: int,
    *,
    warmup: int = 5,
    repeats: int = 20,
    rounds: int | None = None,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """:func:`trainer.bench.ort_latency` for several models, alternating to share the noise.

    Same session options (``ort_session_options(threads)``), same fixed random input, same
    statistics. With one thread the models alternate run by run. With more, they
    alternate in ``rounds`` blocks (default: 5, or ``repeats`` when fewer) and only one
    session lives at a time: each block opens the model's session, runs ``warmup``
    untimed and its share of ``repeats`` timed runs, and closes it; the model order
    reverses every round. Reason (measured on this 2-core VM): an open but idle session
    keeps its intra-op workers spinning, so two 2-thread sessions alternating run by run
    took about twice the time of either alone, and even five runs back to back after a
    switch did not recover; ``allow_spinning=0`` would hide that but is not what a
    station runs.
    """
    import onnxruntime as ort

    from trainer.bench import ort_session_options

    if threads < 1 or repeats < 1 or warmup < 0:
        raise ValueError(
            f"need threads >= 1, repeats >= 1, warmup >= 0; got {threads}, {repeats}, {warmup}"
        )
    h, w = _hw(input_size)
    x = np.random.default_rng(seed).random((1, channels, h, w), dtype=np.float32)
    names = list(models)
    times: dict[str, list[float]] = {name: [] for name in names}

    def open_session(name: str):
        s = ort.InferenceSession(
            str(models[name]), ort_session_options(threads), providers=["CPUExecutionProvider"]
        )
        return s, {s.get_inputs()[0].name: x}

    def timed(s, feed) -> float:
        t0 = time.perf_counter()
        s.run(None, feed)
        return (time.perf_counter() - t0) * 1000.0

    if threads == 1:
        sessions = {name: open_session(name) for name in names}
        for _ in range(warmup):
            for s, feed in sessions.values():
                s.run(None, feed)
        for _ in range(repeats):
            for name, (s, feed) in sessions.items():
                times[name].append(timed(s, feed))
        del sessions
    else:
        n_rounds = max(1, min(rounds or 5, repeats))
        shares = [repeats // n_rounds + (r < repeats % n_rounds) for r in range(n_rounds)]
        for r, share in enumerate(shares):
            for name in names if r % 2 == 0 else names[::-1]:
                s, feed = open_session(name)
                for _ in range(warmup):
                    s.run(None, feed)
                times[name].extend(timed(s, feed) for _ in range(share))
                del s
    out = {}
    for name, ts in times.items():
        median = statistics.median(ts)
        out[name] = {
            "median_ms": median,
            "p90_ms": float(np.percentile(ts, 90)),
            "mean_ms": statistics.fmean(ts),
            "min_ms": min(ts),
            "fps": 1000.0 / median if median > 0 else math.inf,
            "threads": int(threads),
            "repeats": int(repeats),
            "warmup": int(warmup),
        }
    return out


def _match_count(ref: np.ndarray, test: np.ndarray, iou: float) -> int:
    """Reference detections matched one-to-one (greedy, by reference score) by ``test``
    detections of the same class at IoU >= ``iou``."""
    if len(ref) == 0 or len(test) == 0:
        return 0
    ious = np.asarray(box_iou(ref[:, :4], test[:, :4]), dtype=np.float64)  # (R, T)
    ious[ref[:, 5][:, None] != test[:, 5][None, :]] = -1.0
    used = np.zeros(len(test), dtype=bool)
    matched = 0
    for r in np.argsort(-ref[:, 4], kind="mergesort"):
        row = np.where(used, -1.0, ious[r])
        t = int(np.argmax(row))
        if row[t] >= iou:
            used[t] = True
            matched += 1
    return matched


def compare(
    fp32_onnx: str | Path,
    int8_onnx: str | Path,
    images: Sequence[np.ndarray],
    threads: Sequence[int] = (1, 2),
    *,
    score_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    match_iou: float = 0.5,
    warmup: int = 5,
    repeats: int = 20,
) -> dict[str, Any]:
    """fp32 vs int8: latency, raw-map error and detection agreement.

    ``images``: source images (pre-processed and letterboxed to the model input as a
    station does) or ready (1, C, H, W) inputs. ``threads``: thread counts to time
    (empty: no timing). Returns a JSON-ready dict::

        {"images", "size_bytes": {"fp32", "int8"}, "size_ratio",
         "raw": {output: {"max_abs", "mean_abs", "sqnr_db", "max_abs_fp32"}},
         "min_sqnr_db",
         "detections": {"fp32", "int8", "matched", "agreement", "extra"},
         "latency": {threads: {"fp32": stats, "int8": stats, "speedup"}}}

    ``agreement``: share of fp32 detections matched by an int8 detection of the same
    class at IoU >= ``match_iou`` (1.0 when fp32 finds nothing and neither does int8,
    else None when fp32 finds nothing); ``extra``: int8 detections left unmatched.
    Latency: :func:`interleaved_latency` (fp32 and int8 alternating), median of
    ``repeats`` after ``warmup``; ``speedup`` = fp32 median / int8 median.
    """
    from trainer.export import ort_session

    f_model = _load(fp32_onnx)
    input_name, size, channels = _input_geometry(f_model)
    meta = _decoded(_metadata(f_model))
    anchors = np.asarray(meta["slimspect.anchors"], dtype=np.float32).reshape(-1, 2)
    strides = meta["slimspect.strides"]
    names = meta["slimspect.class_names"]
    del f_model
    s_f, s_q = ort_session(fp32_onnx), ort_session(int8_onnx)
    outs = [o.name for o in s_f.get_outputs()]
    if [o.name for o in s_q.get_outputs()] != outs:
        raise ValueError("the two models have different outputs")
    acc = {
        o: {"max_abs": 0.0, "abs_sum": 0.0, "n": 0, "sig": 0.0, "noise": 0.0, "ref_max": 0.0}
        for o in outs
    }
    n_f = n_q = n_m = 0
    count = 0
    for image in images:
        img = np.asarray(image)
        if img.ndim == 4:
            xs = _to_input(img, size, channels)
            infos = [LetterboxInfo.identity(size[1], size[0])] * len(xs)
        else:
            x, info = preprocess(img, size, channels=channels, source_order="bgr")
            xs, infos = [x], [info]
        for x, info in zip(xs, infos, strict=True):
            count += 1
            maps_f = s_f.run(outs, {input_name: x})
            maps_q = s_q.run(outs, {input_name: x})
            for o, a, b in zip(outs, maps_f, maps_q, strict=True):
                d = np.abs(a.astype(np.float64) - b)
                st = acc[o]
                st["max_abs"] = max(st["max_abs"], float(d.max()))
                st["abs_sum"] += float(d.sum())
                st["n"] += d.size
                st["sig"] += float(np.sum(np.square(a, dtype=np.float64)))
                st["noise"] += float(np.sum(np.square(d)))
                st["ref_max"] = max(st["ref_max"], float(np.abs(a).max()))
            kw = {
                "anchors": anchors,
                "strides": strides,
                "class_names": names,
                "info": info,
                "score_threshold": score_threshold,
                "iou_threshold": iou_threshold,
            }
            (det_f,) = postprocess(maps_f, **kw)
            (det_q,) = postprocess(maps_q, **kw)
            n_f += len(det_f)
            n_q += len(det_q)
            n_m += _match_count(det_f, det_q, match_iou)
    if count == 0:
        raise ValueError("compare: no images")
    raw = {}
    for o, st in acc.items():
        sq = math.inf if st["noise"] == 0 else 10 * math.log10(max(st["sig"], 1e-300) / st["noise"])
        raw[o] = {
            "max_abs": st["max_abs"],
            "mean_abs": st["abs_sum"] / max(st["n"], 1),
            "sqnr_db": sq,
            "max_abs_fp32": st["ref_max"],
        }
    agreement = n_m / n_f if n_f else (1.0 if n_q == 0 else None)
    fb, qb = Path(fp32_onnx).stat().st_size, Path(int8_onnx).stat().st_size
    result: dict[str, Any] = {
        "images": count,
        "size_bytes": {"fp32": fb, "int8": qb},
        "size_ratio": fb / qb,
        "raw": raw,
        "min_sqnr_db": min(r["sqnr_db"] for r in raw.values()),
        "detections": {
            "fp32": n_f,
            "int8": n_q,
            "matched": n_m,
            "agreement": agreement,
            "extra": n_q - n_m,
            "score_threshold": score_threshold,
            "match_iou": match_iou,
        },
        "latency": {},
    }
    del s_f, s_q
    for t in threads:
        lat = interleaved_latency(
            {"fp32": fp32_onnx, "int8": int8_onnx},
            int(t),
            size,
            channels,
            warmup=warmup,
            repeats=repeats,
        )
        result["latency"][int(t)] = {
            **lat,
            "speedup": lat["fp32"]["median_ms"] / lat["int8"]["median_ms"],
        }
    return result


def evaluate_onnx(
    onnx_path: str | Path,
    dataset: str | Path,
    split: str = "val",
    *,
    count: int | None = None,
    score_threshold: float = 0.001,
    iou_threshold: float = 0.6,
    max_detections: int = 300,
    threads: int | None = None,
):
    """mAP of an exported model (fp32 or int8) on a data set split, through ONNX Runtime.

    Pre- and post-processing are the station's (:func:`preprocess`,
    :func:`postprocess`); boxes are compared in source pixels with
    :class:`trainer.evaluate.Evaluator`. Returns its :class:`~trainer.evaluate.EvalResult`
    (``.map50``, ``.map50_95``). ``count``: the first N images of the split (None: all).
    """
    from trainer.data.dataset import load_image
    from trainer.data.formats import read_dataset
    from trainer.evaluate import Evaluator
    from trainer.export import ort_session

    model = _load(onnx_path)
    input_name, size, channels = _input_geometry(model)
    meta = _decoded(_metadata(model))
    anchors = np.asarray(meta["slimspect.anchors"], dtype=np.float32).reshape(-1, 2)
    strides = meta["slimspect.strides"]
    names = meta["slimspect.class_names"]
    del model
    ds = read_dataset(Path(dataset))
    if split not in ds.splits:
        raise ValueError(f"data set {dataset} has no split {split!r} ({', '.join(ds.splits)})")
    if len(ds.names) != len(names):
        raise ValueError(f"data set has {len(ds.names)} classes, the model {len(names)}")
    samples = ds.splits[split][:count] if count else ds.splits[split]
    session = ort_session(onnx_path, threads)
    outs = [o.name for o in session.get_outputs()]
    ev = Evaluator(names)
    for sample in samples:
        img = load_image(ds.image_path(sample), gray=channels == 1)
        if img is None:
            raise ValueError(f"cannot read {ds.image_path(sample)}")
        x, info = preprocess(img, size, channels=channels, source_order="bgr")
        maps = session.run(outs, {input_name: x})
        (det,) = postprocess(
            maps,
            anchors=anchors,
            strides=strides,
            class_names=names,
            info=info,
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            max_detections=max_detections,
        )
        ev.update(det, sample.boxes, sample.classes)
    return ev.compute()


# --------------------------------------------------------------------------------------
# The decision
# --------------------------------------------------------------------------------------


def _median_ms(lat: Any) -> dict[int | str, float]:
    """Latency as {key: median ms}: a number, an ort_latency dict, or {threads: either}."""
    if isinstance(lat, (int, float)):
        return {"-": float(lat)}
    if isinstance(lat, Mapping):
        if "median_ms" in lat:
            return {lat.get("threads", "-"): float(lat["median_ms"])}
        out: dict[int | str, float] = {}
        for key, value in lat.items():
            (v,) = _median_ms(value).values()
            out[key] = v
        return out
    raise TypeError(f"latency must be ms, an ort_latency dict or {{threads: ...}}, not {lat!r}")


def choose_default(
    report: QuantReport | None,
    fp32_latency: Any,
    int8_latency: Any,
    map_fp32: float | None,
    map_int8: float | None,
    max_map_drop: float = 0.01,
    *,
    min_speedup: float = 1.0,
) -> DefaultChoice:
    """``onnx-int8`` only if it is faster AND loses at most ``max_map_drop`` mAP50.

    Latencies: median ms, :func:`trainer.bench.ort_latency` dicts, or ``{threads: either}``
    (then int8 must be faster at every thread count both were timed with). "Faster" means
    ``fp32 / int8 > min_speedup`` (1.0: strictly faster; the pipeline may ask for a margin
    above its timing noise). mAP50 as fractions in [0, 1] (0.01 = one point); a missing
    mAP (None or nan) or a missing report means int8 is not proven and fp32 stays.
    """
    if report is None:
        return DefaultChoice(FORMAT_FP32, "no INT8 model (quantization did not run)")
    f, q = _median_ms(fp32_latency), _median_ms(int8_latency)
    common = [k for k in f if k in q]
    if not common and len(f) == len(q) == 1:  # one number each, thread counts unstated
        f, q = {"-": next(iter(f.values()))}, {"-": next(iter(q.values()))}
        common = ["-"]
    if not common:
        return DefaultChoice(FORMAT_FP32, "fp32 and int8 were not timed at the same threads")
    speed = {k: f[k] / q[k] if q[k] > 0 else math.inf for k in common}
    speed_txt = ", ".join(
        f"{'' if k == '-' else f'{k} thread(s): '}{f[k]:.1f} -> {q[k]:.1f} ms ({speed[k]:.2f}x)"
        for k in common
    )
    if any(s <= min_speedup for s in speed.values()):
        return DefaultChoice(
            FORMAT_FP32,
            f"INT8 is not faster ({speed_txt}; needs > {min_speedup:.2f}x): keep fp32",
        )
    if map_fp32 is None or map_int8 is None or math.isnan(map_fp32) or math.isnan(map_int8):
        return DefaultChoice(
            FORMAT_FP32, f"INT8 is faster ({speed_txt}) but its mAP50 was not measured: keep fp32"
        )
    drop = map_fp32 - map_int8
    if drop > max_map_drop + 1e-12:
        return DefaultChoice(
            FORMAT_FP32,
            f"INT8 loses {drop * 100:.2f} mAP50 points ({map_fp32:.4f} -> {map_int8:.4f}; "
            f"allowed {max_map_drop * 100:.2f}) although faster ({speed_txt}): keep fp32",
        )
    return DefaultChoice(
        FORMAT_INT8,
        f"INT8 is faster ({speed_txt}), {report.size_ratio:.1f}x smaller and mAP50 "
        f"{map_fp32:.4f} -> {map_int8:.4f} (drop {drop * 100:.2f} points <= "
        f"{max_map_drop * 100:.2f})",
    )


def write_json(path: str | Path, data: Any) -> None:
    """JSON with inf/nan written as strings (strict JSON readers reject the bare tokens)."""

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, Mapping):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (np.floating, np.integer)):
            return clean(v.item())
        if isinstance(v, Path):
            return str(v)
        return v

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(clean(data), indent=2) + "\n")


__all__ = [
    "DEFAULT_OP_TYPES",
    "FORMAT_FP32",
    "FORMAT_INT8",
    "DefaultChoice",
    "ImageCalibrationReader",
    "LayerSensitivity",
    "QuantReport",
    "QuantizationError",
    "calibration_tensors",
    "choose_default",
    "compare",
    "cpu_int8_features",
    "evaluate_onnx",
    "head_conv_nodes",
    "interleaved_latency",
    "layer_sensitivity",
    "pick_sensitive",
    "quantize_int8",
    "sqnr_db",
    "write_json",
]
