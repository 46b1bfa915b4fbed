"""The cloud pipeline on Ray: data -> baseline -> [sweep] -> sparse -> prune -> distill ->
export -> bench -> publish, resumable through the S3 store (``slimspect pipeline run``).

* :mod:`~trainer.pipeline.config` - the YAML settings (:class:`PipelineConfig`).
* :mod:`~trainer.pipeline.records` - completion records and the skip / redo rule.
* :mod:`~trainer.pipeline.run_store` - a run's folder in the store (``runs/<run_id>/``).
* :mod:`~trainer.pipeline.data_parallel` - the training loop as one data-parallel replica.
* :mod:`~trainer.pipeline.ray_train` - the training stages as Ray Train ``TorchTrainer`` runs.
* :mod:`~trainer.pipeline.stages` - what each stage runs.
* :mod:`~trainer.pipeline.sweep` - the optional Ray Tune sweep (ASHA) over the sparsity
  factor and the prune ratio, choosing on the size / mAP50 Pareto front.
* :mod:`~trainer.pipeline.publish` - manifest, golden image, ``ModelStore.publish``.
* :mod:`~trainer.pipeline.runner` - :func:`run_pipeline`, the stage loop and its summary.
* :mod:`~trainer.pipeline.cli` - ``slimspect pipeline run``.
"""
