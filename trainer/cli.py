"""``slimspect train | val | predict | anchors``: the engines, with Ultralytics-like options.

    slimspect train --data data/steel --model yolov4-s --epochs 30 --imgsz 256
    slimspect train --cfg train.yaml --set augment.mosaic.p=0 --set lr0=0.005
    slimspect train --resume runs/train          # or runs/train/weights/last.pt
    slimspect val --model runs/train/weights/best.pt [--data data/steel]
    slimspect predict --model best.pt|model.onnx --source shots/ | line3.mp4
    slimspect anchors data/steel --imgsz 256

Every failure the user can fix is one line (``Error: ...``), no traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

__all__ = ["anchors", "predict", "train", "val"]

_CTX = {"help_option_names": ["-h", "--help"]}


def _user_errors() -> tuple[type[Exception], ...]:
    from trainer.config import ConfigError
    from trainer.data.problems import DatasetError
    from trainer.model import SpecError, WeightsMismatchError

    return ConfigError, DatasetError, SpecError, WeightsMismatchError, FileNotFoundError


def _fail(exc: Exception) -> click.ClickException:
    from trainer.data.problems import DatasetError

    message = str(exc).replace("\n", " ")
    if isinstance(exc, DatasetError):
        message += " (run 'slimspect data check' to list every problem)"
    return click.ClickException(message)


def _read_data(path: str | Path):
    from trainer.data.formats import read_dataset

    path = Path(path)
    if not path.exists():
        raise click.ClickException(f"data not found: {path}")
    try:
        return read_dataset(path)
    except _user_errors() as exc:
        raise _fail(exc) from None


def _load_checkpoint(path: Path, device: str = "cpu"):
    from trainer.model import load_checkpoint

    if not path.is_file():
        raise click.ClickException(f"checkpoint not found: {path}")
    try:
        return load_checkpoint(path, map_location=device)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not our checkpoint"
        raise click.ClickException(
            f"{path} is not a slimspect checkpoint: {type(exc).__name__}: {exc}"
        ) from None


def _run_dir(project: str, name: str, exist_ok: bool) -> Path:
    from trainer.engine import increment_path

    return increment_path(Path(project) / name, exist_ok)


# ---------------------------------------------------------------------------------------------
# train


_TRAIN_OPTIONS = [
    click.option(
        "--cfg",
        type=click.Path(path_type=Path),
        default=None,
        help="YAML with any training settings (see args.yaml of a run); options override it.",
    ),
    click.option("--data", default=None, help="Dataset YAML or folder (YOLO, COCO, VOC, NEU-DET)."),
    click.option(
        "--model",
        default=None,
        help="Variant (yolov4, yolov4-m, yolov4-s, yolov4-n), spec .yaml/.json, or a .pt "
        "checkpoint to start from. [default: yolov4-s]",
    ),
    click.option("--epochs", type=click.IntRange(min=1), default=None, help="[default: 100]"),
    click.option(
        "--imgsz",
        type=click.IntRange(min=32),
        default=None,
        help="Input side in pixels, a multiple of 32. [default: 256]",
    ),
    click.option("--batch", type=click.IntRange(min=1), default=None, help="[default: 16]"),
    click.option("--device", default=None, help="auto, cpu, cuda or cuda:N. [default: auto]"),
    click.option(
        "--workers",
        type=click.IntRange(min=0),
        default=None,
        help="DataLoader worker processes. [default: 0 on CPU, min(8, CPUs) on CUDA]",
    ),
    click.option(
        "--optimizer", type=click.Choice(["SGD", "AdamW"]), default=None, help="[default: SGD]"
    ),
    click.option(
        "--lr0",
        type=float,
        default=None,
        help="Initial learning rate. [default: 0.01 SGD, 0.001 AdamW]",
    ),
    click.option(
        "--anchors",
        type=click.Choice(["auto", "default", "spec"]),
        default=None,
        help="auto: K-means++ on the labels (a variant) or the spec's; default: YOLOv4's "
        "scaled to imgsz; spec: as the spec says. [default: auto]",
    ),
    click.option(
        "--patience",
        type=click.IntRange(min=1),
        default=None,
        help="Stop after this many epochs without a better fitness.",
    ),
    click.option("--seed", type=click.IntRange(min=0), default=None, help="[default: 0]"),
    click.option("--project", default=None, help="Parent folder of runs. [default: runs]"),
    click.option(
        "--name", default=None, help="Run name; train2, train3... if taken. [default: train]"
    ),
    click.option("--exist-ok", is_flag=True, default=None, help="Reuse project/name if it exists."),
    click.option(
        "--resume",
        type=click.Path(path_type=Path),
        default=None,
        help="Continue a stopped run exactly: its last.pt or its run folder.",
    ),
    click.option(
        "--set",
        "-o",
        "sets",
        multiple=True,
        metavar="KEY=VALUE",
        help="Any other setting, dotted for sections: -o augment.mosaic.p=0 -o ema=false.",
    ),
]


def train_options(command):
    """The options of ``train``, shared by every command that runs the training loop."""
    for option in reversed(_TRAIN_OPTIONS):
        command = option(command)
    return command


_MACHINE_KEYS = ("device", "workers")


def run_training(run, cfg, sets, resume, **options) -> None:
    """Build the TrainConfig from ``--cfg``, ``-o`` and the options, then ``run(config)``;
    with ``--resume``, ``run(machine_settings_or_None, resume=resume)``. ``run`` is
    :func:`trainer.engine.train` or a wrapper with its signature (sparse, distill)."""
    from trainer.config import TrainConfig, parse_overrides

    given = {k: v for k, v in options.items() if v is not None}
    try:
        if resume is not None:
            machine = {k: given.pop(k) for k in _MACHINE_KEYS if k in given}
            extra = [f"--{k.replace('_', '-')}" for k in given]
            extra += ["--set"] * bool(sets) + ["--cfg"] * bool(cfg)
            if extra:
                raise click.ClickException(
                    "--resume continues the run with its own args.yaml; only --device and "
                    f"--workers may change (got {', '.join(extra)})"
                )
            run(machine or None, resume=resume)
            return
        overrides: dict[str, Any] = {**parse_overrides(list(sets)), **given}
        run(TrainConfig.load(cfg, overrides))
    except _user_errors() as exc:
        raise _fail(exc) from None


@click.command("train", context_settings=_CTX)
@train_options
def train(cfg, sets, resume, **options) -> None:
    """Train a YOLOv4-family detector; writes a run folder (args.yaml, results.csv, weights)."""
    from trainer.engine import train as run

    run_training(run, cfg, sets, resume, **options)


# ---------------------------------------------------------------------------------------------
# val


@click.command("val", context_settings=_CTX)
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Checkpoint (.pt) to evaluate.",
)
@click.option(
    "--data",
    default=None,
    help="Dataset YAML or folder. [default: the one the checkpoint was trained on]",
)
@click.option("--split", default="val", show_default=True, help="Split to evaluate.")
@click.option(
    "--imgsz", type=click.IntRange(min=32), default=None, help="Input side. [default: the model's]"
)
@click.option("--batch", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--conf",
    type=click.FloatRange(0, 1),
    default=0.001,
    show_default=True,
    help="Score threshold (low: the whole PR curve).",
)
@click.option(
    "--iou", type=click.FloatRange(0, 1), default=0.6, show_default=True, help="NMS IoU threshold."
)
@click.option("--device", default="cpu", show_default=True)
@click.option("--project", default="runs", show_default=True)
@click.option("--name", default="val", show_default=True)
@click.option("--exist-ok", is_flag=True, help="Reuse project/name if it exists.")
def val(model_path, data, split, imgsz, batch, conf, iou, device, project, name, exist_ok) -> None:
    """Evaluate a checkpoint: P, R, mAP50, mAP50-95 per class; PR curve, confusion matrix."""
    import json

    from rich.console import Console

    from trainer.evaluate import print_table
    from trainer.validate import validate

    model, meta = _load_checkpoint(model_path, device)
    if data is None:
        data = (meta.get("train_args") or {}).get("data")
        if data is None:
            raise click.ClickException(f"{model_path} does not say its data set: pass --data")
    ds = _read_data(data)
    if split not in ds.splits:
        raise click.ClickException(
            f"{data}: no split {split!r} (splits: {', '.join(ds.splits) or 'none'})"
        )
    if imgsz is not None and imgsz % 32:
        raise click.ClickException(f"--imgsz must be a multiple of 32, got {imgsz}")
    out = _run_dir(project, name, exist_ok)
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = validate(model, ds, split, imgsz, conf, iou, batch, plots_dir=out)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    (out / "metrics.json").write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    console = Console()
    print_table(result, console)
    console.print(f"results saved to {out}")


# ---------------------------------------------------------------------------------------------
# predict


@click.command("predict", context_settings=_CTX)
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Checkpoint (.pt, torch) or exported model (.onnx, ONNX Runtime).",
)
@click.option(
    "--source",
    required=True,
    type=click.Path(path_type=Path),
    help="An image, a video (mp4, avi, ...) or a folder of them.",
)
@click.option(
    "--conf",
    type=click.FloatRange(0, 1),
    default=None,
    help="Score threshold. [default: the model's, else 0.25]",
)
@click.option(
    "--iou",
    type=click.FloatRange(0, 1),
    default=None,
    help="NMS IoU threshold. [default: the model's, else 0.45]",
)
@click.option("--max-det", type=click.IntRange(min=1), default=300, show_default=True)
@click.option(
    "--vid-stride",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Run on every n-th video frame.",
)
@click.option("--device", default="cpu", show_default=True, help="Torch device for a .pt.")
@click.option("--project", default="runs", show_default=True)
@click.option("--name", default="predict", show_default=True)
@click.option("--exist-ok", is_flag=True, help="Reuse project/name if it exists.")
@click.option("--no-save", is_flag=True, help="Print only; write no images or JSON.")
def predict(
    model_path, source, conf, iou, max_det, vid_stride, device, project, name, exist_ok, no_save
) -> None:
    """Detect defects in images or videos; saves annotated copies and predictions.json."""
    from collections import Counter

    from trainer.predict import Predictor
    from trainer.predict import predict as run

    if not model_path.is_file():
        raise click.ClickException(f"model not found: {model_path}")
    if not source.exists():
        raise click.ClickException(f"source not found: {source}")
    try:
        predictor = Predictor(model_path, device)
    except Exception as exc:  # noqa: BLE001 - unreadable model: one line
        raise click.ClickException(
            f"cannot load {model_path}: {type(exc).__name__}: {exc}"
        ) from None
    out = None if no_save else _run_dir(project, name, exist_ok)
    try:
        results = run(
            predictor,
            source,
            conf=conf,
            iou=iou,
            max_det=max_det,
            save_dir=out,
            vid_stride=vid_stride,
        )
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    per_source: dict[str, list] = {}
    for r in results:
        per_source.setdefault(r.source, []).append(r)
    for src, rs in per_source.items():
        counts = Counter(predictor.class_names[int(k)] for r in rs for k in r.detections[:, 5])
        what = ", ".join(f"{n} {c}" for c, n in sorted(counts.items())) or "no detections"
        frames = f" ({len(rs)} frames)" if rs[0].frame is not None else ""
        click.echo(f"{src}{frames}: {what}")
    if out is not None:
        click.echo(f"results saved to {out}")


# ---------------------------------------------------------------------------------------------
# anchors


@click.command("anchors", context_settings=_CTX)
@click.argument("data", type=click.Path(path_type=Path))
@click.option(
    "--imgsz",
    type=click.IntRange(min=32),
    default=256,
    show_default=True,
    help="Training input side: label sizes are measured after the letterbox.",
)
@click.option(
    "--k",
    "k",
    type=click.IntRange(min=1),
    default=9,
    show_default=True,
    help="Number of anchors (3 per scale).",
)
@click.option(
    "--split",
    default="train",
    show_default=True,
    help="Split whose labels are clustered (all splits if missing).",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--json",
    "json_out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the report as JSON.",
)
def anchors(data, imgsz, k, split, seed, json_out) -> None:
    """K-means++ anchors (1 - IoU) of DATA's labels beside YOLOv4's: mean IoU and BPR."""
    import json

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from trainer.anchors import compare_report, wh_from_boxes

    ds = _read_data(data)
    samples = ds.splits.get(split) or [s for _, s in ds.samples()]
    boxes = [s.boxes for s in samples if len(s.boxes)]
    if not boxes:
        raise click.ClickException(f"{data}: no labelled boxes to cluster")
    sizes = [np.tile([s.width, s.height], (len(s.boxes), 1)) for s in samples if len(s.boxes)]
    wh = wh_from_boxes(np.concatenate(boxes), np.concatenate(sizes), imgsz)
    try:
        report = compare_report(wh, imgsz, k=k, seed=seed)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None

    table = Table(title=f"anchors at {imgsz} px, {report['n_labels']} labels", header_style="bold")
    table.add_column("")
    table.add_column("anchors (w, h) px, small to large")
    for col in ("mean IoU", "BPR", "anchors/label"):
        table.add_column(col, justify="right")
    for key, label in (("ours", "K-means++"), ("default", "YOLOv4 default")):
        entry = report[key]
        text = "  ".join(f"{w:g},{h:g}" for w, h in entry["anchors"])
        table.add_row(
            label,
            text,
            f"{entry['mean_iou']:.3f}",
            f"{entry['bpr']:.3f}",
            f"{entry['anchors_per_label']:.2f}",
        )
    table.caption = (
        f"BPR: share of labels within {report['ratio_threshold']:g}x of some anchor "
        "on both sides (what the loss can assign)"
    )
    Console().print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {json_out}")
