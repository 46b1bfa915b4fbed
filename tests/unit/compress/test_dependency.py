"""Channel groups traced from the fx graph equal what the spec declares (two derivations)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.compress.dependency import (
    INPUT,
    Consumer,
    DependencyError,
    from_spec,
    trace_dependencies,
)
from trainer.model import build, get_spec, list_variants


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small convs: one thread is as fast, and does not spin against a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _meta(spec):
    with torch.device("meta"):
        return build(spec)


def _declared(spec):
    """Groups, members and consumers straight from spec.conv_nodes() (no compress code)."""
    nodes = spec.conv_nodes()
    width = {INPUT: spec.in_channels} | {n.group: n.out_channels for n in nodes}
    members: dict[str, list[str]] = {}
    consumers: dict[str, set[tuple[str, int]]] = {}
    for n in nodes:
        members.setdefault(n.group, []).append(n.name)
        off = 0
        for g in n.inputs:
            consumers.setdefault(g, set()).add((n.name, off))
            off += width[g]
    return {
        tuple(ms): (
            width[g],
            frozenset(consumers.get(g, ())),
            all(x.prunable for x in nodes if x.group == g),
        )
        for g, ms in members.items()
    }


def _traced(graph):
    return {
        g.members: (g.width, frozenset((c.conv, c.offset) for c in g.consumers), g.prunable)
        for g in graph.groups
    }


@pytest.mark.parametrize("variant", list_variants())
def test_traced_groups_equal_the_spec_for_every_variant(variant):
    spec = get_spec(variant)
    graph = trace_dependencies(_meta(spec))
    assert graph.source == "fx"
    assert _traced(graph) == _declared(spec)
    # the spec's own summary of groups: prunable groups are exactly channel_groups()
    assert {g.members for g in graph.prunable} == set(spec.channel_groups().values())
    kept = {g.name: g.reason for g in graph.groups if not g.prunable}
    assert kept == {f"head.{p}.pred": "network output" for p in ("p3", "p4", "p5")}
    # both derivations agree field by field, conv input layouts included
    ref = from_spec(spec)
    assert graph.convs == ref.convs
    assert _canonical(graph) == _canonical(ref)


def _canonical(graph):
    return sorted(
        (
            g.name,
            g.members,
            g.width,
            g.prunable,
            tuple(sorted((c.conv, c.offset, c.start, c.length) for c in g.consumers)),
        )
        for g in graph.groups
    )


def test_trunks_spp_and_concat_offsets():
    spec = get_spec("yolov4-n", input_size=64)
    graph = trace_dependencies(_meta(spec))
    trunk = graph.group("backbone.stage3.blocks.1.conv2")
    assert trunk.members == (
        "backbone.stage3.main",
        "backbone.stage3.blocks.0.conv2",
        "backbone.stage3.blocks.1.conv2",
        "backbone.stage3.blocks.2.conv2",
    )
    w = spec.neck.spp.pre[-1]
    spp = graph.group("neck.spp.pre.2")
    assert [(c.conv, c.offset) for c in spp.consumers] == [
        ("neck.spp.post.0", i * w) for i in range(4)
    ]
    skip = graph.group("backbone.stage2.skip")
    assert skip.consumers == (
        Consumer("backbone.stage2.fuse", spec.backbone.stages[1].transition, 0, skip.width),
    )
    assert graph.convs["backbone.stem"].inputs[0].group == INPUT
    assert graph.folds_exactly("neck.spp.pre.2") and not graph.folds_exactly("neck.td3.convs.4")


def test_layer_and_width_pruned_specs_trace_like_their_spec():
    spec = get_spec("yolov4-n", input_size=64)
    spec = spec.without_blocks(["backbone.stage4.blocks.0", *spec.block_names()[2:5]])
    spec = spec.with_widths({"backbone.stage4.trunk": 24, "neck.spp.pre.2": 40})
    assert spec.depths[2] == 0  # a stage with no residual block left: main alone is the trunk
    graph = trace_dependencies(_meta(spec))
    assert _traced(graph) == _declared(spec)
    assert graph.group("backbone.stage3.main").members == ("backbone.stage3.main",)


class _Toy(nn.Module):
    def __init__(self, op=None):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.b_bn = nn.BatchNorm2d(8)
        self.c = nn.Conv2d(16, 4, 1)
        self.op = op

    def forward(self, x):
        y = self.a(x) + self.b_bn(self.b(x))  # ties a and b
        if self.op is not None:
            y = self.op(y)
        lo, hi = torch.chunk(y, 2, dim=1)
        return self.c(torch.cat([hi, lo, hi, lo], 1))


def test_toy_graph_ties_adds_and_slices_chunks():
    graph = trace_dependencies(_Toy())
    (tied,) = [g for g in graph.groups if g.tied]
    assert tied.members == ("a.0", "b") and tied.prunable
    assert graph.convs["b"].bn == "b_bn" and graph.convs["a.0"].bn == "a.1"
    assert [(c.conv, c.offset, c.start, c.length) for c in tied.consumers] == [
        ("c", 0, 4, 4),
        ("c", 4, 0, 4),
        ("c", 8, 4, 4),
        ("c", 12, 0, 4),
    ]
    assert not graph.group("c").prunable and graph.group("c").reason == "network output"


def test_unknown_channel_op_is_an_error_not_a_guess():
    with pytest.raises(DependencyError, match="unknown channel mapping"):
        trace_dependencies(_Toy(op=lambda t: torch.roll(t, 1, dims=1)))


def test_dependency_graph_falls_back_to_the_spec_with_a_warning(monkeypatch):
    import trainer.compress.dependency as dep

    spec = get_spec("yolov4-n", input_size=64)
    model = _meta(spec)

    def broken(_model):
        raise DependencyError("simulated")

    monkeypatch.setattr(dep, "trace_dependencies", broken)
    with pytest.warns(RuntimeWarning, match="simulated"):
        graph = dep.dependency_graph(model)
    assert graph.source == "spec" and graph.convs == from_spec(spec).convs
