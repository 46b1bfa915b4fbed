"""The sweep stage: Ray Tune picks the sparsity factor ``s`` and the channel prune ratio
(``percent``) on the size / mAP50 Pareto front.

    sweep:                      # pipeline.yaml (off by default)
      enabled: true
      s: [0.0001, 0.001, 0.01]
      percent: [30, 50, 70]
      epochs: 5                 # sparse epochs per trial (ASHA's time axis)
      finetune_epochs: 2
      max_map_drop: 0.05        # the chosen model keeps mAP50 >= baseline - 0.05

Every (s, percent) pair of the grid is one Tune trial (:func:`trial`), run on the
cluster as an actor of ``cpus_per_trial`` CPUs; it fetches the data set and the
baseline checkpoint from the run's folder in the store, then

1. sparse-trains from the baseline for ``epochs`` epochs
   (:func:`trainer.compress.sparsity.sparse_train`, the sparse stage's schedule,
   proximal and bn_lr_scale) and reports after every epoch the mAP50 of the model pruned at the
   trial's ratio (layers + channels, :func:`trainer.compress.layer_prune.prune`, before
   any fine-tuning) as ``map50_pruned``, and the sparse model's own as ``map50_sparse``.
   ASHA (:class:`ray.tune.schedulers.ASHAScheduler` on ``map50_pruned``, time axis
   ``epoch``) stops the trials whose pruned model falls behind: the sparse model's own
   mAP50 would not tell the ratios apart;
2. prunes the sparse model at the trial's ratio as the prune stage does
   (:func:`trainer.compress.prune_run.prune_run`, with the prune stage's ``layers``,
   ``round_to`` and ``min_keep_frac``) and fine-tunes it for ``finetune_epochs`` epochs
   (:func:`trainer.engine.train`);
3. reports its size (parameters, fp32 MiB) and mAP50 after pruning and after the
   fine-tune (``map50``; every mAP50 of the sweep is :func:`trainer.validate.validate`
   on the same evaluation split as the baseline's).

The driver then keeps the finished trials, finds the Pareto front (:func:`pareto_front`:
no other trial is both smaller and better) and chooses (:func:`choose`) the smallest
model whose mAP50 stays within ``max_map_drop`` of the baseline's. The stage folder gets
``sweep.json`` (every trial: settings, status, metrics; the front; the choice) and
``pareto.png`` (size vs mAP50, the front, the budget line, the choice marked). The
chosen ``s`` and ``percent`` are the sparse and prune stages' settings in this run.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainer.callbacks import Callback, TrainContext

__all__ = [
    "choose",
    "pareto_front",
    "plot_pareto",
    "run_sweep",
    "trial",
]

FINISHED = "finished"  # a trial that pruned and fine-tuned (ASHA let it run to the end)
STOPPED = "stopped"  # stopped early by ASHA
FAILED = "failed"


# --------------------------------------------------------------------------------------
# The choice: pure functions of the trials' (params, map50)
# --------------------------------------------------------------------------------------


def pareto_front(trials: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The trials no other trial dominates (as small or smaller AND as good or better,
    strictly one of them), by ``params`` (lower is better) and ``map50`` (higher is
    better), in ascending size. Equal points are all kept."""
    front = []
    for a in trials:
        dominated = any(
            b["params"] <= a["params"]
            and b["map50"] >= a["map50"]
            and (b["params"] < a["params"] or b["map50"] > a["map50"])
            for b in trials
        )
        if not dominated:
            front.append(a)
    return sorted(front, key=lambda t: (t["params"], -t["map50"]))


def choose(
    trials: Sequence[Mapping[str, Any]], baseline_map50: float, max_map_drop: float
) -> tuple[Mapping[str, Any] | None, bool]:
    """``(chosen trial, within budget)``: the smallest trial (fewest ``params``; a tie
    goes to the higher ``map50``) whose ``map50 >= baseline_map50 - max_map_drop``. When
    none is within the budget: the best trial (highest ``map50``, then smallest) and
    False. No trials: ``(None, False)``. The chosen one is always on the Pareto front."""
    if not trials:
        return None, False
    floor = baseline_map50 - max_map_drop - 1e-12  # a float's rounding is no drop
    within = [t for t in trials if t["map50"] >= floor]
    if within:
        return min(within, key=lambda t: (t["params"], -t["map50"])), True
    return min(trials, key=lambda t: (-t["map50"], t["params"])), False


def plot_pareto(
    trials: Sequence[Mapping[str, Any]],
    png: str | Path,
    *,
    baseline_map50: float,
    max_map_drop: float,
    chosen: Mapping[str, Any] | None = None,
    baseline_mib: float | None = None,
) -> Path:
    """Size (fp32 MiB) vs mAP50 of the finished trials: every trial, the Pareto front as
    a step line, the baseline and the budget (``baseline - max_map_drop``) as horizontal
    lines, the chosen trial circled. Writes ``png`` (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5), tight_layout=True)
    if trials:
        ax.scatter(
            [t["mib"] for t in trials], [t["map50"] for t in trials], color="tab:blue",
            label="trial (s, percent)", zorder=3,
        )  # fmt: skip
        for t in trials:
            ax.annotate(
                f"s={t['s']:g}, {t['percent']:g}%", (t["mib"], t["map50"]), fontsize=7,
                xytext=(4, 4), textcoords="offset points",
            )  # fmt: skip
        front = pareto_front(trials)
        ax.step(
            [t["mib"] for t in front], [t["map50"] for t in front], where="post",
            color="tab:orange", label="Pareto front", zorder=2,
        )  # fmt: skip
    ax.axhline(baseline_map50, color="0.4", linestyle="--", label="baseline mAP50")
    ax.axhline(
        baseline_map50 - max_map_drop, color="tab:red", linestyle=":",
        label=f"budget (drop {max_map_drop:g})",
    )  # fmt: skip
    if baseline_mib is not None:
        ax.axvline(baseline_mib, color="0.7", linestyle="--", label="baseline size")
    if chosen is not None:
        ax.scatter(
            [chosen["mib"]], [chosen["map50"]], s=220, facecolors="none",
            edgecolors="tab:green", linewidths=2.5, label="chosen", zorder=4,
        )  # fmt: skip
    ax.set_xlabel("model size (fp32 MiB)")
    ax.set_ylabel("mAP50")
    ax.set_title("sweep: size vs mAP50 after pruning and fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


# --------------------------------------------------------------------------------------
# One trial (a Ray Tune function trainable)
# --------------------------------------------------------------------------------------


def _map50(model, data, split: str) -> float:
    from trainer.validate import validate

    model.eval()
    return float(validate(model, data, split=split).map50)


class _PrunedMap(Callback):
    """After every sparse epoch: prune the validated model (the EMA) at the trial's ratio
    and report both mAP50s to Tune (``epoch`` is ASHA's time axis)."""

    def __init__(self, data, split: str, prune_args: Mapping[str, Any]) -> None:
        self.data, self.split, self.prune_args = data, split, dict(prune_args)
        self.ctx: TrainContext | None = None

    def on_train_start(self, ctx: TrainContext) -> None:
        self.ctx = ctx

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        from ray import tune

        from trainer.compress.layer_prune import prune

        assert self.ctx is not None
        model = self.ctx.ema.ema if self.ctx.ema is not None else self.ctx.model
        training = model.training
        model.eval()  # pruning probes the model: its BatchNorm statistics must not move
        error = None
        try:
            pruned = prune(model, **self.prune_args).model
            map_pruned = _map50(pruned, self.data, self.split)
        except Exception as exc:  # noqa: BLE001 - a ratio this model cannot take scores 0
            map_pruned, error = 0.0, f"{type(exc).__name__}: {exc}"[:300]
        finally:
            model.train(training)
        sparse = metrics.get("metrics/mAP50(B)", math.nan)
        report = {
            "epoch": epoch,
            "map50_pruned": map_pruned,
            "map50_sparse": float(sparse) if math.isfinite(sparse) else 0.0,
        }
        if error:
            report["prune_error"] = error
        tune.report(report)


def trial(params: dict[str, Any], static: Mapping[str, Any]) -> None:
    """One (s, percent) trial; see the module docstring. ``params``: Tune's ``s`` and
    ``percent``; ``static``: what every trial shares (:func:`run_sweep` builds it)."""
    import torch
    from ray import tune

    from slimspect.settings import StoreSettings
    from trainer.compress.prune_run import prune_run
    from trainer.compress.sparsity import sparse_train
    from trainer.config import TrainConfig
    from trainer.data.formats import read_dataset
    from trainer.engine import train
    from trainer.model import fp32_mib, load_checkpoint
    from trainer.pipeline.ray_train import fetch_inputs
    from trainer.pipeline.run_store import RunStore

    torch.set_num_threads(int(static["torch_threads"]))
    s, percent = float(params["s"]), float(params["percent"])
    runs = RunStore(StoreSettings(**static["store"]), static["run_id"])
    data_path, (baseline,) = fetch_inputs(
        runs, Path(static["cache"]), static["data"], [static["baseline"]], static["versions"]
    )
    data = read_dataset(data_path)
    split = static["split"]
    prune_args = dict(static["prune"])

    run_dir = Path(static["cache"]) / f"sweep-{static['attempt']}" / f"s{s:g}-p{percent:g}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = TrainConfig.from_dict(
        {**static["train_args"], "data": str(data_path), "verbose": False, "plots": False}
    )

    # 1. sparse training from the baseline, mAP50 of the pruned model every epoch
    sparse = sparse_train(
        config.updated(epochs=int(static["epochs"])), s=s, schedule=static["schedule"],
        weights=baseline, proximal=bool(static["proximal"]),
        bn_lr_scale=float(static.get("bn_lr_scale", 1.0)), plots=False,
        run_dir=run_dir / "sparse",
        callbacks=[_PrunedMap(data, split, {"percent": percent, **prune_args})],
    )  # fmt: skip

    # 2. prune as the prune stage does, fine-tune
    summary = prune_run(
        sparse.last, run_dir / "prune", percent=percent, layers=prune_args["layers"],
        max_map_drop=None, round_to=prune_args["round_to"],
        min_keep_frac=prune_args["min_keep_frac"], keep_by=prune_args.get("keep_by", "gamma"),
        data=data, split=split, log=lambda _: None,
    )  # fmt: skip
    pruned = run_dir / "prune" / "weights" / "pruned.pt"
    mib = fp32_mib(load_checkpoint(pruned)[0])
    map_pruned = float(summary["map50_after_prune"])
    final = map_pruned
    finetune_epochs = int(static["finetune_epochs"])
    if finetune_epochs:
        tuned = train(
            config.updated(model=str(pruned), epochs=finetune_epochs),
            run_dir=run_dir / "finetune",
        )
        best = tuned.best if Path(tuned.best).is_file() else tuned.last
        final = _map50(load_checkpoint(best)[0], data, split)
    params_after = int(summary["params_after"])
    tune.report(
        {
            "final": 1,
            "s": s,
            "percent": percent,
            "params": params_after,
            "params_before": int(summary["params_before"]),
            "mib": mib,
            "map50_sparse": float(summary["map50_before"]),
            "map50_pruned": map_pruned,
            "map50": final,
            "layers_removed": len(summary["layers"]),
        }
    )


# --------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------


def _trial_row(result) -> dict[str, Any]:
    """One trial of the Tune ResultGrid as a plain row of sweep.json."""
    m = dict(result.metrics or {})
    config = dict(result.config or {})
    row: dict[str, Any] = {
        "trial": str(m.get("trial_id") or Path(str(result.path)).name),
        "s": float(config["s"]),
        "percent": float(config["percent"]),
    }
    if result.error is not None:
        lines = str(result.error).strip().splitlines() or ["?"]
        row.update(status=FAILED, error=lines[-1][:300])
    else:
        row["status"] = FINISHED if m.get("final") else STOPPED
    keys = (
        "map50_sparse", "map50_pruned", "map50", "params", "params_before", "mib",
        "layers_removed",
    )  # fmt: skip
    row.update({k: m[k] for k in keys if k in m})
    # the per-epoch reports (ASHA's view): how far the trial got
    history = result.metrics_dataframe
    per_epoch: list[float] = []
    if history is not None and "epoch" in history and "map50_pruned" in history:
        rows = history[history["epoch"].notna()]
        per_epoch = [float(v) for v in rows["map50_pruned"]]
        if "prune_error" in rows:
            errors = [e for e in rows["prune_error"] if isinstance(e, str) and e]
            if errors:
                row["prune_error"] = errors[0]
    row["epochs"] = len(per_epoch)
    row["map50_pruned_per_epoch"] = per_epoch
    return row


def run_sweep(run, stage_dir: Path, attempt: str):
    """The ``sweep`` stage (``fn(run, stage_dir, attempt) -> (outputs, info)``)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from trainer.model import count_params, fp32_mib, load_checkpoint
    from trainer.pipeline.records import PipelineError
    from trainer.pipeline.stages import _train_args, input_versions

    c, p, sp, r = run.config.sweep, run.config.prune, run.config.sparse, run.config.ray
    baseline_rel = run.records["baseline"]["outputs"]["checkpoint"]
    split = run.eval_split
    model, _ = load_checkpoint(run.path("baseline", "checkpoint"))
    baseline_map50 = _map50(model, run.data, split)
    baseline_params, baseline_mib = count_params(model), fp32_mib(model)
    del model
    run.console.print(
        f"  baseline mAP50 {baseline_map50:.4f} on {split}; budget: mAP50 >= "
        f"{baseline_map50 - c.max_map_drop:.4f}; {len(c.s) * len(c.percent)} trial(s), "
        f"{c.epochs} sparse + {c.finetune_epochs} fine-tune epoch(s) each"
    )
    s = run.runs.settings
    store = s.model_dump(mode="json")
    store["secret_key"] = s.secret_key.get_secret_value() if s.secret_key else None
    static = {
        "store": store,
        "run_id": run.run_id,
        "cache": str(run.cache),
        "attempt": attempt,
        "data": run.records["data"]["outputs"]["data"],
        "baseline": baseline_rel,
        "versions": input_versions(run, [baseline_rel]),
        "split": split,
        "train_args": _train_args(run, c.epochs),
        "epochs": c.epochs,
        "finetune_epochs": c.finetune_epochs,
        "schedule": sp.schedule,
        "proximal": sp.proximal,
        "bn_lr_scale": sp.bn_lr_scale,
        "torch_threads": r.torch_threads,
        "prune": {
            "layers": p.layers,
            "round_to": p.round_to,
            "min_keep_frac": p.min_keep_frac,
            "keep_by": p.keep_by,
        },
    }
    filesystem, storage_path = run.runs.ray_storage(stage_dir.name)
    scheduler = ASHAScheduler(
        time_attr="epoch", max_t=c.epochs, grace_period=min(c.grace_period, c.epochs),
        reduction_factor=c.reduction_factor, stop_last_trials=False,
    )  # fmt: skip
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trial, static=static), {"cpu": c.cpus_per_trial}),
        param_space={"s": tune.grid_search(list(c.s)), "percent": tune.grid_search(list(c.percent))},
        tune_config=tune.TuneConfig(
            metric="map50_pruned", mode="max", scheduler=scheduler,
            max_concurrent_trials=c.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=f"sweep-{attempt}", storage_path=storage_path, storage_filesystem=filesystem,
            verbose=0,
        ),
    )  # fmt: skip
    grid = tuner.fit()
    rows = sorted((_trial_row(result) for result in grid), key=lambda t: (t["s"], t["percent"]))
    finished = [t for t in rows if t["status"] == FINISHED]
    front = pareto_front(finished)
    chosen, within = choose(finished, baseline_map50, c.max_map_drop)
    for t in rows:
        t["pareto"] = any(t is f for f in front)
        t["chosen"] = t is chosen
    failed = [t for t in rows if t["status"] == FAILED]
    if chosen is None:
        why = f"; first error: {failed[0]['error']}" if failed else ""
        raise PipelineError(f"sweep: no trial finished ({len(failed)} failed){why}")
    if not within:
        run.console.print(
            f"  [yellow]no trial kept mAP50 within {c.max_map_drop:g} of the baseline: "
            "chose the best one[/]"
        )

    report = {
        "baseline": {"map50": baseline_map50, "params": baseline_params,
                     "mib": baseline_mib, "split": split},
        "max_map_drop": c.max_map_drop,
        "asha": {"metric": "map50_pruned", "time_attr": "epoch", "max_t": c.epochs,
                 "grace_period": min(c.grace_period, c.epochs),
                 "reduction_factor": c.reduction_factor},
        "trials": rows,
        "pareto": [t["trial"] for t in front],
        "chosen": dict(chosen),
        "within_budget": within,
    }  # fmt: skip
    (stage_dir / "sweep.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    plot_pareto(
        finished, stage_dir / "pareto.png", baseline_map50=baseline_map50,
        max_map_drop=c.max_map_drop, chosen=chosen, baseline_mib=baseline_mib,
    )  # fmt: skip
    _print_trials(run.console, rows)
    run.console.print(
        f"  chosen: s={chosen['s']:g}, percent={chosen['percent']:g}: "
        f"{chosen['mib']:.2f} MiB ({chosen['params']:,} params), mAP50 {chosen['map50']:.4f} "
        f"(baseline {baseline_map50:.4f})"
    )
    outputs = {
        "report": run.rel(stage_dir / "sweep.json"),
        "plot": run.rel(stage_dir / "pareto.png"),
    }
    info = {
        "s": chosen["s"],
        "percent": chosen["percent"],
        "within_budget": within,
        "baseline_map50": baseline_map50,
        "map50": chosen["map50"],
        "params": chosen["params"],
        "trials": {k: sum(t["status"] == k for t in rows) for k in (FINISHED, STOPPED, FAILED)},
    }
    return outputs, info


def _print_trials(console, rows: Sequence[Mapping[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="sweep trials")
    for column in ("s", "percent", "status", "MiB", "mAP50 pruned", "mAP50", ""):
        table.add_column(column)

    def num(value, fmt: str) -> str:
        return "" if value is None else format(value, fmt)

    for t in rows:
        mark = "chosen" if t.get("chosen") else ("front" if t.get("pareto") else "")
        table.add_row(
            f"{t['s']:g}", f"{t['percent']:g}", t["status"], num(t.get("mib"), ".2f"),
            num(t.get("map50_pruned"), ".4f"), num(t.get("map50"), ".4f"), mark,
        )  # fmt: skip
    console.print(table)
