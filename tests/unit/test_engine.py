"""The training engine: schedule, EMA, parameter groups, callbacks, exact resume, the run
folder, the config, and the CLI's one-line errors. yolov4-n at 64 px on 16 synthetic
images, 2 epochs of batch 8."""

from __future__ import annotations

import csv
import itertools
import math

import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

from trainer.callbacks import Callback
from trainer.cli import anchors as anchors_cmd
from trainer.cli import train as train_cmd
from trainer.cli import val as val_cmd
from trainer.config import ConfigError, LossConfig, TrainConfig
from trainer.data.augment import AugmentConfig, Augmenter
from trainer.data.formats import read_dataset
from trainer.data.loader import DatasetSamples, TrainDataset, train_loader
from trainer.data.synth import synthesize
from trainer.ema import ModelEMA
from trainer.engine import (
    BIAS_GROUP,
    BN_GROUP,
    WEIGHT_GROUP,
    Schedule,
    build_optimizer,
    epoch_augment,
    increment_path,
    param_groups,
    results_columns,
    train,
)
from trainer.model import build, get_spec, load_checkpoint

COLUMNS = [
    "epoch",
    "train/box_loss",
    "train/obj_loss",
    "train/cls_loss",
    "metrics/precision(B)",
    "metrics/recall(B)",
    "metrics/mAP50(B)",
    "metrics/mAP50-95(B)",
    "val/box_loss",
    "val/obj_loss",
    "val/cls_loss",
    "lr/pg0",
    "lr/pg1",
    "lr/pg2",
    "time",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("engine") / "data"
    synthesize(out, images=20, size=96, seed=0, val_fraction=0.2)  # 16 train, 4 val
    return out


def small_config(data_dir, project, **changes) -> TrainConfig:
    base = {
        "data": str(data_dir),
        "model": "yolov4-n",
        "imgsz": 64,
        "epochs": 2,
        "batch": 8,
        "workers": 0,
        "warmup_epochs": 1.0,
        "warmup_min_iters": 0,
        "close_mosaic": 1,  # epoch 1 with mosaic, epoch 2 without: resume crosses the switch
        "project": str(project),
        "verbose": False,
        "plots": False,
    }
    return TrainConfig(**{**base, **changes})


class Recorder(Callback):
    """Records hook calls; optionally zeroes the gradients it is shown."""

    def __init__(self, zero_grads: bool = False, stop_after: int | None = None):
        self.events: list[str] = []
        self.zero_grads = zero_grads
        self.stop_after = stop_after
        self.initial: dict[str, torch.Tensor] = {}

    def on_train_start(self, ctx):
        self.ctx = ctx
        self.initial = {k: v.detach().clone() for k, v in ctx.model.named_parameters()}
        self.events.append("train_start")

    def on_after_backward(self, model, step):
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        if self.zero_grads:
            for p in model.parameters():
                p.grad.zero_()
        self.events.append(f"after_backward:{step}")

    def on_batch_end(self, ctx, batch_index, parts):
        self.events.append("batch_end")

    def on_checkpoint(self, ctx, path, metadata):
        metadata["recorded"] = True
        self.events.append(f"checkpoint:{path.name}")

    def on_epoch_end(self, epoch, metrics):
        self.events.append(f"epoch_end:{epoch}")
        if epoch == self.stop_after:
            self.ctx.stop = True

    def on_train_end(self, ctx, result):
        self.events.append("train_end")


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):
    """2 epochs straight, plots on: the run the folder and resume tests look at."""
    project = tmp_path_factory.mktemp("runs")
    rec = Recorder()
    result = train(small_config(data_dir, project, plots=True, name="straight"), callbacks=[rec])
    return result, rec


# ---------------------------------------------------------------------------------------------
# Schedule, EMA, parameter groups, config


def test_schedule_warmup_then_cosine():
    cfg = TrainConfig(data="x", epochs=10, lr0=0.01, lrf=0.1, warmup_epochs=2, warmup_min_iters=0,
                      batch=16, nbs=64)  # fmt: skip
    s = Schedule.from_config(cfg, batches_per_epoch=5)
    assert s.warmup_iters == 10 and s.accumulate == 4
    # warm-up: weights rise from 0, biases fall from warmup_bias_lr, both to lr0 * lf(epoch)
    assert s.lr(WEIGHT_GROUP, 0, 0) == 0.0
    assert s.lr(BIAS_GROUP, 0, 0) == pytest.approx(0.1)
    warm = [s.lr(WEIGHT_GROUP, ni, ni // 5) for ni in range(10)]
    assert all(b > a for a, b in itertools.pairwise(warm))
    assert s.momentum_at(0) == pytest.approx(0.8) and s.momentum_at(10) == pytest.approx(0.937)
    assert s.accumulate_at(0) == 1 and s.accumulate_at(9) == 4 and s.accumulate_at(50) == 4
    # then the cosine, per epoch, from lr0 * lf(2) down to lr0 * lrf at the end
    after = [s.lr(g, ni, ni // 5) for ni in range(10, 50) for g in (BIAS_GROUP, BN_GROUP)]
    assert all(b <= a for a, b in zip(after[::2], after[2::2]))
    assert s.lr_factor(0) == 1.0 and s.lr_factor(10) == pytest.approx(0.1)
    assert s.lr_factor(5) == pytest.approx((1 + 0.1) / 2)
    assert s.lr(BN_GROUP, 49, 9) == pytest.approx(0.01 * s.lr_factor(9))
    # the warm-up lasts at least warmup_min_iters batches (Ultralytics: 100)
    s2 = Schedule.from_config(cfg.updated(warmup_min_iters=100), batches_per_epoch=5)
    assert s2.warmup_iters == 100
    assert Schedule.from_config(cfg.updated(warmup_epochs=0), 5).warmup_iters == 0


def test_ema_update_math():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9, tau=1.0)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked += 5
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1.0))
    assert ema.decay_at(1) == pytest.approx(d)
    expected = d * w0 + (1 - d) * (w0 + 1.0)
    assert torch.allclose(ema.ema[0].weight, expected, atol=1e-7)
    assert ema.ema[1].num_batches_tracked.item() == 0  # integer buffers are not averaged
    assert not any(p.requires_grad for p in ema.ema.parameters())
    assert ema.decay_at(10_000) == pytest.approx(0.9)  # the ramp ends at the decay


def test_param_groups_and_optimizers():
    model = build(get_spec("yolov4-n", input_size=64), seed=0)
    biases, weights, bns = param_groups(model)
    assert len(biases) + len(weights) + len(bns) == len(list(model.parameters()))
    assert {id(p) for p in biases}.isdisjoint({id(p) for p in weights} | {id(p) for p in bns})
    bn_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert {id(p) for p in bns} == bn_ids
    assert id(model.head.p3.pred.bias) in {id(p) for p in biases}
    assert all(p.ndim == 4 for p in weights)  # conv kernels only

    sgd = build_optimizer(model, "SGD", 0.01, 0.937, 5e-4)
    groups = sgd.param_groups
    assert [g["name"] for g in groups] == ["bias", "weight", "bn_weight"]
    assert [g["weight_decay"] for g in groups] == [0.0, 5e-4, 0.0]
    assert all(g["nesterov"] for g in groups)
    adamw = build_optimizer(model, "AdamW", 0.001, 0.9, 5e-4)
    assert isinstance(adamw, torch.optim.AdamW)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.0, 5e-4, 0.0]
    assert adamw.param_groups[0]["betas"] == (0.9, 0.999)


def test_config_yaml_overrides_and_errors(tmp_path):
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text("data: d\nepochs: 7\naugment:\n  mixup: {p: 0.2}\n")
    cfg = TrainConfig.load(cfg_file, {"augment.mosaic.p": 0.0, "optimizer": "AdamW"})
    assert cfg.epochs == 7 and cfg.augment.mixup.p == 0.2 and cfg.augment.mosaic.p == 0.0
    assert cfg.lr0 == 0.001  # the AdamW default
    assert TrainConfig(data="d").lr0 == 0.01
    assert TrainConfig(data="d", batch=16).accumulate_steps == 4  # nbs 64
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="epoch: unknown key"):
        TrainConfig.load(None, {"data": "d", "epoch": 3})
    with pytest.raises(ConfigError, match="multiple of 32"):
        TrainConfig.load(None, {"data": "d", "imgsz": 100})
    with pytest.raises(ConfigError, match="not found"):
        TrainConfig.load(tmp_path / "missing.yaml")


def test_loss_gain_scaling():
    gains = LossConfig().scaled(num_classes=6, imgsz=320)
    assert gains["box_gain"] == pytest.approx(0.05)
    assert gains["obj_gain"] == pytest.approx(1.0 * (320 / 640) ** 2)
    assert gains["cls_gain"] == pytest.approx(0.5 * 6 / 80)
    plain = LossConfig(scale_gains=False).scaled(6, 320)
    assert plain == {"box_gain": 0.05, "obj_gain": 1.0, "cls_gain": 0.5}


def test_close_mosaic_turns_off_mosaic_and_mixup_for_the_last_epochs(data_dir, tmp_path):
    config = small_config(data_dir, tmp_path, epochs=5, close_mosaic=2)
    assert [epoch_augment(config, e).mosaic.p for e in range(5)] == [0.5, 0.5, 0.5, 0.0, 0.0]
    closed = epoch_augment(config, 4)
    assert closed.mixup.p == 0.0 and closed.mixup.alpha == config.augment.mixup.alpha
    assert closed.affine == config.augment.affine and closed.colour == config.augment.colour
    never = small_config(data_dir, tmp_path, epochs=5, close_mosaic=0)
    assert all(epoch_augment(never, e) == never.augment for e in range(5))


def test_increment_path(tmp_path):
    base = tmp_path / "train"
    assert increment_path(base) == base
    base.mkdir()
    assert increment_path(base) == tmp_path / "train2"
    (tmp_path / "train2").mkdir()
    assert increment_path(base) == tmp_path / "train3"
    assert increment_path(base, exist_ok=True) == base


def test_batches_do_not_depend_on_workers(data_dir):
    ds = read_dataset(data_dir)
    aug = Augmenter(AugmentConfig(), 64, seed=3)
    train_ds = TrainDataset(DatasetSamples(ds, "train", gray=True), aug, channels=1)
    first = next(iter(train_loader(train_ds, 8, workers=0, seed=3, epoch=1)))
    again = next(iter(train_loader(train_ds, 8, workers=2, seed=3, epoch=1)))
    other = next(iter(train_loader(train_ds, 8, workers=0, seed=3, epoch=2)))
    assert first[0].shape == (8, 1, 64, 64) and first[0].dtype == torch.float32
    assert 0.0 <= first[0].min() and first[0].max() <= 1.0
    assert first[1].shape[1] == 6 and set(first[1][:, 0].tolist()) <= set(range(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


# ---------------------------------------------------------------------------------------------
# Training runs


def test_callbacks_order_and_after_backward_precedes_the_step(data_dir, tmp_path):
    rec = Recorder(zero_grads=True)
    cfg = small_config(data_dir, tmp_path, ema=False, weight_decay=0.0, accumulate=1)
    result = train(cfg, callbacks=[rec])
    ev = rec.events
    assert ev[0] == "train_start" and ev[-1] == "train_end"
    # 2 batches per epoch, a step after each: after_backward comes before its batch_end
    per_epoch = ["after_backward", "batch_end", "after_backward", "batch_end"]
    first_epoch = [e.split(":")[0] for e in ev[1:5]]
    assert first_epoch == per_epoch
    assert ev[5:8] == ["checkpoint:best.pt", "checkpoint:last.pt", "epoch_end:1"]
    assert [e for e in ev if e.startswith("after_backward")] == [
        f"after_backward:{i}" for i in range(4)
    ]
    # zeroed gradients before the step (no weight decay, no EMA): the weights never move
    model, meta = load_checkpoint(result.last)
    assert meta["recorded"] is True  # on_checkpoint can add metadata
    for name, p in model.named_parameters():
        assert torch.equal(p, rec.initial[name]), name


def test_injected_loss_and_batches(data_dir, tmp_path):
    """A distillation-style loss (extra part, features) and a batch source of our own."""
    calls = []

    class WithFeatures(nn.Module):
        part_names = ("box_loss", "obj_loss", "cls_loss", "kd_loss")
        needs_features = True

        def forward(self, outputs, targets, images):
            maps, feats = outputs  # return_features=True
            assert len(feats) == 3 and images.shape[1] == 1
            kd = sum(f.float().pow(2).mean() for f in feats) * 1e-3
            box = sum(m.float().mean() for m in maps) * 0.0  # a toy detection term
            parts = torch.stack([box, box, box, kd]).detach()
            return (box + kd) * images.shape[0], parts

    def batches(epoch):
        calls.append(epoch)
        g = torch.Generator().manual_seed(epoch)
        for _ in range(2):
            images = torch.rand(8, 1, 64, 64, generator=g)
            targets = torch.tensor([[0, 1, 32.0, 32.0, 16.0, 12.0], [3, 0, 20.0, 40.0, 8.0, 8.0]])
            yield images, targets

    result = train(small_config(data_dir, tmp_path), loss_fn=WithFeatures(), train_batches=batches)
    assert calls == [0, 1]
    with (result.run_dir / "results.csv").open() as f:
        header = next(csv.reader(f))
    assert header == results_columns(WithFeatures.part_names)
    assert "train/kd_loss" in header and "val/box_loss" in header  # val: the detection loss
    assert result.history[-1]["train/kd_loss"] > 0


def test_run_folder(straight):
    result, rec = straight
    run = result.run_dir
    for name in ("args.yaml", "results.csv", "anchors.json", "results.png", "PR_curve.png",
                 "confusion_matrix.png", "labels.png"):  # fmt: skip
        assert (run / name).is_file(), name
    args = yaml.safe_load((run / "args.yaml").read_text())
    cfg = TrainConfig.from_dict(args)
    assert cfg.epochs == 2 and cfg.model == "yolov4-n" and cfg.lr0 == 0.01
    with (run / "results.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == COLUMNS == results_columns()
    assert [r[0] for r in rows[1:]] == ["1", "2"]
    assert all(math.isfinite(float(v)) for v in rows[2][1:])

    anchors = yaml.safe_load((run / "anchors.json").read_text())
    assert anchors["used"] == "kmeans"
    assert set(anchors["comparison"]) >= {"ours", "default"}

    last, last_meta = load_checkpoint(result.last)  # load_checkpoint alone: no other file
    _best, best_meta = load_checkpoint(result.best)
    for meta in (last_meta, best_meta):
        assert meta["class_names"] == read_dataset(cfg.data).names
        assert meta["train_args"] == args
        assert meta["thresholds"] == {"score": 0.25, "iou": 0.45}
        assert "metrics/mAP50(B)" in meta["metrics"] and "fitness" in meta["metrics"]
    assert last_meta["epoch"] == 2 and best_meta["epoch"] == result.best_epoch
    assert last_meta["anchors"] == [[list(a) for a in s] for s in last.spec.anchors]
    assert anchors["anchors"] == last_meta["anchors"]
    assert set(last_meta["resume"]) >= {"model", "optimizer", "scaler", "ema_updates", "step"}
    assert "resume" not in best_meta
    assert last.spec.input_size == 64 and last.spec.class_names == tuple(last_meta["class_names"])
    # training moved the weights
    raw = last_meta["resume"]["model"]
    assert any(not torch.equal(raw[k], v) for k, v in rec.initial.items())
    assert result.images_per_second > 0 and len(result.epoch_seconds) == 2


def test_resume_is_bit_exact(straight, data_dir, tmp_path):
    reference, _ = straight
    stopped = train(small_config(data_dir, tmp_path, name="stopped"),
                    callbacks=[Recorder(stop_after=1)])  # fmt: skip
    assert stopped.epochs_done == 1 and stopped.stopped_early
    resumed = train(None, resume=stopped.run_dir)
    assert resumed.run_dir == stopped.run_dir and resumed.epochs_done == 2

    ref_model, ref_meta = load_checkpoint(reference.last)
    res_model, res_meta = load_checkpoint(resumed.last)
    for (k, a), b in zip(ref_model.state_dict().items(), res_model.state_dict().values()):
        assert torch.equal(a, b), f"EMA weights differ: {k}"
    ref_raw, res_raw = ref_meta["resume"]["model"], res_meta["resume"]["model"]
    for k in ref_raw:
        assert torch.equal(ref_raw[k], res_raw[k]), f"raw weights differ: {k}"
    assert ref_meta["resume"]["step"] == res_meta["resume"]["step"]
    with (resumed.run_dir / "results.csv").open() as f:
        assert [r[0] for r in csv.reader(f)] == ["epoch", "1", "2"]
    # a finished run has nothing left to resume
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(None, resume=resumed.last)


def test_start_from_checkpoint_keeps_its_anchors(straight, data_dir, tmp_path):
    reference, _ = straight
    start, _ = load_checkpoint(reference.best)
    result = train(small_config(data_dir, tmp_path, model=str(reference.best), epochs=1))
    report = yaml.safe_load((result.run_dir / "anchors.json").read_text())
    assert report["mode"] == "auto" and report["used"] == "spec"  # the checkpoint fixes them
    assert report["anchors"] == [[list(a) for a in s] for s in start.spec.anchors]
    _, meta = load_checkpoint(result.last)
    assert meta["model_source"] == "checkpoint"
    assert meta["train_args"]["model"] == str(reference.best.resolve())


# ---------------------------------------------------------------------------------------------
# CLI errors: one line, no traceback


def _fails(result, *needles):
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    for needle in needles:
        assert needle in result.output, result.output


def test_cli_errors(data_dir, tmp_path):
    runner = CliRunner()
    _fails(runner.invoke(train_cmd, ["--data", str(tmp_path / "nope.yaml")]), "data not found")
    _fails(
        runner.invoke(
            train_cmd, ["--data", str(data_dir), "--model", "yolov9", "--project", str(tmp_path)]
        ),
        "unknown model 'yolov9'",
        "yolov4-n",
    )
    _fails(runner.invoke(train_cmd, ["--data", str(data_dir), "--set", "epoch=3"]),
           "epoch: unknown key")  # fmt: skip
    _fails(runner.invoke(train_cmd, ["--resume", str(tmp_path / "runs")]), "checkpoint not found")
    _fails(runner.invoke(val_cmd, ["--model", str(tmp_path / "best.pt")]), "checkpoint not found")
    assert not (tmp_path / "train").exists()  # no run folder for a failed start

    # a malformed label: the reader's file:line
    bad = tmp_path / "bad"
    synthesize(bad, images=4, size=64, seed=1, val_fraction=0.25)
    label = min((bad / "labels" / "train").glob("*.txt"))
    label.write_text("0 0.5 0.5 0.2\n")
    result = runner.invoke(train_cmd, ["--data", str(bad), "--project", str(tmp_path)])
    _fails(result, f"{label}:1", "slimspect data check")
    _fails(runner.invoke(anchors_cmd, [str(bad)]), f"{label}:1")


def test_anchors_command(data_dir):
    result = CliRunner().invoke(anchors_cmd, [str(data_dir), "--imgsz", "64"])
    assert result.exit_code == 0, result.output
    assert "K-means++" in result.output and "YOLOv4 default" in result.output
    assert "BPR" in result.output and "mean IoU" in result.output


def test_every_command_has_help():
    for cmd in (train_cmd, val_cmd, anchors_cmd):
        result = CliRunner().invoke(cmd, ["--help"])
        assert result.exit_code == 0 and "Usage:" in result.output
