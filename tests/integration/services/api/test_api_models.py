"""``GET /v1/models`` over a real S3 store (the session's SeaweedFS), and the 503s that say
what is missing when there is no store or it does not answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aggregator_harness import run_async
from api_harness import free_port, make_api, published_store

from slimspect.settings import StoreSettings
from slimspect.store import ModelStore

pytestmark = pytest.mark.timeout(120)


def _get(url: str, store: ModelStore | None, params: dict[str, Any] | None = None) -> Any:
    async def main() -> Any:
        api = await make_api(url, store=store)
        async with api.client(api.viewer) as http:
            return await http.get("/v1/models", params=params or {})

    return run_async(main())


def test_lists_published_versions_and_marks_the_latest(
    scratch_url: str, s3_server: StoreSettings, tmp_path: Path
) -> None:
    store = published_store(s3_server, tmp_path)
    everything = _get(scratch_url, store).json()
    assert [(m["name"], m["version"], m["latest"]) for m in everything] == [
        ("steel-yolo", "1.0.0", False),
        ("steel-yolo", "1.1.0", True),
        ("tiny-yolo", "0.1.0", True),
    ]
    assert everything[0]["format"] == "onnx-fp32" and len(everything[0]["sha256"]) == 64
    latest = _get(scratch_url, store, {"latest": "true"}).json()
    assert [(m["name"], m["version"]) for m in latest] == [
        ("steel-yolo", "1.1.0"),
        ("tiny-yolo", "0.1.0"),
    ]
    one = _get(scratch_url, store, {"name": "tiny-yolo"}).json()
    assert [m["version"] for m in one] == ["0.1.0"]
    assert _get(scratch_url, store, {"name": "unknown"}).json() == []
    bad = _get(scratch_url, store, {"name": "Bad Name"})
    assert bad.status_code == 422 and "name" in bad.json()["detail"]


def test_without_a_store_503_says_how_to_configure_one(scratch_url: str) -> None:
    r = _get(scratch_url, None)
    assert r.status_code == 503
    assert "SLIMSPECT_API_MODEL_STORE" in r.json()["detail"]


def test_an_unreachable_store_is_503_naming_it(scratch_url: str) -> None:
    settings = StoreSettings(endpoint=f"127.0.0.1:{free_port()}", bucket="nowhere")
    r = _get(scratch_url, ModelStore.from_settings(settings))
    assert r.status_code == 503
    assert "cannot reach the S3 store" in r.json()["detail"]
