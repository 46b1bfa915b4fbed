"""Convert a data set from any readable format to any writable one."""

from __future__ import annotations

from pathlib import Path

from trainer.data.dataset import DetectionDataset
from trainer.data.formats import read_dataset, write_dataset


def convert(src: Path, dst: Path, to: str, src_format: str | None = None) -> DetectionDataset:
    """Read ``src`` (format told from its layout unless given) and write it to ``dst`` as ``to``.

    Raises:
        DatasetError: ``src`` has a problem (the first one found), or ``dst`` is not empty.
    """
    return write_dataset(read_dataset(Path(src), src_format), Path(dst), to)
