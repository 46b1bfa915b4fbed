"""Data-parallel training of the one training loop, as a callback: each worker its shard.

:class:`DataParallel` turns :func:`trainer.engine.train` (and ``sparse_train`` /
``distill_train``, which call it) into one replica of a data-parallel run over a
``torch.distributed`` process group (gloo on CPU), without changing the engine:

* its :meth:`~DataParallel.batches` is the ``train_batches`` hook: epoch ``e``'s shuffle of
  the training split (the same permutation on every worker, seeded by ``(seed, e)``),
  padded to a multiple of the world size and dealt out ``rank::world``; every worker
  yields the same number of batches of ``ceil(batch / world)`` images, so ``batch``
  stays the GLOBAL batch (as one process trains with) and the engine's schedule,
  accumulation and weight decay are unchanged;
* at the start, parameters and buffers are broadcast from rank 0 (as DDP does);
* each parameter's gradient is SUMMED over the workers as autograd produces it (a tensor
  hook, as DDP reduces during backward): the engine's loss is a sum over images, so the
  step sees the gradient of the sum over the global batch, exactly as one process
  would; callbacks that change gradients afterwards (sparse training's L1 term) add
  their term once, on identical parameters;
* before every optimizer step the BatchNorm running statistics are broadcast from rank
  0, so the EMA, validation and early stopping agree on every worker.

Where the augmentation runs (``ray_data``): in the worker's own process (None, the
default), or on Ray's CPU workers as a Ray Data pipeline (:class:`RayDataAugment`:
:func:`trainer.data.ray_data.augmented_epoch`, streamed with ``iter_torch_batches``). Either
way a worker trains on the same batches: for epoch ``e`` the Ray Data dataset holds exactly
this rank's share of ``e``'s permutation (:func:`shard_indices`), in order, cut into the same
``ceil(batch / world)`` batches, and every sample depends on ``(seed, e, index)`` only.

Why a dataset per rank and epoch, not Ray Train's ``get_dataset_shard``: the shards of a
dataset passed to the trainer are cut by ``streaming_split``, which deals blocks to
whichever worker asks first, so which images a rank gets, and in what order, changes from
run to run; and one dataset serves every epoch, so its rows cannot carry the epoch that
seeds the shuffle and the augmentation. Training would no longer be the single-process
run's (the global batch differs), and a resumed run would not continue exactly. Building
the rank's dataset from ``(seed, epoch, rank, world)`` keeps both, costs one small Ray
Data plan per epoch (its tasks reuse Ray's worker processes), and still moves the decoding
and augmentation off the training processes, onto any CPU of the cluster.

Why not ``DistributedDataParallel`` / ``ray.train.torch.prepare_model``: the engine keeps
the module it trains for the EMA, checkpoints (``state_dict`` keys), ``model.spec`` and
validation; a DDP wrapper would have to be threaded through all of them. The hooks above
give the same synchronous data-parallel SGD.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from trainer.callbacks import Callback, TrainContext
from trainer.data.augment import Augmenter
from trainer.data.loader import DatasetSamples, TrainDataset, collate_train, epoch_seed

__all__ = ["DataParallel", "RayDataAugment", "shard_indices"]


def shard_indices(n: int, rank: int, world: int, seed: int, epoch: int) -> list[int]:
    """Epoch ``epoch``'s shuffle of ``range(n)``, padded by wrapping to a multiple of
    ``world``, every ``world``-th from ``rank``: equal-length disjoint-ish shards whose
    union is every index (the padding repeats the first ones)."""
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    order = torch.randperm(n, generator=generator).tolist()
    total = math.ceil(n / world) * world
    order += order[: total - n]
    return order[rank::world]


@dataclass(frozen=True)
class RayDataAugment:
    """Augment on Ray Data (see the module docstring).

    Attributes:
        workers: augmentation tasks at once per training worker.
        cpus: CPU slots each task claims (0: beside whatever holds the CPUs).
        data_source: picklable, run once per Ray worker process: the data set's local path
            there (e.g. fetched from the store into the node's cache); default the training
            config's ``data`` (a path every node can read).
    """

    workers: int = 1
    cpus: float = 1.0
    data_source: Callable[[], str | Path] | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.cpus < 0:
            raise ValueError(f"cpus must be >= 0, got {self.cpus}")


class DataParallel(Callback):
    """See the module docstring. Pass it among the callbacks and :meth:`batches` as
    ``train_batches``; ``world == 1`` is a plain single-process run; ``ray_data``
    augments on Ray Data instead of in this process."""

    def __init__(
        self, rank: int = 0, world: int = 1, *, ray_data: RayDataAugment | None = None
    ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in a world of {world}")
        self.rank, self.world = rank, world
        self.ray_data = ray_data
        self.ctx: TrainContext | None = None
        self.dataset: TrainDataset | None = None
        self._augmenters: dict = {}
        self._hooks: list = []

    @property
    def distributed(self) -> bool:
        return self.world > 1 and dist.is_available() and dist.is_initialized()

    # ---- callback hooks ------------------------------------------------------------------

    def on_train_start(self, ctx: TrainContext) -> None:
        from trainer.data.formats import read_dataset

        self.ctx = ctx
        ctx.extra["world"] = self.world
        ctx.extra["augment_on"] = "worker" if self.ray_data is None else "ray_data"
        config = ctx.config
        channels = ctx.model.spec.in_channels
        self._augmenters = {
            cfg: Augmenter(cfg, config.imgsz, seed=config.seed)
            for cfg in {config.augment, config.augment.without_mosaic()}
        }
        samples = DatasetSamples(read_dataset(config.data), "train", gray=channels == 1)
        self.dataset = TrainDataset(samples, self._augmenters[config.augment], channels)
        if not self.distributed:
            return
        with torch.no_grad():
            for tensor in ctx.model.state_dict().values():
                dist.broadcast(tensor, src=0)
            if ctx.ema is not None:
                for tensor in ctx.ema.ema.state_dict().values():
                    dist.broadcast(tensor, src=0)
        for group in ctx.optimizer.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    self._hooks.append(p.register_hook(self._sum_over_workers))

    def on_after_backward(self, model, step: int) -> None:
        if not self.distributed:
            return
        with torch.no_grad():
            for buffer in model.buffers():
                if buffer.is_floating_point() or buffer.dtype == torch.long:
                    dist.broadcast(buffer, src=0)

    def on_train_end(self, ctx: TrainContext, result) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    # ---- batches ---------------------------------------------------------------------------

    def shard(self, epoch: int) -> list[int]:
        """The training-split indices this worker trains on in ``epoch``, in order."""
        if self.ctx is None or self.dataset is None:
            raise RuntimeError("DataParallel used before on_train_start")
        n = len(self.dataset)
        return shard_indices(n, self.rank, self.world, self.ctx.config.seed, epoch)

    @property
    def worker_batch(self) -> int:
        """Images per batch of this worker: ``ceil(batch / world)``."""
        if self.ctx is None:
            raise RuntimeError("DataParallel used before on_train_start")
        return math.ceil(self.ctx.config.batch / self.world)

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The ``train_batches`` hook: this worker's batches of ``epoch``."""
        from trainer.engine import epoch_augment

        indices = self.shard(epoch)
        if self.ray_data is not None:
            return self._ray_data_batches(epoch, indices)
        config = self.ctx.config
        self.dataset.augmenter = self._augmenters[epoch_augment(config, epoch)]
        self.dataset.set_epoch(epoch)
        loader = DataLoader(
            Subset(self.dataset, indices),
            batch_size=self.worker_batch,
            shuffle=False,
            num_workers=0,
            collate_fn=collate_train,
            drop_last=False,
        )
        return iter(loader)

    def _ray_data_batches(self, epoch: int, indices: list[int]):
        from trainer.data.ray_data import augmented_epoch, epoch_batches

        r = self.ray_data
        dataset = augmented_epoch(
            self.ctx.config,
            self.dataset.channels,
            epoch,
            indices,
            concurrency=r.workers,
            num_cpus=r.cpus,
            ordered=True,
            data_source=r.data_source,
            progress_bars=False,
        )
        return epoch_batches(dataset, self.worker_batch)

    def _sum_over_workers(self, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad
