"""The whole compression chain in one call, resumable: sparse -> prune -> distill -> export
(fp32 ONNX + INT8) -> bench.

    from trainer.compress.chain import compress
    result = compress("runs/train/weights/best.pt", out_dir="runs/compress",
                      sparse_epochs=30, s=1e-3, percent=50, layers=2, distill_epochs=20)
    result.rows            # the table: baseline, sparse, pruned, distilled, distilled-int8
    result.default_format  # onnx-int8 only when it is faster AND within the mAP budget

Folders (``out_dir/``)
----------------------
* ``sparse/``: a training run (``weights/last.pt``: the sparse model, read by pruning and
  used as the teacher; ``sparsity.csv``, ``gamma/``).
* ``prune/``: ``weights/pruned.pt`` (new spec, loadable alone), ``prune.json``,
  ``gamma.png``, ``channels.png``.
* ``distill/``: a training run; ``weights/best.pt`` is the student that is exported.
* ``export/``: ``model.onnx`` (fp32), ``model-int8.onnx`` (ORT static QDQ, calibrated on
  ``calibration_images`` images of the TRAINING split), ``quant.json`` (the quantization
  report, fp32-vs-int8 comparison and the format decision).
* ``bench/``: one ``<row>.json`` per measured row (an interrupted bench goes on where it
  stopped); the table itself is ``out_dir/bench.json`` and ``out_dir/bench.md``, and
  ``out_dir/channels.png`` shows the channels kept per conv.

Every stage folder gets ``done.json`` when, and only when, the stage finished: the
stage's settings, an id, the ids of the stages it was built from, its outputs (paths
relative to ``out_dir``), start/finish times and seconds, and what it found. Rerunning
with the same ``out_dir``:

* a finished stage with the same settings, whose outputs exist and whose inputs are the
  finished upstream stages it was built from, is skipped;
* a finished stage with OTHER settings is an error (:class:`CompressError`, naming the
  settings that differ): results are never overwritten by a changed command; remove the
  stage folder (later stages are redone with it) or choose another ``out_dir``;
* a stage that started but did not finish is redone; a training stage (sparse, distill)
  interrupted with the same settings resumes from its ``weights/last.pt`` instead;
* once a stage runs, every later stage runs too (their ``done.json`` are removed when it
  starts, so a crash cannot leave a stale "done" behind a redone stage).

Training settings
-----------------
Both trainings start from the baseline's ``train_args`` (optimizer, lr, augmentation...),
then ``data``, ``overrides`` (dotted keys, ``--set``), ``imgsz``, ``batch`` and ``device``;
``patience`` is switched off (early stopping on the mAP that sparse training lowers on
purpose would end it) unless ``overrides`` sets it. ``device`` is a machine setting: it
may change between a run and its rerun; every other setting is part of the stage's record.

The format decision
-------------------
:func:`trainer.compress.quantize.choose_default`: INT8 is the default format only when it
is faster at every thread count (fp32 and int8 timed alternately, run by run, by
:func:`~trainer.compress.quantize.compare`: the ratio is the evidence on a shared
machine) AND loses at most ``int8_max_map_drop`` mAP50 (ONNX Runtime on the ``split``);
otherwise fp32. The decision and its reason go to ``export/done.json``, ``quant.json``
and ``bench.json``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "STAGES",
    "CompressError",
    "CompressResult",
    "StageContext",
    "bench_stage",
    "compress",
    "export_stage",
    "hms",
    "prune_stage",
    "read_done",
    "resolve_eval_split",
    "settings_diff",
]

STAGES = ("sparse", "prune", "distill", "export", "bench")
DONE = "done.json"
STARTED = "started.json"
ROW_NAMES = ("baseline", "sparse", "pruned", "distilled", "distilled-int8")

# settings of the machine, not of a stage: they may change between a run and its rerun
_MACHINE_KEYS = ("device", "workers", "verbose", "plots", "project", "name", "exist_ok")


class CompressError(ValueError):
    """A problem the user can fix (conflicting options, a changed rerun, missing inputs)."""


@dataclass
class CompressResult:
    """What :func:`compress` produced (``records``: each stage's ``done.json``)."""

    out_dir: Path
    records: dict[str, dict[str, Any]]
    ran: list[str]
    skipped: list[str]
    rows: list[dict[str, Any]]
    default_format: str
    default_reason: str
    bench_json: Path
    bench_md: Path
    channels_png: Path
    seconds: float
    files: dict[str, Path | None] = field(default_factory=dict)  # sparse, pruned, ...


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def hms(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _plain(value: Any) -> Any:
    """JSON round trip: tuples become lists, paths strings (what done.json will hold)."""
    return json.loads(json.dumps(value, default=str))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    """Atomically (a reader sees the old file or the whole new one)."""
    from trainer.compress.quantize import write_json

    tmp = path.with_name(path.name + ".tmp")
    write_json(tmp, data)
    tmp.replace(path)


def read_done(stage_dir: str | Path) -> dict[str, Any] | None:
    """The stage's completion record, or None when it has none (or an unreadable one)."""
    path = Path(stage_dir) / DONE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def settings_diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += settings_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _train_config(meta, data, imgsz, batch, device, overrides):
    """The TrainConfig of the training stages: the baseline's ``train_args``, then the
    given data, ``overrides`` (dotted keys, as ``--set``), imgsz, batch and device."""
    from trainer.config import TrainConfig, set_dotted

    args = copy.deepcopy(dict(meta.get("train_args") or {}))
    args["patience"] = None  # early stopping on a falling mAP would end sparse training
    if data is not None:
        args["data"] = str(Path(data).resolve())
    if not args.get("data"):
        raise CompressError("the baseline checkpoint does not say its data set: pass data")
    for key, value in (overrides or {}).items():
        set_dotted(args, key, value)
    for key, value in (("imgsz", imgsz), ("batch", batch), ("device", device)):
        if value is not None:
            args[key] = value
    return TrainConfig.from_dict(args)


def _stage_config(config) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in _MACHINE_KEYS}


def resolve_eval_split(data: str, split: str) -> str:
    from trainer.data.formats import read_dataset
    from trainer.engine import pick_val_split

    ds = read_dataset(Path(data))
    return split if ds.splits.get(split) else pick_val_split(ds)


# --------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------


@dataclass
class StageContext:
    """What a stage function reads: the output folder (outputs are recorded relative to
    it), the console, and the finished stages' records (``done.json`` contents)."""

    out: Path
    console: Any
    resume_ok: bool = True  # no earlier stage ran in this call: a partial stage may resume
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    def path(self, rel: str | None) -> Path | None:
        return None if rel is None else self.out / rel

    def rel(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.out.resolve()).as_posix()


def _last_epoch(last: Path) -> int:
    import torch

    payload = torch.load(last, map_location="cpu", weights_only=True)
    return int((payload.get("metadata") or {}).get("epoch", 0))


def _train_stage(ctx: StageContext, stage_dir: Path, epochs: int, fresh, resume) -> None:
    """Run a training stage fresh, or resume it from its ``last.pt`` when it was
    interrupted with the same settings (``started.json``) and nothing upstream ran."""
    last = stage_dir / "weights" / "last.pt"
    if ctx.resume_ok and last.is_file():
        try:
            done_epochs = _last_epoch(last)
        except Exception:  # noqa: BLE001 - an unreadable last.pt: start again
            done_epochs = -1
        if done_epochs >= epochs:
            ctx.console.print(f"  training finished earlier ({done_epochs} epochs): {last}")
            return
        if done_epochs >= 1:
            ctx.console.print(f"  resuming from {last} (epoch {done_epochs} of {epochs})")
            resume(last)
            return
    fresh()


def compress(
    baseline_ckpt: str | Path,
    *,
    data: str | Path | None = None,
    out_dir: str | Path = "runs/compress",
    sparse_epochs: int = 30,
    s: float | str = 1e-3,
    schedule: str = "constant",
    proximal: bool = False,
    bn_lr_scale: float = 1.0,
    percent: float | None = None,
    max_map_drop: float | None = None,
    layers: int = 0,
    round_to: int = 8,
    min_keep_frac: float = 0.1,
    keep_by: str = "gamma",
    distill_epochs: int = 20,
    teacher: str = "sparse",
    temperature: float = 2.0,
    alpha: float = 0.5,
    feat_weight: float = 0.0,
    margin: float = 0.0,
    imgsz: int | None = None,
    batch: int | None = None,
    device: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    int8: bool = True,
    calibration_images: int = 64,
    int8_max_map_drop: float = 0.01,
    split: str = "val",
    threads: Sequence[int] = (1, 2),
    repeats: int = 20,
    warmup: int = 5,
    console=None,
) -> CompressResult:
    """Compress ``baseline_ckpt``: sparse training, pruning, distillation, fp32 + INT8 export,
    and the table of every stage. See the module docstring for folders and resuming.

    Args:
        data: the data set (default: the baseline's ``train_args["data"]``); mAP is
            measured on ``split`` (``val``; the engine's choice when it has none).
        sparse_epochs, s, schedule, proximal, bn_lr_scale: the sparse stage
            (:func:`trainer.compress.sparsity.sparse_train`).
        percent | max_map_drop, layers, round_to, min_keep_frac, keep_by: the prune stage, as
            ``slimspect prune`` (``max_map_drop``: largest percent whose mAP50 before
            fine-tuning stays within it, a fraction: 0.05 = 5 points).
        distill_epochs, teacher ("sparse": the sparse model; "baseline"), temperature,
            alpha (each of the objectness, class and box terms), feat_weight, margin: the
            distill stage (:func:`trainer.compress.distill.distill_train`).
        imgsz, batch, device, overrides: training settings over the baseline's
            ``train_args`` (``overrides``: dotted keys, as ``--set``), for both trainings.
        int8, calibration_images, int8_max_map_drop: quantization and the format rule.
        threads, repeats, warmup: latency timing (median of ``repeats`` after ``warmup``).
        console: a rich Console for progress (default: a new one).

    Raises:
        CompressError: conflicting options, missing files, a finished stage with other
            settings. ConfigError / DatasetError from the training engine as they come.
    """
    from rich.console import Console

    from trainer.model import load_checkpoint

    start_all = time.perf_counter()
    console = console or Console()
    baseline_ckpt = Path(baseline_ckpt)
    if not baseline_ckpt.is_file():
        raise CompressError(f"baseline checkpoint not found: {baseline_ckpt}")
    if percent is not None and max_map_drop is not None:
        raise CompressError("percent and max_map_drop exclude each other")
    if percent is None and max_map_drop is None and not layers:
        raise CompressError("nothing to prune: give percent, layers or max_map_drop")
    if teacher not in ("sparse", "baseline"):
        raise CompressError(f"teacher must be 'sparse' or 'baseline', not {teacher!r}")
    if data is not None and not Path(data).exists():
        raise CompressError(f"data not found: {data}")
    if sparse_epochs < 1 or distill_epochs < 1:
        raise CompressError("sparse_epochs and distill_epochs must be >= 1")
    try:
        _, base_meta = load_checkpoint(baseline_ckpt)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not our checkpoint"
        raise CompressError(
            f"{baseline_ckpt} is not a slimspect checkpoint: {type(exc).__name__}: {exc}"
        ) from None
    base_config = _train_config(base_meta, data, imgsz, batch, device, overrides)
    data_path = base_config.data
    if not Path(data_path).exists():
        raise CompressError(f"data not found: {data_path} (the baseline's; pass data)")
    eval_split = resolve_eval_split(data_path, split)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(out=out, console=console)
    baseline_abs = baseline_ckpt.resolve()
    machine = {"device": device} if device is not None else None

    sparse_cfg = base_config.updated(epochs=sparse_epochs)
    distill_cfg = base_config.updated(epochs=distill_epochs)
    settings: dict[str, dict[str, Any]] = {
        "sparse": {
            "baseline": str(baseline_abs),
            "baseline_sha256": _sha256(baseline_ckpt),
            "train": _stage_config(sparse_cfg),
            "s": s,
            "schedule": schedule,
            "proximal": proximal,
            "bn_lr_scale": bn_lr_scale,
        },
        "prune": {
            "percent": percent,
            "max_map_drop": max_map_drop,
            "layers": layers,
            "round_to": round_to,
            "min_keep_frac": min_keep_frac,
            "keep_by": keep_by,
            "split": eval_split,
        },
        "distill": {
            "train": _stage_config(distill_cfg),
            "teacher": teacher,
            "temperature": temperature,
            "alpha": alpha,
            "feat_weight": feat_weight,
            "margin": margin,
        },
        "export": {
            "int8": int8,
            "calibration_images": calibration_images,
            "int8_max_map_drop": int8_max_map_drop,
            "split": eval_split,
            "threads": list(threads),
            "repeats": repeats,
            "warmup": warmup,
        },
        "bench": {
            "split": eval_split,
            "threads": list(threads),
            "repeats": repeats,
            "warmup": warmup,
        },
    }
    upstream = {
        "sparse": [],
        "prune": ["sparse"],
        "distill": ["sparse", "prune"],
        "export": ["distill"],
        "bench": ["sparse", "prune", "distill", "export"],
    }

    # ---- the stages ------------------------------------------------------------------

    def run_sparse(stage_dir: Path) -> tuple[dict[str, str], dict[str, Any]]:
        from trainer.compress.sparsity import sparse_train

        def fresh():
            sparse_train(
                sparse_cfg,
                s=s,
                schedule=schedule,
                weights=baseline_abs,
                proximal=proximal,
                bn_lr_scale=bn_lr_scale,
                run_dir=stage_dir,
            )

        _train_stage(
            ctx, stage_dir, sparse_epochs, fresh, lambda last: sparse_train(machine, resume=last)
        )
        last = stage_dir / "weights" / "last.pt"
        return {"checkpoint": ctx.rel(last)}, {"epochs": _last_epoch(last)}

    def run_prune(stage_dir: Path) -> tuple[dict[str, str], dict[str, Any]]:
        return prune_stage(
            ctx,
            stage_dir,
            ctx.path(ctx.records["sparse"]["outputs"]["checkpoint"]),
            data_path,
            eval_split,
            percent=percent,
            max_map_drop=max_map_drop,
            layers=layers,
            round_to=round_to,
            min_keep_frac=min_keep_frac,
            keep_by=keep_by,
        )

    def run_distill(stage_dir: Path) -> tuple[dict[str, str], dict[str, Any]]:
        from trainer.compress.distill import distill_train

        sparse_ckpt = ctx.path(ctx.records["sparse"]["outputs"]["checkpoint"])
        teacher_ckpt = sparse_ckpt if teacher == "sparse" else baseline_abs
        student = ctx.path(ctx.records["prune"]["outputs"]["checkpoint"])
        options = {
            "temperature": temperature,
            "alpha_obj": alpha,
            "alpha_cls": alpha,
            "alpha_box": alpha,
            "feat_weight": feat_weight,
            "margin": margin,
        }

        def fresh():
            distill_train(distill_cfg, teacher_ckpt, student, run_dir=stage_dir, **options)

        def resume(last):
            distill_train(machine, teacher_ckpt, resume=last, **options)

        _train_stage(ctx, stage_dir, distill_epochs, fresh, resume)
        best = stage_dir / "weights" / "best.pt"
        return (
            {"checkpoint": ctx.rel(best), "last": ctx.rel(stage_dir / "weights" / "last.pt")},
            {"teacher": str(teacher_ckpt)},
        )

    def run_export(stage_dir: Path) -> tuple[dict[str, str], dict[str, Any]]:
        return export_stage(
            ctx,
            stage_dir,
            ctx.path(ctx.records["distill"]["outputs"]["checkpoint"]),
            data_path,
            eval_split,
            int8=int8,
            calibration_images=calibration_images,
            int8_max_map_drop=int8_max_map_drop,
            threads=threads,
            repeats=repeats,
            warmup=warmup,
        )

    def run_bench(stage_dir: Path) -> tuple[dict[str, str], dict[str, Any]]:
        return bench_stage(
            ctx,
            stage_dir,
            baseline_abs,
            data_path,
            eval_split,
            threads=threads,
            repeats=repeats,
            warmup=warmup,
            extra={"baseline": str(baseline_abs), "data": data_path, "split": eval_split},
        )

    runners: dict[str, Callable[[Path], tuple[dict[str, str], dict[str, Any]]]] = {
        "sparse": run_sparse,
        "prune": run_prune,
        "distill": run_distill,
        "export": run_export,
        "bench": run_bench,
    }
    titles = {
        "sparse": f"s={s if isinstance(s, str) else format(s, 'g')} {schedule}{' proximal' if proximal else ''}"
        + (f", BN lr x{bn_lr_scale:g}" if bn_lr_scale != 1 else "")
        + f", {sparse_epochs} epoch(s)",
        "prune": ", ".join(
            p
            for p in (
                f"{percent:g}% of channels" if percent is not None else "",
                f"largest percent within {max_map_drop * 100:g} mAP50 points"
                if max_map_drop is not None
                else "",
                f"{layers} residual block(s)" if layers else "",
            )
            if p
        ),
        "distill": f"from the {teacher} model, {distill_epochs} epoch(s)",
        "export": "fp32 ONNX" + (" + INT8" if int8 else ""),
        "bench": f"every stage on {eval_split}, median of {repeats} runs",
    }

    ran: list[str] = []
    skipped: list[str] = []
    n = len(STAGES)
    for i, name in enumerate(STAGES, 1):
        stage_dir = out / name
        wanted = _plain(settings[name])
        inputs = {u: ctx.records[u]["id"] for u in upstream[name]}
        record = read_done(stage_dir) if ctx.resume_ok else None
        why_redo = None
        if record is not None:
            changed = settings_diff(record.get("settings") or {}, wanted)
            if changed:
                raise CompressError(
                    f"{stage_dir} was finished with other settings ({'; '.join(changed)}): "
                    f"remove {stage_dir} to redo it and the stages after it, or use another "
                    "output folder"
                )
            missing = [p for p in (record.get("outputs") or {}).values() if not (out / p).exists()]
            if missing:
                why_redo = f"its output {missing[0]} is missing"
            elif record.get("inputs") != inputs:
                why_redo = "it was built from other upstream results"
            else:
                console.print(
                    f"[dim]stage {i}/{n} {name}: skipped, finished {record.get('finished_at')} "
                    f"in {hms(record.get('seconds', 0.0))} ({stage_dir / DONE})[/]"
                )
                ctx.records[name] = record
                skipped.append(name)
                continue
        # this stage runs: every later stage is stale from now on
        for later in STAGES[i:]:
            (out / later / DONE).unlink(missing_ok=True)
        started = _read_json(stage_dir / STARTED)
        partial_ok = (
            ctx.resume_ok
            and why_redo is None
            and started is not None
            and started.get("settings") == wanted
            and started.get("inputs") == inputs
        )
        ctx.resume_ok = partial_ok
        if not partial_ok and stage_dir.exists():
            shutil.rmtree(stage_dir)
        stage_dir.mkdir(parents=True, exist_ok=True)
        started_at = _now()
        _write_json(stage_dir / STARTED, {"settings": wanted, "inputs": inputs, "at": started_at})
        console.rule(f"[bold cyan]stage {i}/{n}: {name}[/] [dim]{titles[name]}[/]")
        if why_redo:
            console.print(f"  redoing {name}: {why_redo}")
        t0 = time.perf_counter()
        outputs, info = runners[name](stage_dir)
        seconds = time.perf_counter() - t0
        record = {
            "stage": name,
            "id": uuid.uuid4().hex,
            "settings": wanted,
            "inputs": inputs,
            "outputs": outputs,
            "started_at": started_at,
            "finished_at": _now(),
            "seconds": seconds,
            **info,
        }
        _write_json(stage_dir / DONE, record)
        ctx.records[name] = record
        ctx.resume_ok = False  # later stages run too
        ran.append(name)
        console.print(f"[bold green]stage {i}/{n} {name}: done in {hms(seconds)}[/]")

    # ---- the table -------------------------------------------------------------------
    from trainer.compress.table import print_table

    bench = ctx.records["bench"]
    bench_json = out / bench["outputs"]["json"]
    rows = json.loads(bench_json.read_text())["rows"]
    export = ctx.records["export"]
    print_table(rows, console, title=f"compression of {baseline_ckpt.name}")
    console.print(
        f"default format: [bold]{export['default_format']}[/] ({export['default_reason']})"
    )
    total = time.perf_counter() - start_all
    console.print(
        f"{len(ran)} stage(s) ran, {len(skipped)} skipped, in {hms(total)}; "
        f"table: {bench_json}, {out / bench['outputs']['markdown']}"
    )
    files = {
        "sparse": ctx.path(ctx.records["sparse"]["outputs"]["checkpoint"]),
        "pruned": ctx.path(ctx.records["prune"]["outputs"]["checkpoint"]),
        "distilled": ctx.path(ctx.records["distill"]["outputs"]["checkpoint"]),
        "fp32_onnx": ctx.path(export["outputs"]["fp32"]),
        "int8_onnx": ctx.path(export["outputs"].get("int8")),
        "default_model": ctx.path(export["default_model"]),
    }
    return CompressResult(
        out_dir=out,
        records=ctx.records,
        ran=ran,
        skipped=skipped,
        rows=rows,
        default_format=export["default_format"],
        default_reason=export["default_reason"],
        bench_json=bench_json,
        bench_md=out / bench["outputs"]["markdown"],
        channels_png=out / bench["outputs"]["channels"],
        seconds=total,
        files=files,
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def prune_stage(
    ctx: StageContext,
    stage_dir: Path,
    sparse_ckpt: Path,
    data: str,
    split: str,
    *,
    percent,
    max_map_drop,
    layers,
    round_to,
    min_keep_frac,
    keep_by="gamma",
) -> tuple[dict[str, str], dict[str, Any]]:
    """As ``slimspect prune`` (layers first, then channels; optional mAP-budget search)."""
    from trainer.compress.prune_run import prune_run
    from trainer.data.formats import read_dataset

    summary = prune_run(
        sparse_ckpt, stage_dir, percent=percent, layers=layers, max_map_drop=max_map_drop,
        round_to=round_to, min_keep_frac=min_keep_frac, keep_by=keep_by,
        data=read_dataset(Path(data)),
        split=split, log=lambda line: ctx.console.print(f"  {line}"),
    )  # fmt: skip
    outputs = {
        "checkpoint": ctx.rel(stage_dir / "weights" / "pruned.pt"),
        "report": ctx.rel(stage_dir / "prune.json"),
        "channels": ctx.rel(stage_dir / "channels.png"),
    }
    return outputs, summary


def export_stage(
    ctx: StageContext,
    stage_dir: Path,
    student: Path,
    data: str,
    split: str,
    *,
    int8: bool,
    calibration_images: int,
    int8_max_map_drop: float,
    threads: Sequence[int],
    repeats: int,
    warmup: int,
) -> tuple[dict[str, str], dict[str, Any]]:
    """fp32 ONNX of the student; INT8 (training-split calibration) and the format decision."""
    from trainer.compress.quantize import (
        FORMAT_FP32,
        FORMAT_INT8,
        DefaultChoice,
        calibration_tensors,
        choose_default,
        compare,
        evaluate_onnx,
        write_json,
    )
    from trainer.export import export_onnx, json_safe
    from trainer.model import load_checkpoint

    console = ctx.console
    model, meta = load_checkpoint(student)
    kept, _ = json_safe(meta)
    kept["source_checkpoint"] = ctx.rel(student)
    fp32 = export_onnx(model, stage_dir / "model.onnx", metadata=kept)
    console.print(f"  fp32: {fp32.path} ({fp32.size_mib:.2f} MiB)")
    outputs = {"fp32": ctx.rel(fp32.path)}
    if not int8:
        choice = DefaultChoice(FORMAT_FP32, "INT8 not asked for (--no-int8)")
        quant: dict[str, Any] = {"decision": choice._asdict()}
    else:
        int8_path = stage_dir / "model-int8.onnx"
        report = _quantize_train_split(fp32.path, int8_path, data, calibration_images)
        console.print(f"  int8: {report.summary()}")
        spec = model.spec
        images = calibration_tensors(data, spec.input_size, spec.in_channels, split=split, count=8)
        cmp = compare(fp32.path, int8_path, images, threads, warmup=warmup, repeats=repeats)
        lat_f = {t: v["fp32"] for t, v in cmp["latency"].items()}
        lat_q = {t: v["int8"] for t, v in cmp["latency"].items()}
        map_f = float(evaluate_onnx(fp32.path, data, split).map50)
        map_q = float(evaluate_onnx(int8_path, data, split).map50)
        choice = choose_default(report, lat_f, lat_q, map_f, map_q, int8_max_map_drop)
        quant = {
            "report": report.to_dict(),
            "compare": cmp,
            "map50": {"fp32": map_f, "int8": map_q, "split": split},
            "decision": choice._asdict(),
        }
        outputs["int8"] = ctx.rel(int8_path)
    write_json(stage_dir / "quant.json", quant)
    outputs["report"] = ctx.rel(stage_dir / "quant.json")
    default_model = outputs["int8"] if choice.format == FORMAT_INT8 else outputs["fp32"]
    console.print(f"  default format: {choice.format} ({choice.reason})")
    return outputs, {
        "default_format": choice.format,
        "default_reason": choice.reason,
        "default_model": default_model,
    }


def _quantize_train_split(fp32: Path, out: Path, data: str, count: int):
    """INT8 with calibration on ``count`` images of the training split (all splits when the
    data set has no ``train`` split)."""
    from trainer.compress.quantize import quantize_int8
    from trainer.data.formats import read_dataset

    ds = read_dataset(Path(data))
    calib_split = "train" if ds.splits.get("train") else None
    return quantize_int8(fp32, out, data, split=calib_split, count=count)


def bench_stage(
    ctx: StageContext,
    stage_dir: Path,
    baseline: Path,
    data: str,
    split: str,
    *,
    threads: Sequence[int],
    repeats: int,
    warmup: int,
    extra: Mapping[str, Any],
) -> tuple[dict[str, str], dict[str, Any]]:
    """One row per stage (cached in ``bench/<row>.json``; the latencies always measured
    together, side by side), then bench.json/.md and channels.png."""
    from trainer.compress.table import machine_info, stage_rows, write_table

    console, rec, out = ctx.console, ctx.records, ctx.out
    export = rec["export"]["outputs"]
    plan: list[tuple[str, dict[str, Path]]] = [
        ("baseline", {"checkpoint": baseline}),
        ("sparse", {"checkpoint": ctx.path(rec["sparse"]["outputs"]["checkpoint"])}),
        ("pruned", {"checkpoint": ctx.path(rec["prune"]["outputs"]["checkpoint"])}),
        ("distilled", {"onnx": ctx.path(export["fp32"])}),
    ]
    if export.get("int8"):
        plan.append(("distilled-int8", {"onnx": ctx.path(export["int8"])}))
    known = {}  # rows measured before a restart: their size and mAP stand
    for name, _ in plan:
        row = _read_json(stage_dir / f"{name}.json")
        if row is not None:
            known[name] = row
    t0 = time.perf_counter()

    def measured(row: dict[str, Any]) -> None:
        _write_json(stage_dir / f"{row['stage']}.json", row)
        m = row.get("map50")
        console.print(
            f"  {row['stage']}: {row['params']:,} params, {row['size_mb']:.2f} MiB"
            + (f", mAP50 {m:.4f}" if m is not None else "")
            + (" (measured before)" if row["stage"] in known else "")
        )

    rows = stage_rows(
        plan, data=data, split=split, threads=threads, repeats=repeats, warmup=warmup,
        known=known, on_row=measured,
    )  # fmt: skip
    for row in rows:
        _write_json(stage_dir / f"{row['stage']}.json", row)
    console.print(
        "  latency, every model side by side: "
        + "; ".join(
            f"{row['stage']} "
            + " / ".join(f"{v:.1f}" for k, v in row.items() if k.startswith("latency_ms_"))
            for row in rows
        )
        + f" ms ({', '.join(f'{t} thread(s)' for t in threads)}; {hms(time.perf_counter() - t0)})"
    )

    channels = out / "channels.png"
    shutil.copyfile(ctx.path(rec["prune"]["outputs"]["channels"]), channels)
    ex = rec["export"]
    quant = _read_json(ctx.path(export["report"])) or {}
    table_extra = {
        **extra,
        "default_format": ex["default_format"],
        "default_reason": ex["default_reason"],
        "default_model": ex["default_model"],
        "int8": None
        if "compare" not in quant
        else {
            "map50": quant.get("map50"),
            "latency": {
                t: {
                    "fp32_ms": v["fp32"]["median_ms"],
                    "int8_ms": v["int8"]["median_ms"],
                    "speedup": v["speedup"],
                }
                for t, v in quant["compare"]["latency"].items()
            },
            "size_ratio": quant["compare"].get("size_ratio"),
            "detection_agreement": quant["compare"]["detections"].get("agreement"),
        },
        "stages": {
            name: {"seconds": r.get("seconds"), "finished_at": r.get("finished_at")}
            for name, r in rec.items()
        },
        "prune": {
            k: rec["prune"].get(k)
            for k in (
                "percent",
                "layers",
                "params_before",
                "params_after",
                "map50_before",
                "map50_after_prune",
            )
        },
        "timing": {"threads": list(threads), "repeats": repeats, "warmup": warmup},
        "machine": machine_info(),
    }
    write_table(rows, out / "bench.json", out / "bench.md", table_extra)
    outputs = {"json": "bench.json", "markdown": "bench.md", "channels": "channels.png"}
    return outputs, {"rows": [r["stage"] for r in rows]}
