"""The publish stage: the chosen model, its signed manifest and its golden image.

The manifest (:class:`slimspect.manifest.ModelManifest`) carries the bench row of the
chosen format (mAP50, mAP50-95, params, GFLOPs, CPU FPS at the most threads timed), the
lineage (parent version, the stages that made the model, the run id, the data set
hash) and a golden image: the first image of the evaluation split as PNG, with the
detections the exported model gives on it through ONNX Runtime with the station's pre-
and post-processing (:class:`trainer.predict.Predictor`, the functions of
:mod:`slimspect.detection`) at the manifest's thresholds. A station's smoke test
(``edge_agent.smoke``) must find them again before it runs the model.

With ``publish.canary`` set, a canary rollout of the version is started through the API
once it is published (canary.py).

A version is immutable: if the version already exists and is this run's model (same run
id, same sha256), a rerun adopts it; otherwise publishing is an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2

from trainer.pipeline.records import PipelineError

__all__ = ["golden_detections", "publish_model"]


def golden_detections(onnx: Path, image_png: Path, score: float, iou: float) -> list:
    """The detections (:class:`slimspect.detection.Detection`) of ``onnx`` on the PNG, read
    as a station reads it (``IMREAD_UNCHANGED``)."""
    from slimspect.detection import to_records
    from trainer.predict import Predictor

    predictor = Predictor(onnx)
    image = cv2.imread(str(image_png), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise PipelineError(f"cannot read the golden image {image_png}")
    return to_records(predictor(image, conf=score, iou=iou), predictor.class_names)


def _golden_png(data: str, split: str, channels: int, out: Path) -> Path:
    from trainer.data.dataset import load_image
    from trainer.data.formats import read_dataset

    ds = read_dataset(Path(data))
    samples = ds.splits.get(split) or [s for _, s in ds.samples()]
    source = Path(ds.root) / samples[0].image
    image = load_image(source, gray=channels == 1)
    if image is None or not cv2.imwrite(str(out), image):
        raise PipelineError(f"cannot make the golden image from {source}")
    return out


def publish_model(run, stage_dir: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Publish the export stage's default model; see the module docstring."""
    from slimspect.errors import VersionExistsError
    from slimspect.manifest import manifest_for_file, sha256_file
    from slimspect.onnx_meta import DetectorMetadata
    from slimspect.store import ModelStore
    from trainer.compress.quantize import FORMAT_INT8
    from trainer.export import ort_session

    p = run.config.publish
    if not p.enabled:
        run.console.print("  publishing is off (publish.enabled: false)")
        return {}, {"published": False}
    export = run.records["export"]
    onnx = run.workdir / export["default_model"]
    fmt = export["default_format"]
    session = ort_session(onnx, threads=1)
    meta = DetectorMetadata.from_props(
        session.get_modelmeta().custom_metadata_map, source=str(onnx)
    )
    score = p.score or float(meta.thresholds.get("score", 0.25))
    iou = float(meta.thresholds.get("iou", 0.45))

    rows = json.loads(run.path("bench", "json").read_text())["rows"]
    row_name = "distilled-int8" if fmt == FORMAT_INT8 else "distilled"
    row = next((r for r in rows if r["stage"] == row_name), {})
    fps = [v for k, v in sorted(row.items()) if k.startswith("fps_")]
    metrics = {
        "map50": row.get("map50"),
        "map50_95": row.get("map50_95"),
        "params": row.get("params"),
        "gflops": row.get("gflops"),
        "cpu_fps": fps[-1] if fps else None,
    }
    stages = ["baseline", "sparse", "prune", "distill"] + (["int8"] if fmt == FORMAT_INT8 else [])

    golden = _golden_png(run.data, run.eval_split, meta.channels, stage_dir / "golden.png")
    expected = golden_detections(onnx, golden, score, iou)
    manifest = manifest_for_file(
        onnx,
        name=p.name,
        version=p.version or run.run_id,
        format=fmt,
        input={
            "width": meta.input_width,
            "height": meta.input_height,
            "channels": meta.channels,
            "letterbox": True,
        },
        class_names=list(meta.class_names),
        thresholds={"score": score, "iou": iou},
        metrics=metrics,
        lineage={
            "parent_version": p.parent_version,
            "stage": "+".join(stages),
            "run_id": run.run_id,
            "dataset_hash": run.records["data"]["dataset_hash"],
        },
        golden={"sha256": sha256_file(golden)[0], "expected": [d.model_dump() for d in expected]},
    )
    store = ModelStore.from_settings(run.store_settings)
    adopted = False
    try:
        store.publish(onnx, manifest, golden_png=golden)
    except VersionExistsError:
        existing = store.manifest(manifest.name, manifest.version)
        if existing.lineage.run_id != run.run_id or existing.model != manifest.model:
            raise PipelineError(
                f"{manifest.key} already exists in the registry and is not this run's model: "
                "set publish.version to a new version"
            ) from None
        manifest, adopted = existing, True  # published by an interrupted earlier attempt
    manifest_path = stage_dir / "manifest.json"
    manifest_path.write_bytes(manifest.canonical_json())
    run.console.print(
        f"  {'already published' if adopted else 'published'} {manifest.key} ({fmt}, "
        f"{manifest.model.size_bytes / 2**20:.2f} MiB, {len(expected)} golden detection(s)) "
        f"to {store.url}/{store.bucket}"
    )
    canary = None
    if p.canary is not None:
        from trainer.pipeline.canary import start_canary

        rollout = start_canary(p.canary, manifest.name, manifest.version, run.run_id)
        canary = {"rollout_id": rollout["id"], "state": rollout["state"],
                  "stations": rollout.get("stations"), "share": rollout.get("share")}  # fmt: skip
        target = rollout.get("stations") or f"{rollout.get('share')} of the fleet"
        run.console.print(f"  canary rollout {rollout['id']} of {manifest.key}: {target}")
    return (
        {"manifest": run.rel(manifest_path), "golden": run.rel(golden)},
        {
            "published": True,
            "name": manifest.name,
            "version": manifest.version,
            "format": fmt,
            "sha256": manifest.model.sha256,
            "golden_detections": len(expected),
            "canary": canary,
        },
    )
