"""Augmentation as a Ray Data pipeline: the trainer's own augmentation on Ray's CPU workers.

    ds = augmented_epoch(config, channels, epoch, indices)     # a ray.data.Dataset
    for images, targets in epoch_batches(ds, batch=8):        # the loader's batch contract
        ...

Each row is ``(epoch, index)``; a ``map_batches`` task decodes and augments it with
:class:`trainer.data.loader.TrainDataset` (mosaic, affine, colour, flips, mixup: the same
functions and the same ``(seed, epoch, index)`` random streams as the single-process
loader, so a sample is the same wherever it is computed), and :func:`epoch_batches`
collates them with :func:`trainer.data.loader.collate_train`'s contract through
``iter_torch_batches``. With ``ordered=True`` the rows come out in ``indices``' order
(the dataset's own ``DataContext`` preserves order), so the batches are exactly the
in-process loader's over the same indices; otherwise they arrive as Ray Data finishes them.

The map is a pool of Ray *tasks*, not actors: a dataset is built per epoch (the epoch is
in its rows), and actors would start (import torch, read the data set) every epoch, while
Ray reuses its task worker processes, which keep the augmentation state of a
``(config, channels, data source)`` in a small per-process cache (:func:`_augment`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["augmented_epoch", "epoch_batches"]

_CACHE_SIZE = 2  # augmentation states kept per task worker process
_CACHE: dict[tuple[str, int, str], _Augment] = {}


class _Augment:
    """Rows ``{epoch, index}`` -> ``{index, image, labels, n}`` (``image`` uint8
    (C, S, S); ``labels`` the (n, 5) float32 labels as bytes)."""

    def __init__(
        self,
        config: dict[str, Any],
        channels: int,
        data_source: Callable[[], str | Path] | None = None,
    ) -> None:
        from trainer.config import TrainConfig
        from trainer.data.augment import Augmenter
        from trainer.data.formats import read_dataset
        from trainer.data.loader import DatasetSamples, TrainDataset

        if data_source is not None:  # e.g. fetch the data set into this node's cache
            config = {**config, "data": str(data_source())}
        self.config = TrainConfig.from_dict(config)
        c = self.config
        self.augmenters = {
            cfg: Augmenter(cfg, c.imgsz, seed=c.seed)
            for cfg in {c.augment, c.augment.without_mosaic()}
        }
        samples = DatasetSamples(read_dataset(Path(c.data)), "train", gray=channels == 1)
        self.dataset = TrainDataset(samples, self.augmenters[c.augment], channels)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from trainer.engine import epoch_augment

        images, labels, counts = [], [], []
        for epoch, index in zip(batch["epoch"].tolist(), batch["index"].tolist(), strict=True):
            self.dataset.augmenter = self.augmenters[epoch_augment(self.config, epoch)]
            self.dataset.set_epoch(epoch)
            image, label = self.dataset[index]  # (C, S, S) uint8, (n, 5) float32
            images.append(image.numpy())
            labels.append(label.numpy().astype(np.float32).tobytes())
            counts.append(len(label))
        return {
            "index": batch["index"],
            "image": np.stack(images),
            "labels": np.array(labels, dtype=object),
            "n": np.array(counts, dtype=np.int64),
        }


def _augment(
    batch: dict[str, np.ndarray],
    config: dict[str, Any],
    channels: int,
    data_source: Callable[[], str | Path] | None = None,
) -> dict[str, np.ndarray]:
    """The ``map_batches`` function: :class:`_Augment` of this process's cache (keyed by
    the config, the channels and ``repr(data_source)``)."""
    key = (json.dumps(config, sort_keys=True, default=str), int(channels), repr(data_source))
    augment = _CACHE.get(key)
    if augment is None:
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        augment = _CACHE[key] = _Augment(config, channels, data_source)
    return augment(batch)


def augmented_epoch(
    config,
    channels: int,
    epoch: int,
    indices: Sequence[int],
    *,
    concurrency: int = 1,
    num_cpus: float | None = None,
    ordered: bool = False,
    data_source: Callable[[], str | Path] | None = None,
    progress_bars: bool | None = None,
):
    """The augmented samples ``indices`` of epoch ``epoch`` of ``config.data``'s training
    split, as a lazy ``ray.data.Dataset``.

    Args:
        concurrency: augmentation tasks at most at once.
        num_cpus: CPU slots each task claims (Ray Data's default, 1, when None; 0 runs
            them beside whatever holds the CPUs).
        ordered: rows in ``indices``' order (else as they finish).
        data_source: a picklable callable run once per task worker process that returns
            the data set's path there (e.g. fetches it into a node-local cache); its
            ``repr`` identifies the data set. Default: ``config.data`` as it is.
        progress_bars: Ray Data's progress bars for this dataset (None: as configured).
    """
    import ray.data

    rows = [{"epoch": int(epoch), "index": int(i)} for i in indices]
    remote: dict[str, Any] = {} if num_cpus is None else {"num_cpus": float(num_cpus)}
    ds = ray.data.from_items(rows).map_batches(
        _augment,
        fn_kwargs={"config": config.to_dict(), "channels": channels, "data_source": data_source},
        batch_size=8,
        compute=ray.data.TaskPoolStrategy(size=max(1, int(concurrency))),
        **remote,
    )
    if ordered:
        ds.context.execution_options.preserve_order = True
    if progress_bars is not None:
        ds.context.enable_progress_bars = bool(progress_bars)
    return ds


def _collate(batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.array(batch["image"])).float().div_(255.0)  # (B, C, S, S)
    targets = []
    for i, (raw, n) in enumerate(zip(batch["labels"], batch["n"].tolist(), strict=True)):
        label = torch.from_numpy(np.frombuffer(raw, dtype=np.float32).reshape(n, 5).copy())
        targets.append(torch.cat((torch.full((n, 1), float(i)), label), dim=1))  # (n, 6)
    return images, torch.cat(targets) if targets else torch.zeros((0, 6))


def _collate_fn():
    """:func:`_collate` as the callable class ``iter_torch_batches`` wants since Ray 2.47."""
    from ray.data.collate_fn import NumpyBatchCollateFn

    class _Collate(NumpyBatchCollateFn):
        def __call__(self, batch: dict[str, np.ndarray]):
            return _collate(batch)

    return _Collate()


def epoch_batches(dataset, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images (B, C, S, S) float in [0, 1], targets (T, 6))`` batches of ``dataset``
    (the last one smaller): the ``train_batches`` contract of :func:`trainer.engine.train`."""
    return iter(
        dataset.iter_torch_batches(batch_size=batch, collate_fn=_collate_fn(), drop_last=False)
    )
