"""From a :class:`~trainer.data.dataset.DetectionDataset` to torch batches.

* :class:`DatasetSamples` - one split as the augmenter's ``SampleProvider`` (decodes images
  gray or colour).
* :class:`TrainDataset` - augmented samples (:class:`~trainer.data.augment.Augmenter`),
  each a pure function of ``(seed, epoch, index)``: call :meth:`TrainDataset.set_epoch`
  before iterating an epoch.
* :class:`ValDataset` - the letterbox of inference only
  (:func:`slimspect.detection.preprocess`, what a station feeds the network), with the
  :class:`~slimspect.detection.LetterboxInfo` to map detections back and the ground truth
  in SOURCE pixels.
* :func:`collate_train`, :func:`collate_val` and :func:`train_loader`.

Batch contract (what the engine and the loss read)::

    images:  (B, C, S, S) float32 in [0, 1]; C = 1 (gray) or 3 (RGB order, as preprocess)
    targets: (T, 6) float32 [image_index, class, cx, cy, w, h] in input pixels
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from slimspect.detection import LetterboxInfo, preprocess
from trainer.data.augment import Augmenter, Sample, SampleProvider
from trainer.data.dataset import DetectionDataset, image_info, load_image

__all__ = [
    "DatasetSamples",
    "TrainDataset",
    "ValBatch",
    "ValDataset",
    "collate_train",
    "collate_val",
    "epoch_seed",
    "open_provider",
    "train_loader",
    "val_loader",
]


def epoch_seed(seed: int, epoch: int) -> int:
    """One 63-bit seed per ``(seed, epoch)``: the shuffle and torch's RNG of that epoch."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, np.uint64)[0] >> 1)


class DatasetSamples:
    """One split of a data set as a :class:`~trainer.data.augment.SampleProvider`.

    Args:
        ds: the data set (``trainer.data.formats.read_dataset``).
        split: the split to serve; None, or a split the data set lacks, serves every sample.
        gray: decode images as 1-channel (True) or 3-channel BGR (False); None decides from
            the first image (gray when it has one channel).
    """

    def __init__(self, ds: DetectionDataset, split: str | None, gray: bool | None = None):
        self.root = Path(ds.root)
        if split is not None and split in ds.splits:
            self.samples = list(ds.splits[split])
        else:
            self.samples = [sample for _, sample in ds.samples()]
        if not self.samples:
            raise ValueError(f"{self.root}: no images in split {split!r}")
        if gray is None:
            gray = image_info(self.root / self.samples[0].image)[2] == 1
        self.gray = gray

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Sample:
        sample = self.samples[index]
        path = self.root / sample.image
        image = load_image(path, gray=self.gray)
        if image is None:
            raise OSError(f"cannot read image {path}")
        return image, sample.boxes, sample.classes


def open_provider(path: Path, split: str | None = "train") -> tuple[SampleProvider, list[str]]:
    """The samples of ``split`` (all samples if the data set has no such split) of the data
    set at ``path``, and its class names."""
    from trainer.data.formats import read_dataset

    ds = read_dataset(Path(path))
    return DatasetSamples(ds, split), list(ds.names)


def _to_chw(image: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (S, S) gray or (S, S, 3) BGR -> (C, S, S), RGB order for C = 3 (as preprocess)."""
    if channels == 1:
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        return image[None]
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image.transpose(2, 0, 1)


class TrainDataset(Dataset):
    """Augmented training samples; item ``i`` of epoch ``e`` depends on ``(seed, e, i)`` only.

    ``__getitem__`` returns ``(image, labels)``: uint8 (C, S, S) and float32 (N, 5)
    ``[class, cx, cy, w, h]`` in input pixels (uint8 keeps worker-to-main copies small;
    :func:`collate_train` scales to [0, 1]).
    """

    def __init__(self, samples: SampleProvider, augmenter: Augmenter, channels: int):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.samples = samples
        self.augmenter = augmenter
        self.channels = channels
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation of ``epoch``; call before building the epoch's iterator
        (worker processes copy the dataset when the iterator starts)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self.augmenter.rng_for(index, self.epoch)
        image, boxes, classes = self.augmenter(self.samples, index, rng)
        chw = np.ascontiguousarray(_to_chw(image, self.channels))  # (C, S, S) uint8
        labels = np.zeros((len(boxes), 5), np.float32)  # (N, 5)
        labels[:, 0] = classes
        labels[:, 1] = (boxes[:, 0] + boxes[:, 2]) / 2
        labels[:, 2] = (boxes[:, 1] + boxes[:, 3]) / 2
        labels[:, 3] = boxes[:, 2] - boxes[:, 0]
        labels[:, 4] = boxes[:, 3] - boxes[:, 1]
        return torch.from_numpy(chw), torch.from_numpy(labels)


def collate_train(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> images (B, C, S, S) float32 in [0, 1], targets (T, 6) [img, cls, cx, cy, w, h]."""
    images = torch.stack([im for im, _ in batch]).float().div_(255.0)  # (B, C, S, S)
    targets = [
        torch.cat((torch.full((len(lb), 1), float(i)), lb), dim=1)  # (N_i, 6)
        for i, (_, lb) in enumerate(batch)
    ]
    return images, torch.cat(targets) if targets else torch.zeros((0, 6))


def _worker_init(worker_id: int) -> None:
    # Augmentation draws from its own (seed, epoch, index) generators; this only keeps any
    # stray use of the global RNGs reproducible. (Do not call cv2.setNumThreads here: in a
    # forked worker of a process whose OpenCV pool has started, it deadlocks.)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def train_loader(
    dataset: TrainDataset, batch: int, workers: int, seed: int, epoch: int
) -> DataLoader:
    """The loader of one epoch: its shuffle depends on ``(seed, epoch)`` only."""
    dataset.set_epoch(epoch)
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate_train,
        generator=generator,
        worker_init_fn=_worker_init if workers else None,
        pin_memory=torch.cuda.is_available(),
        drop_last=False,
    )


# ---------------------------------------------------------------------------------------------
# Validation


class ValDataset(Dataset):
    """Letterboxed images as a station sees them, with the ground truth in source pixels.

    ``__getitem__`` returns ``(image, info, boxes, classes)``: float32 (C, S, S) in [0, 1],
    the :class:`LetterboxInfo`, float32 (M, 4) ``x1, y1, x2, y2`` source pixels, int64 (M,).
    """

    def __init__(self, ds: DetectionDataset, split: str, imgsz: int, channels: int):
        if split not in ds.splits or not ds.splits[split]:
            raise ValueError(
                f"{ds.root}: no split {split!r} (splits: {', '.join(ds.splits) or 'none'})"
            )
        self.samples = DatasetSamples(ds, split, gray=channels == 1)
        self.names = list(ds.names)
        self.imgsz = int(imgsz)
        self.channels = channels
        self.split = split

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image, boxes, classes = self.samples.load(index)
        x, info = preprocess(image, self.imgsz, channels=self.channels, source_order="bgr")
        return torch.from_numpy(x[0]), info, boxes, classes  # x: (1, C, S, S)


@dataclass
class ValBatch:
    images: torch.Tensor  # (B, C, S, S) float32 in [0, 1]
    infos: list[LetterboxInfo]
    boxes: list[np.ndarray]  # B x (M_i, 4) source pixels
    classes: list[np.ndarray]  # B x (M_i,)
    targets: torch.Tensor  # (T, 6) [img, cls, cx, cy, w, h] input pixels (for the val loss)


def collate_val(batch) -> ValBatch:
    images = torch.stack([b[0] for b in batch])  # (B, C, S, S)
    infos = [b[1] for b in batch]
    boxes = [b[2] for b in batch]
    classes = [b[3] for b in batch]
    rows = []
    for i, (info, bx, cl) in enumerate(zip(infos, boxes, classes, strict=True)):
        xyxy = info.to_input(bx).astype(np.float32).reshape(-1, 4)  # (M, 4) input pixels
        t = np.zeros((len(xyxy), 6), np.float32)
        t[:, 0] = i
        t[:, 1] = cl
        t[:, 2] = (xyxy[:, 0] + xyxy[:, 2]) / 2
        t[:, 3] = (xyxy[:, 1] + xyxy[:, 3]) / 2
        t[:, 4] = xyxy[:, 2] - xyxy[:, 0]
        t[:, 5] = xyxy[:, 3] - xyxy[:, 1]
        rows.append(t)
    targets = torch.from_numpy(np.concatenate(rows)) if rows else torch.zeros((0, 6))
    return ValBatch(images, infos, boxes, classes, targets)


def val_loader(dataset: ValDataset, batch: int, workers: int = 0) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_val,
        worker_init_fn=_worker_init if workers else None,
    )
