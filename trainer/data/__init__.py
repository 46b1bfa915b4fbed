"""Defect data sets: the data model, readers and writers for YOLO, COCO, Pascal VOC and
NEU-DET, a synthetic steel-surface generator, a checker and statistics.

The package imports nothing heavy on import; use the sub-modules::

    from trainer.data.dataset import DetectionDataset, Sample
    from trainer.data.formats import read_dataset, write_dataset
    from trainer.data.synth import synthesize
"""
