"""A run's folder in the S3 store: ``runs/<run_id>/`` mirrors the local run folder.

    runs = RunStore(settings, "20240501-a1b2")
    runs.upload_dir(local / "sparse", "sparse")     # runs/<id>/sparse/...
    runs.write_json("sparse/done.json", record)
    runs.download_prefix("sparse", local / "sparse")

Ray Train's checkpoints of a training stage live under ``runs/<id>/<stage>/ray/``
(:meth:`ray_storage`: a pyarrow S3 filesystem and a path in it), so the whole run, its
checkpoints included, is in one place and a worker on any node can reach it.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from minio.error import S3Error

from slimspect.settings import StoreSettings
from slimspect.store import make_client

__all__ = ["RAY_FOLDER", "RunStore"]

RUNS_PREFIX = "runs/"
RAY_FOLDER = "ray"
_NOT_FOUND = {"NoSuchKey", "NoSuchObject", "ResourceNotFound"}


class RunStore:
    """Objects of one run (keys relative to ``runs/<run_id>/``)."""

    def __init__(self, settings: StoreSettings, run_id: str) -> None:
        self.settings = settings
        self.run_id = run_id
        self.bucket = settings.bucket
        self.prefix = f"{RUNS_PREFIX}{run_id}/"
        self.client = make_client(settings)

    def key(self, rel: str) -> str:
        return self.prefix + rel.lstrip("/")

    def url(self, rel: str = "") -> str:
        return f"{self.settings.url}/{self.bucket}/{self.key(rel)}"

    def ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    # ---- small JSON records ---------------------------------------------------------------

    def read_json(self, rel: str) -> dict[str, Any] | None:
        """The object as a dict; None when it is missing or not a JSON object."""
        try:
            response = self.client.get_object(self.bucket, self.key(rel))
        except S3Error as exc:
            if exc.code in _NOT_FOUND:
                return None
            raise
        try:
            data = response.read()
        finally:
            response.close()
            response.release_conn()
        try:
            value = json.loads(data)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def write_json(self, rel: str, value: Any) -> None:
        data = (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode()
        self.client.put_object(
            self.bucket, self.key(rel), io.BytesIO(data), len(data), content_type="application/json"
        )

    def delete(self, rel: str) -> None:
        self.client.remove_object(self.bucket, self.key(rel))

    # ---- folders ---------------------------------------------------------------------------

    def list(self, rel_prefix: str) -> Iterator[tuple[str, int]]:
        """``(path relative to the run, size)`` of every object under ``rel_prefix``."""
        prefix = self.key(rel_prefix.rstrip("/") + "/")
        for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
            if obj.is_dir or obj.object_name.endswith("/"):
                continue  # a folder marker (pyarrow's S3 filesystem writes them)
            yield obj.object_name[len(self.prefix) :], int(obj.size or 0)

    def exists(self, rel: str) -> bool:
        try:
            self.client.stat_object(self.bucket, self.key(rel))
        except S3Error as exc:
            if exc.code in _NOT_FOUND:
                return False
            raise
        return True

    def upload_file(self, path: Path, rel: str) -> None:
        self.client.fput_object(self.bucket, self.key(rel), str(path))

    def upload_dir(self, local: Path, rel_prefix: str, *, skip: tuple[str, ...] = ()) -> int:
        """Every file under ``local`` to ``rel_prefix/...``; returns the count."""
        count = 0
        for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
            rel = path.relative_to(local).as_posix()
            if rel.split("/")[0] in skip:
                continue
            self.upload_file(path, f"{rel_prefix.rstrip('/')}/{rel}")
            count += 1
        return count

    def download_prefix(self, rel_prefix: str, local: Path, *, skip: tuple[str, ...] = ()) -> int:
        """Objects under ``rel_prefix`` into ``local`` (same relative paths); files already
        there with the same size are kept. Each file appears whole (written aside, renamed),
        so processes sharing ``local`` may download at once. Returns the files fetched."""
        count = 0
        base = rel_prefix.rstrip("/") + "/"
        for rel, size in self.list(rel_prefix):
            sub = rel[len(base) :]
            if sub.split("/")[0] in skip:
                continue
            target = Path(local) / sub
            if target.is_file() and target.stat().st_size == size:
                continue
            self.download_file(rel, target)
            count += 1
        return count

    def download_file(self, rel: str, target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        self.client.fget_object(self.bucket, self.key(rel), str(tmp))
        os.replace(tmp, target)
        return target

    def remove_prefix(self, rel_prefix: str) -> None:
        """Every object under ``rel_prefix`` (a stage that is redone from scratch)."""
        for rel, _ in list(self.list(rel_prefix)):
            self.client.remove_object(self.bucket, self.key(rel))

    # ---- Ray Train storage ----------------------------------------------------------------

    def ray_storage(self, stage: str) -> tuple[Any, str]:
        """``(pyarrow S3FileSystem, "<bucket>/runs/<id>/<stage>/ray")`` for a RunConfig."""
        from pyarrow import fs

        s = self.settings
        filesystem = fs.S3FileSystem(
            access_key=s.access_key,
            secret_key=s.secret_key.get_secret_value() if s.secret_key else None,
            anonymous=s.access_key is None,
            endpoint_override=s.endpoint,
            scheme="https" if s.secure else "http",
            region=s.region or "us-east-1",
        )
        return filesystem, f"{self.bucket}/{self.key(f'{stage}/{RAY_FOLDER}')}"
