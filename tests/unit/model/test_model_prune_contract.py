"""The spec's conv graph is all a channel pruner needs: a miniature pruner proves it.

Channels whose BN gamma and beta are zero output act(0) = 0 (Mish and leaky ReLU), so
cutting them with the masks that ``spec.conv_nodes()`` implies must leave the outputs
unchanged. That checks every group, tie and concat order a real pruner relies on.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.model import build, load_weights

DROP = {
    "backbone.stage2.skip": [0, 3],  # second half of a fuse concat
    "backbone.stage3.trunk": [1, 5],  # tied by residual adds
    "backbone.stage3.blocks.1.conv1": [2],  # a block's hidden width
    "neck.spp.pre.2": [0, 7],  # read four times by the SPP concat
    "neck.td4.reduce": [4],  # upsampled, second in its concat
    "neck.td3.convs.4": [0],  # feeds bu4.down and head.p3
}


def test_pruning_by_conv_nodes_keeps_the_outputs(small_spec):
    model = build(small_spec, seed=0).double().eval()  # float64: no rounding noise
    nodes = small_spec.conv_nodes()
    modules = dict(model.named_modules())
    width = {"input": small_spec.in_channels} | {n.group: n.out_channels for n in nodes}
    keep = {
        g: torch.tensor([c for c in range(w) if c not in DROP.get(g, [])]) for g, w in width.items()
    }

    x = torch.randn(2, 1, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        # running stats = this batch's, so eval-mode activations are O(1) and not ~0 as at init
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 1.0
        model.train()(x)
        model.eval()
        for n in nodes:
            if n.group in DROP:
                modules[n.name].bn.weight[DROP[n.group]] = 0
                modules[n.name].bn.bias[DROP[n.group]] = 0
        expected, feats = model(x, return_features=True)
    assert all(f.abs().mean() > 0.05 for f in feats)  # a live signal, or nothing is checked

    pruned_spec = small_spec.with_widths({g: len(keep[g]) for g in DROP})
    old, new = model.state_dict(), {}
    for n in nodes:
        out_idx = keep[n.group]
        offsets = torch.tensor([0, *(width[g] for g in n.inputs)]).cumsum(0)
        in_idx = torch.cat([keep[g] + off for g, off in zip(n.inputs, offsets, strict=False)])
        if n.prunable:
            new[f"{n.name}.conv.weight"] = old[f"{n.name}.conv.weight"][out_idx][:, in_idx]
            for k in ("weight", "bias", "running_mean", "running_var"):
                new[f"{n.name}.bn.{k}"] = old[f"{n.name}.bn.{k}"][out_idx]
            new[f"{n.name}.bn.num_batches_tracked"] = old[f"{n.name}.bn.num_batches_tracked"]
        else:
            new[f"{n.name}.weight"] = old[f"{n.name}.weight"][:, in_idx]
            new[f"{n.name}.bias"] = old[f"{n.name}.bias"]

    pruned = build(pruned_spec).double().eval()
    load_weights(pruned, new)
    with torch.no_grad():
        got = pruned(x)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)
    assert pruned_spec.num_params() < small_spec.num_params()
