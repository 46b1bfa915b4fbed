"""Ray Data augmentation gives exactly the single-process loader's samples, in batches
that follow the training loop's batch contract."""

from __future__ import annotations

import pytest
import torch

from trainer.config import TrainConfig
from trainer.data.formats import read_dataset
from trainer.data.loader import DatasetSamples, TrainDataset, collate_train
from trainer.data.ray_data import augmented_epoch, epoch_batches
from trainer.data.synth import synthesize

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_ray_data_samples_equal_the_loaders(ray_local, tmp_path):
    from trainer.data.augment import Augmenter
    from trainer.engine import epoch_augment

    synthesize(tmp_path / "data", images=10, size=64, seed=3, val_fraction=0.2)
    config = TrainConfig(data=str(tmp_path / "data" / "data.yaml"), imgsz=64, batch=4, epochs=3)
    epoch, indices = 1, [0, 3, 5, 6]
    rows = {int(r["index"]): r for r in augmented_epoch(config, 1, epoch, indices).take_all()}
    assert sorted(rows) == indices

    augmenter = Augmenter(epoch_augment(config, epoch), config.imgsz, seed=config.seed)
    local = TrainDataset(DatasetSamples(read_dataset(tmp_path / "data"), "train"), augmenter, 1)
    local.set_epoch(epoch)
    for index in indices:
        image, labels = local[index]
        assert torch.equal(torch.from_numpy(rows[index]["image"].copy()), image)
        assert int(rows[index]["n"]) == len(labels)

    batches = list(epoch_batches(augmented_epoch(config, 1, epoch, indices), batch=3))
    assert [b[0].shape[0] for b in batches] == [3, 1]
    images, targets = batches[0]
    assert images.dtype == torch.float32 and images.shape[1:] == (1, 64, 64)
    assert images.max() <= 1.0 and targets.shape[1] == 6
    ref_images, ref_targets = collate_train([local[i] for i in indices[:3]])
    assert ref_images.shape == images.shape and ref_targets.shape[1] == 6


def test_ray_data_batches_equal_data_parallels(ray_local, tmp_path):
    """A training worker's batches through Ray Data are, tensor for tensor, the ones
    DataParallel augments in process: same rank share of the epoch's permutation, same
    order, same ceil(batch / world) cut, in a mosaic epoch and in a close_mosaic one."""
    from types import SimpleNamespace

    from trainer.pipeline.data_parallel import DataParallel, RayDataAugment

    synthesize(tmp_path / "data", images=40, size=64, seed=5, val_fraction=0.2)
    config = TrainConfig(
        data=str(tmp_path / "data" / "data.yaml"), imgsz=64, batch=10, epochs=3, close_mosaic=1
    )
    world = 2
    for rank in range(world):
        ctx = SimpleNamespace(
            config=config, model=SimpleNamespace(spec=SimpleNamespace(in_channels=1)), extra={}
        )
        local = DataParallel(rank, world)
        remote = DataParallel(rank, world, ray_data=RayDataAugment(workers=2, cpus=0.5))
        local.on_train_start(ctx)
        remote.on_train_start(ctx)
        for epoch in (0, 2):  # mosaic, then the close_mosaic epoch
            assert remote.shard(epoch) == local.shard(epoch)
            expected = list(local.batches(epoch))
            got = list(remote.batches(epoch))
            assert [len(b[0]) for b in got] == [len(b[0]) for b in expected], (rank, epoch)
            assert len(got) > 2 and all(len(b[0]) <= 5 for b in got)  # > 1 map task
            for (images, targets), (ref_images, ref_targets) in zip(got, expected, strict=True):
                assert torch.equal(images, ref_images), (rank, epoch)
                assert torch.equal(targets, ref_targets), (rank, epoch)
