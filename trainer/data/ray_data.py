"""Augmentation as a Ray Data pipeline: the trainer's own augmentation on Ray's CPU workers.

    ds = augmented_epoch(config, channels, epoch, indices)     # a ray.data.Dataset
    for images, targets in epoch_batches(ds, batch=8):        # the loader's batch contract
        ...

Each row is ``(epoch, index)``; a ``map_batches`` actor (:class:`_Augment`) decodes and
augments it with :class:`trainer.data.loader.TrainDataset` (mosaic, affine, colour,
flips, mixup: the same functions and the same ``(seed, epoch, index)`` random streams as
the single-process loader, so a sample is the same wherever it is computed), and
:func:`epoch_batches` collates them with :func:`trainer.data.loader.collate_train`'s
contract through ``iter_torch_batches``. Batches arrive in the order Ray Data finishes
them (set ``DataContext.execution_options.preserve_order`` for a fixed order).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["augmented_epoch", "epoch_batches"]


class _Augment:
    """``map_batches`` callable: rows ``{epoch, index}`` -> ``{index, image, labels, n}``
    (``image`` uint8 (C, S, S); ``labels`` the (n, 5) float32 labels as bytes)."""

    def __init__(self, config: dict[str, Any], channels: int) -> None:
        from trainer.config import TrainConfig
        from trainer.data.augment import Augmenter
        from trainer.data.formats import read_dataset
        from trainer.data.loader import DatasetSamples, TrainDataset

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


def augmented_epoch(
    config, channels: int, epoch: int, indices: Sequence[int], *, concurrency: int = 1
):
    """The augmented samples ``indices`` of epoch ``epoch`` of ``config.data``'s training
    split, as a lazy ``ray.data.Dataset`` computed by ``concurrency`` actors."""
    import ray.data

    rows = [{"epoch": int(epoch), "index": int(i)} for i in indices]
    return ray.data.from_items(rows).map_batches(
        _Augment,
        fn_constructor_kwargs={"config": config.to_dict(), "channels": channels},
        batch_size=8,
        concurrency=concurrency,
    )


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
    """``(images (B, C, S, S) float in [0, 1], targets (T, 6))`` batches of ``dataset``:
    the ``train_batches`` contract of :func:`trainer.engine.train`."""
    return iter(dataset.iter_torch_batches(batch_size=batch, collate_fn=_collate_fn()))
