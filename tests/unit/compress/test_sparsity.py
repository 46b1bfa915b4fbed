"""Sparse training: the L1 subgradient on prunable BN scales only, its scale, the schedules,
local decay, the proximal step, and a short SGD run that shrinks the gammas and logs them.
yolov4-n at 64 px, 1 thread."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math

import pytest
import torch

from trainer.callbacks import Callback, TrainContext
from trainer.compress.dependency import dependency_graph
from trainer.compress.sparsity import (
    SparsityCallback,
    SparsitySchedule,
    gamma_stats,
    prunable_bn_paths,
    read_sparsity_csv,
    sparse_train,
)
from trainer.config import TrainConfig
from trainer.data.synth import synthesize
from trainer.ema import ModelEMA
from trainer.engine import build_optimizer
from trainer.loss import YoloLoss
from trainer.model import build, get_spec, load_checkpoint, save_checkpoint

EXCLUDED = "backbone.stage3.main"  # a tied group (trunk + residual convs) made non-prunable


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sparsity") / "data"
    synthesize(out, images=20, size=96, seed=0, val_fraction=0.2)  # 16 train, 4 val
    return out


def small_config(data_dir, project, **changes) -> TrainConfig:
    base = {
        "data": str(data_dir),
        "model": "yolov4-n",
        "imgsz": 64,
        "epochs": 2,
        "batch": 8,
        "accumulate": 1,
        "workers": 0,
        "warmup_epochs": 0.0,
        "warmup_min_iters": 0,
        "val_every": 2,
        "project": str(project),
        "verbose": False,
        "plots": False,
    }
    return TrainConfig(**{**base, **changes})


def new_model():
    return build(get_spec("yolov4-n", input_size=64), seed=0)


def backward(model):
    """Fill every gradient with a real detection-loss gradient."""
    spec = model.spec
    loss = YoloLoss(spec.flat_anchors, spec.strides, spec.num_classes)
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[0, 1, 20.0, 24.0, 16.0, 12.0], [1, 3, 40.0, 30.0, 30.0, 20.0]])
    model.train()
    model.zero_grad(set_to_none=True)
    loss(model(x), targets)[0].backward()


def context(model, config, tmp_path, **kw) -> TrainContext:
    opt = build_optimizer(model, "SGD", 0.01, 0.9, 0.0)
    return TrainContext(
        config=config,
        model=model,
        optimizer=opt,
        ema=None,
        run_dir=tmp_path,
        class_names=["a"] * 6,
        **kw,
    )


def graph_without(model, group_name):
    graph = dependency_graph(model)
    groups = tuple(
        dataclasses.replace(g, prunable=False, reason="test") if g.name == group_name else g
        for g in graph.groups
    )
    return dataclasses.replace(graph, groups=groups)


def test_penalty_only_on_prunable_bns_and_scaled_by_images(data_dir, tmp_path):
    model = new_model()
    with torch.no_grad():  # some negative and zero gammas: sign(gamma), sign(0) = 0
        for i, (_, bn) in enumerate(model.named_bns()):
            if i % 3 == 1:
                bn.weight.neg_()
            if i % 5 == 2:
                bn.weight[0] = 0.0
    graph = graph_without(model, EXCLUDED)
    excluded_bns = {graph.convs[m].bn for m in graph.group(EXCLUDED).members}
    assert len(excluded_bns) >= 2
    backward(model)
    before = {n: p.grad.clone() for n, p in model.named_parameters()}

    s, accumulate = 1e-3, 2
    config = small_config(data_dir, tmp_path)
    ctx = context(model, config, tmp_path, accumulate=accumulate)
    cb = SparsityCallback(s, graph=graph, plots=False)
    cb.on_train_start(ctx)
    assert set(cb.bn_paths) == set(prunable_bn_paths(model, graph))
    assert not set(cb.bn_paths) & excluded_bns
    assert cb.images_per_step() == config.batch * accumulate == 16
    cb.on_after_backward(model, 0)

    penalised = {f"{p}.weight" for p in cb.bn_paths}
    n_changed = 0
    for name, p in model.named_parameters():
        if name in penalised:
            expected = before[name] + s * 16 * torch.sign(p.detach())
            torch.testing.assert_close(p.grad, expected, rtol=0, atol=1e-12)
            n_changed += 1
        else:  # head, conv weights, BN biases, the excluded group's gammas
            assert torch.equal(p.grad, before[name]), name
    assert n_changed == len(cb.bn_paths)
    assert any(n.startswith("head.") for n, _ in model.named_parameters())

    # per_step: the bare s * sign(gamma)
    backward(model)
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    cb = SparsityCallback(s, graph=graph, plots=False, reduction="per_step")
    cb.on_train_start(ctx)
    cb.on_after_backward(model, 0)
    for name, p in model.named_parameters():
        if name in penalised:
            torch.testing.assert_close(
                p.grad, before[name] + s * torch.sign(p.detach()), rtol=0, atol=1e-12
            )


def test_schedules_give_the_documented_s():
    const = SparsitySchedule(1e-3, "constant", epochs=10)
    assert [const.s_at(e) for e in range(10)] == [1e-3] * 10

    step = SparsitySchedule(1e-3, "global_decay", epochs=10, decay_start=0.5, decay_factor=0.01)
    assert step.start_epoch == 5
    assert [step.s_at(e) for e in range(5)] == [1e-3] * 5
    assert all(math.isclose(step.s_at(e), 1e-5) for e in range(5, 10))

    cos = SparsitySchedule(1e-3, "global_decay", epochs=10, decay_shape="cosine")
    values = [cos.s_at(e) for e in range(10)]
    assert values[:5] == [1e-3] * 5
    assert all(a > b for a, b in itertools.pairwise(values[4:]))  # strictly falling after start
    assert math.isclose(values[-1], 1e-5)

    local = SparsitySchedule(1e-3, "local_decay", epochs=10, decay_start=0.6)
    assert [local.s_at(e) for e in range(10)] == [1e-3] * 10
    assert [local.local_active(e) for e in range(10)] == [False] * 6 + [True] * 4

    with pytest.raises(ValueError, match="unknown sparsity schedule"):
        SparsitySchedule(1e-3, "sometimes")


def test_local_decay_spares_the_strongest_channels(data_dir, tmp_path):
    model = new_model()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, bn in model.named_bns():
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=gen) + 0.01)
    config = small_config(data_dir, tmp_path, epochs=4)
    ctx = context(model, config, tmp_path)
    s, keep = 1e-2, 0.2
    cb = SparsityCallback(
        s, "local_decay", keep_frac=keep, local_factor=0.01, decay_start=0.5, plots=False
    )
    cb.on_train_start(ctx)
    c = s * config.batch  # accumulate 1

    def added(epoch):
        ctx.epoch = epoch
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        cb.on_after_backward(model, 0)
        return {p: model.get_submodule(p).weight.grad.clone() for p in cb.bn_paths}

    early = added(1)  # before round(0.5 * 4) = 2 epochs: everyone gets s
    assert all(torch.allclose(g, torch.full_like(g, c)) for g in early.values())

    late = added(2)
    gammas = torch.cat([model.get_submodule(p).weight.detach() for p in cb.bn_paths])
    grads = torch.cat(list(late.values()))
    n_top = math.ceil(keep * gammas.numel())
    top = torch.zeros_like(gammas, dtype=torch.bool)
    top[torch.topk(gammas, n_top).indices] = True
    torch.testing.assert_close(grads[top], torch.full((n_top,), c * 0.01))
    torch.testing.assert_close(grads[~top], torch.full((gammas.numel() - n_top,), c))


def test_proximal_step_soft_thresholds_once_per_step(data_dir, tmp_path):
    model = new_model()
    with torch.no_grad():
        for _, bn in model.named_bns():
            bn.weight.copy_(torch.linspace(-0.05, 0.05, bn.weight.numel()))
    config = small_config(data_dir, tmp_path)
    ema = ModelEMA(model, decay=0.9, tau=1.0)
    ctx = context(model, config, tmp_path)
    ctx.ema = ema
    s = 1e-2
    cb = SparsityCallback(s, proximal=True, plots=False)
    cb.on_train_start(ctx)
    for group in ctx.optimizer.param_groups:
        group["lr"] = 0.1
    threshold = 0.1 * s * config.batch  # lr * N * s = 0.008
    before = {p: model.get_submodule(p).weight.detach().clone() for p in cb.bn_paths}

    backward(model)
    grads = {p: model.get_submodule(p).weight.grad.clone() for p in cb.bn_paths}
    cb.on_after_backward(model, 0)  # proximal: the gradient is left alone
    assert all(torch.equal(model.get_submodule(p).weight.grad, g) for p, g in grads.items())

    cb.on_batch_end(ctx, 0, torch.zeros(3))  # no step happened yet: nothing
    assert all(torch.equal(model.get_submodule(p).weight, w) for p, w in before.items())
    ctx.step += 1  # a step happened (weights unchanged here), then its EMA update
    ema.update(model)
    d = ema.decay_at(1)
    cb.on_batch_end(ctx, 0, torch.zeros(3))
    cb.on_batch_end(ctx, 1, torch.zeros(3))  # applied once per step, not per call
    for p, w in before.items():
        expected = torch.sign(w) * (w.abs() - threshold).clamp(min=0)
        torch.testing.assert_close(model.get_submodule(p).weight.detach(), expected)
        assert (model.get_submodule(p).weight == 0).sum() == (w.abs() <= threshold).sum()
        # the EMA as if its update had seen the thresholded weights
        torch.testing.assert_close(ema.ema.get_submodule(p).weight, d * w + (1 - d) * expected)


def test_gamma_stats():
    stats = gamma_stats(torch.tensor([0.0005, -0.005, 0.02, 0.07, 0.5]))
    assert stats["channels"] == 5
    assert stats["median"] == pytest.approx(0.02)
    assert stats["below_0.001"] == pytest.approx(0.2)
    assert stats["below_0.01"] == pytest.approx(0.4)
    assert stats["below_0.05"] == pytest.approx(0.6)
    assert stats["below_0.1"] == pytest.approx(0.8)


def test_sparse_training_shrinks_gammas_and_logs(data_dir, tmp_path):
    baseline = save_checkpoint(tmp_path / "baseline.pt", new_model(), {"stage": "train"})
    medians = {}
    for s, proximal in ((0.0, False), (2e-2, False), (2e-2, True)):
        name = f"s{s:g}" + "_prox" * proximal
        config = small_config(data_dir, tmp_path / "runs", name=name, grad_clip=None)
        result = sparse_train(config, s, "constant", weights=baseline, proximal=proximal)
        run = result.run_dir
        rows = read_sparsity_csv(run / "sparsity.csv")
        assert [r["epoch"] for r in rows] == [0, 1, 2]
        with (run / "sparsity.csv").open() as f:
            header = next(csv.reader(f))
        assert header == [
            "epoch",
            "s",
            "channels",
            "median",
            "below_0.001",
            "below_0.01",
            "below_0.05",
            "below_0.1",
        ]
        for e in (0, 1, 2):
            assert (run / "gamma" / f"epoch_{e:03d}.png").stat().st_size > 0
        model, meta = load_checkpoint(result.last)
        assert meta["stage"] == "sparse"
        assert meta["sparsity"]["s"] == s
        graph = dependency_graph(model)
        gammas = torch.cat(
            [model.get_submodule(p).weight.detach().abs() for p in prunable_bn_paths(model, graph)]
        )
        medians[name] = float(gammas.median())
        assert rows[-1]["median"] == pytest.approx(medians[name], rel=1e-4)
        assert rows[0]["median"] == pytest.approx(1.0)  # fresh BNs: gamma = 1
        assert meta["sparsity"]["proximal"] is proximal
    # 2 steps at lr 0.01, then 2 at 0.00505 (cosine), N = 8 images: the proximal step
    # moves a gamma by lr * N * s = 0.0016, 0.0008; the subgradient more (momentum adds
    # up); the data gradient alone barely moves the gammas in 4 steps
    assert medians["s0.02"] < medians["s0"] - 5e-3
    assert medians["s0.02_prox"] == pytest.approx(medians["s0"] - 0.0048, abs=5e-4)


def test_sparse_train_resume_keeps_the_saved_settings(data_dir, tmp_path):
    class StopAfterOne(Callback):
        def on_train_start(self, ctx):
            self.ctx = ctx

        def on_epoch_end(self, epoch, metrics):
            self.ctx.stop = True

    config = small_config(data_dir, tmp_path / "runs", epochs=2, val_every=1)
    first = sparse_train(config, 5e-3, "global_decay", plots=False, callbacks=[StopAfterOne()])
    assert first.run_dir.name == "sparse" and first.epochs_done == 1
    # resumed with other arguments: the run's own settings (saved in last.pt) win
    second = sparse_train(None, 1.0, "constant", resume=first.run_dir)
    assert second.epochs_done == 2
    rows = read_sparsity_csv(second.run_dir / "sparsity.csv")
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [r["s"] for r in rows] == pytest.approx([5e-3, 5e-3, 5e-5])  # decay from epoch 2
    _, meta = load_checkpoint(second.last)
    assert meta["sparsity"]["schedule"] == "global_decay" and meta["sparsity"]["s"] == 5e-3


def test_bn_lr_scale_multiplies_the_batchnorm_groups_lr(data_dir, tmp_path):
    """Under AdamW a parameter moves about lr per step whatever the penalty: bn_lr_scale is
    how a short sparse run takes gammas further. Only the BN group's lr is scaled, every
    step, and the setting is saved for a resume."""
    baseline = save_checkpoint(tmp_path / "baseline.pt", new_model(), {"stage": "train"})
    moved = {}
    for scale in (1.0, 4.0):
        config = small_config(
            data_dir, tmp_path / "runs", name=f"x{scale:g}", optimizer="AdamW", lr0=1e-3,
            grad_clip=None,
        )  # fmt: skip
        with pytest.warns(UserWarning, match="larger than the gradient of 100%"):
            result = sparse_train(
                config, 1.0, "constant", weights=baseline, bn_lr_scale=scale, probe_steps=2
            )
        report = json.loads((result.run_dir / "penalty.json").read_text())
        assert report["dominated_share"] == 1.0 and report["penalty"] == 8.0  # N * s
        assert 0 < report["suggested_s"] < 1.0
        with (result.run_dir / "results.csv").open() as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            lr = {k: float(row[k]) for k in ("lr/pg0", "lr/pg1", "lr/pg2")}
            assert lr["lr/pg1"] == pytest.approx(lr["lr/pg0"])
            assert lr["lr/pg2"] == pytest.approx(scale * lr["lr/pg0"])
        model, meta = load_checkpoint(result.last)
        assert meta["sparsity"]["bn_lr_scale"] == scale
        gammas = torch.cat(
            [model.get_submodule(p).weight.detach().abs() for p in prunable_bn_paths(model)]
        )
        moved[scale] = 1.0 - float(gammas.median())
    # s = 1 dominates every gamma's gradient: each moves ~lr per step, 4x as far at x4
    assert moved[4.0] > 3 * moved[1.0] > 0
    with pytest.raises(ValueError, match="bn_lr_scale"):
        SparsityCallback(1e-3, bn_lr_scale=0)


def test_auto_s_is_set_from_the_first_steps_gradients(data_dir, tmp_path):
    """s="auto": the probe's steps run without a penalty, then s is the one whose penalty
    outweighs 70 % of the gammas' mean |grad|; it is what the checkpoint and penalty.json
    record, and a resume keeps it."""
    baseline = save_checkpoint(tmp_path / "baseline.pt", new_model(), {"stage": "train"})
    config = small_config(data_dir, tmp_path / "runs", name="auto", grad_clip=None)
    result = sparse_train(config, "auto", "constant", weights=baseline, probe_steps=2)
    report = json.loads((result.run_dir / "penalty.json").read_text())
    _, meta = load_checkpoint(result.last)
    assert meta["sparsity"]["s"] == report["s"] == report["suggested_s"] > 0
    assert meta["sparsity"]["s_auto"] is False
    assert report["dominated_share"] == pytest.approx(0.7, abs=0.01)
    rows = read_sparsity_csv(result.run_dir / "sparsity.csv")
    assert rows[-1]["s"] == pytest.approx(report["s"], rel=1e-4)
    resumed = SparsityCallback.from_metadata(meta["sparsity"])
    assert resumed.settings["s"] == report["s"] and not resumed.auto
    with pytest.raises(ValueError, match="'auto'"):
        SparsityCallback("often")


def test_s_option_takes_a_number_or_auto():
    import click

    from trainer.compress.cli import S_FACTOR

    assert S_FACTOR.convert("auto", None, None) == "auto"
    assert S_FACTOR.convert("1e-5", None, None) == 1e-5
    for bad in ("-1", "lots"):
        with pytest.raises(click.BadParameter):
            S_FACTOR.convert(bad, None, None)
