"""Compression of the YOLOv4 family: dependency groups, channel and layer pruning.

from trainer.compress import prune
result = prune(model, percent=50, layers=4)   # layers first, then channels
result.model, result.spec, result.plan        # pruned model, its spec, the channel plan

See :mod:`.dependency` (coupled channels from the fx graph), :mod:`.channel_prune`
(global |gamma| threshold, bias folding and what is exact), :mod:`.layer_prune`
(residual blocks by mean |gamma|) and :mod:`.plots`.
"""

from .channel_prune import (
    FoldError,
    PrunePlan,
    SearchResult,
    apply_channel_prune,
    channel_importance,
    fold_border_bound,
    folded_model,
    masked_model,
    max_output_diff,
    max_percent_within,
    plan_channel_prune,
    prune_by_percent,
)
from .dependency import (
    ChannelGroup,
    Consumer,
    ConvInfo,
    DependencyError,
    DependencyGraph,
    dependency_graph,
    from_spec,
    trace_dependencies,
)
from .layer_prune import (
    PruneResult,
    apply_layer_prune,
    block_scores,
    masked_blocks,
    plan_layer_prune,
    prune,
)

__all__ = [
    "ChannelGroup",
    "Consumer",
    "ConvInfo",
    "DependencyError",
    "DependencyGraph",
    "FoldError",
    "PrunePlan",
    "PruneResult",
    "SearchResult",
    "apply_channel_prune",
    "apply_layer_prune",
    "block_scores",
    "channel_importance",
    "dependency_graph",
    "fold_border_bound",
    "folded_model",
    "from_spec",
    "masked_blocks",
    "masked_model",
    "max_output_diff",
    "max_percent_within",
    "plan_channel_prune",
    "plan_layer_prune",
    "prune",
    "prune_by_percent",
    "trace_dependencies",
]

# sparse training and distillation (appended)
from .distill import DistillCallback, DistillLoss, distill_train, imitation_mask
from .sparsity import SparsityCallback, SparsitySchedule, sparse_train

__all__ += [
    "DistillCallback",
    "DistillLoss",
    "SparsityCallback",
    "SparsitySchedule",
    "distill_train",
    "imitation_mask",
    "sparse_train",
]
