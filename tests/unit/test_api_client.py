"""slimspect.api_client against a real HTTP server on loopback that echoes what it got."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from slimspect.api_client import Api, ApiRequestError


class _Echo(http.server.BaseHTTPRequestHandler):
    busy = 0  # /v1/busy answers 503 this many more times

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        if self.path.startswith("/v1/missing"):
            payload, status = {"detail": "rollout ro-1 not found"}, 404
        elif self.path.startswith("/v1/busy") and _Echo.busy > 0:
            _Echo.busy -= 1
            payload, status = {"detail": "event storage (Redis) is unavailable; retry later"}, 503
        else:
            payload, status = {"method": self.command, "path": self.path, "body": body,
                               "auth": self.headers.get("Authorization")}, 200  # fmt: skip
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def api():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Api(f"http://127.0.0.1:{server.server_address[1]}/", "ssk_secret")
    server.shutdown()
    server.server_close()


def test_get_sends_the_key_and_drops_unset_parameters(api):
    got = api.get("/v1/stats", group_by="class", station=None)
    assert got == {"method": "GET", "path": "/v1/stats?group_by=class", "body": None,
                   "auth": "Bearer ssk_secret"}  # fmt: skip


def test_post_sends_json_and_an_error_carries_the_apis_message(api):
    assert api.post("/v1/rollouts", {"version": "1.2"})["body"] == {"version": "1.2"}
    with pytest.raises(ApiRequestError, match="HTTP 404: rollout ro-1 not found") as info:
        api.post("/v1/missing", {})
    assert info.value.status == 404


def test_get_is_retried_while_the_api_answers_503_and_post_is_not(api):
    _Echo.busy = 2
    assert api.get("/v1/busy")["path"] == "/v1/busy"  # third time lucky, after 0.5 + 1 s
    assert _Echo.busy == 0
    _Echo.busy = 1
    with pytest.raises(ApiRequestError, match="HTTP 503: event storage") as info:
        api.post("/v1/busy", {})
    assert info.value.status == 503
    _Echo.busy = 10
    quick = Api(api.url, api.key, get_retries=1)
    with pytest.raises(ApiRequestError, match="HTTP 503"):
        quick.get("/v1/busy")
    assert _Echo.busy == 8  # tried twice, then gave up
    _Echo.busy = 0
