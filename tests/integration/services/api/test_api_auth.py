"""API keys: 401 without a valid key, 403 for a role too low, open routes stay open, and the
key commands (``slimspect api key``) store only hashes."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import redis
from aggregator_harness import run_async
from api_harness import Api
from click.testing import CliRunner

from services.api.keys import API_KEYS_KEY, Role
from slimspect.cli import cli

pytestmark = pytest.mark.timeout(60)


def _request(api: Api, method: str, path: str, headers: dict[str, str] | None = None) -> Any:
    async def main() -> Any:
        async with api.client() as http:
            return await http.request(method, path, headers=headers or {})

    return run_async(main())


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer ssk_wrong"},
        {"X-API-Key": "nope"},
        {"Authorization": "Basic x"},
    ],
    ids=["none", "unknown bearer", "unknown x-api-key", "not bearer"],
)
@pytest.mark.parametrize("path", ["/v1/defects", "/v1/stats", "/v1/stations", "/v1/models"])
def test_no_valid_key_is_401(api: Api, path: str, headers: dict[str, str]) -> None:
    r = _request(api, "GET", path, headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert "API key" in r.json()["detail"]


def test_both_headers_work_and_viewer_cannot_post(api: Api) -> None:
    bearer = _request(api, "GET", "/v1/stations", {"Authorization": f"Bearer {api.viewer}"})
    header = _request(api, "GET", "/v1/stations", {"X-API-Key": api.viewer})
    assert bearer.status_code == header.status_code == 200
    post = _request(api, "POST", "/v1/rollouts", {"X-API-Key": api.viewer})
    assert post.status_code == 403
    assert "role viewer" in post.json()["detail"]
    # The role is checked before the body: an operator gets on to validation.
    op = _request(api, "POST", "/v1/rollouts", {"X-API-Key": api.operator})
    assert op.status_code in (422, 503)


@pytest.mark.parametrize(
    "path", ["/healthz", "/metrics", "/", "/static/app.js", "/openapi.json", "/docs"]
)
def test_open_routes_need_no_key(api: Api, path: str) -> None:
    r = _request(api, "GET", path)
    assert r.status_code == 200, r.text


def test_docs_load_nothing_from_the_internet(api: Api) -> None:
    html = _request(api, "GET", "/docs").text
    assert "http://" not in html and "https://" not in html
    for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
        assert asset in html
        assert _request(api, "GET", asset).status_code == 200
    assert _request(api, "GET", "/redoc").status_code == 404
    page = _request(api, "GET", "/")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace("http-equiv", "")


def test_key_commands_store_hashes_and_revoke(redis_server: Any) -> None:
    url = redis_server.url(0)
    runner = CliRunner()
    added = runner.invoke(
        cli, ["api", "key", "add", "--role", "operator", "ci-bot", "--redis-url", url]
    )
    assert added.exit_code == 0, added.output
    key = added.stdout.strip().splitlines()[-1]
    assert key.startswith("ssk_")
    client = redis.Redis.from_url(url)
    stored = client.hgetall(API_KEYS_KEY)
    assert hashlib.sha256(key.encode()).hexdigest().encode() in stored
    assert not any(key.encode() in k or key.encode() in v for k, v in stored.items())

    listed = runner.invoke(cli, ["api", "key", "list", "--redis-url", url])
    assert "ci-bot\toperator" in listed.output
    bad = runner.invoke(cli, ["api", "key", "add", "--role", "admin", "x", "--redis-url", url])
    assert bad.exit_code == 2 and "admin" in bad.output
    bad_name = runner.invoke(
        cli, ["api", "key", "add", "--role", "viewer", "a b", "--redis-url", url]
    )
    assert bad_name.exit_code == 1 and "key name" in bad_name.output

    revoked = runner.invoke(cli, ["api", "key", "revoke", "ci-bot", "--redis-url", url])
    assert revoked.exit_code == 0 and "revoked 1 key" in revoked.output
    assert hashlib.sha256(key.encode()).hexdigest().encode() not in client.hgetall(API_KEYS_KEY)
    client.close()


def test_a_revoked_key_is_refused_at_once(api: Api) -> None:
    async def main() -> tuple[int, int]:
        key = await api.ctx.keys.add("short-lived", Role.viewer)
        async with api.client(key) as http:
            before = (await http.get("/v1/stations")).status_code
            await api.ctx.keys.revoke("short-lived")
            after = (await http.get("/v1/stations")).status_code
        return before, after

    assert run_async(main()) == (200, 401)
