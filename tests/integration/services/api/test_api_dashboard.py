"""The dashboard in a real browser (Debian's chromium through Playwright) on a real uvicorn,
with events written through the aggregator, heartbeats through the Fleet server and
rollouts through the API. Leaves a screenshot in test-artifacts/ (printed)."""

from __future__ import annotations

import dataclasses
import io
import random
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from aggregator_harness import CLASSES, new_namespace, run_async
from api_harness import (
    HOUR_MS,
    Sent,
    fleet_api,
    heartbeat,
    make_dataset,
    send_through_aggregator,
)
from PIL import Image, ImageDraw

from services.api.app import create_app
from services.api.server import start_http

pytestmark = pytest.mark.timeout(240)

CHROMIUM = "/usr/bin/chromium"


def _crop(rng: random.Random, kind: int) -> bytes:
    """A small steel-like JPEG with a defect drawn on it (the aggregator checks only the magic)."""
    noise = np.random.default_rng(kind).normal(150, 14, (72, 96)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(noise).convert("RGB")
    draw = ImageDraw.Draw(image)
    if kind == 0:
        draw.line([(8, 60), (88, 14)], fill=(60, 60, 66), width=3)
    elif kind == 1:
        for _ in range(7):
            x, y = rng.randrange(10, 86), rng.randrange(10, 62)
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(70, 64, 60))
    elif kind == 2:
        draw.rectangle([22, 18, 70, 52], fill=(110, 104, 98))
    else:
        for i in range(6):
            draw.line([(10 + 14 * i, 8), (4 + 14 * i, 64)], fill=(95, 95, 100), width=2)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=82)
    return out.getvalue()


STATIONS = ["line1-press", "line1-coil", "line2-press", "line2-slitter"]


async def _scene(url: str, ns: Any, http: httpx.AsyncClient, fleet: Any) -> str:
    """Events (defects, and the clean frames that make the rates), heartbeats and three
    rollouts; returns the active rollout's id."""
    rng = random.Random(3)
    crops = [_crop(rng, k) for k in range(4)]
    data = make_dataset(ns, n_events=900, seed=5, stations=STATIONS, class_weights=(6, 3, 2, 1))
    events = [
        dataclasses.replace(e, crop_data=crops[CLASSES.index(e.classes[0]) % 4]) if e.crops else e
        for e in data.events
    ]
    hours = range(data.start_ms // HOUR_MS, data.end_ms // HOUR_MS + 1)
    events += [  # one clean-frame summary per station and hour
        Sent(st, f"clean-{h}", "cam0", h * HOUR_MS + 1, (), (), False, rng.randint(900, 1400))
        for st in STATIONS
        for h in hours
        if data.start_ms <= h * HOUR_MS + 1 <= data.end_ms
    ]
    await send_through_aggregator(url, ns, events)
    s = STATIONS
    for i, station in enumerate(s[:3]):
        await fleet.beat(heartbeat(station, "1.0.0", fps=11.5 + i))
    body = {"model_name": "steel-yolo", "channel": "stable", "version": "1.0.0"}
    assert (await http.post("/v1/rollouts", json=body)).status_code == 201
    canary = {"model_name": "steel-yolo", "stations": s[:2], "soak_s": 600}
    old = (await http.post("/v1/rollouts", json={**canary, "version": "1.0.5"})).json()
    await http.post(f"/v1/rollouts/{old['id']}/rollback", json={"reason": "mAP regression"})
    new = (await http.post("/v1/rollouts", json={**canary, "version": "1.1.0"})).json()
    await fleet.beat(heartbeat(s[0], "1.0.0", fps=12))
    await fleet.beat(heartbeat(s[0], "1.1.0", fps=12.4))
    await fleet.beat(heartbeat(s[1], "1.0.0", fps=12.1))
    return new["id"]


def test_dashboard_shows_chart_stations_defects_and_rollouts(
    scratch_url: str, artifacts: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no {CHROMIUM}: `make test` installs it (scripts/ensure-services.sh)")
    from playwright.async_api import async_playwright

    shot = artifacts / "dashboard.png"
    ns = new_namespace()

    async def main() -> dict[str, Any]:
        async with fleet_api(scratch_url, heartbeat_interval_s=30) as (api, fleet):
            server = await start_http(create_app(api.ctx), "127.0.0.1", 0)
            base = f"http://127.0.0.1:{server.port}"
            headers = {"Authorization": f"Bearer {api.operator}"}
            try:
                async with httpx.AsyncClient(base_url=base, headers=headers) as http:
                    active = await _scene(scratch_url, ns, http, fleet)
                async with async_playwright() as pw:
                    browser = await pw.chromium.launch(executable_path=CHROMIUM)
                    try:
                        return await _browse(browser, base, api.viewer, active, shot)
                    finally:
                        await browser.close()
            finally:
                await server.stop()

    out = run_async(main())
    print(f"\ndashboard screenshot: {shot}")
    assert not out["outside"], out["outside"]
    assert not out["errors"], out["errors"]
    assert out["login_error"] == "Unknown or revoked key."
    assert out["series"] >= 5  # four classes and "all classes"
    assert out["points"] > 20
    assert out["legend"] >= 5
    assert out["stations"] == 4
    assert out["statuses"].count("online") == 3 and "no heartbeat" in out["statuses"]
    assert out["defect_rows"] == 12
    assert out["thumbs_loaded"] >= 1
    assert out["active_rollout"] == 1
    assert out["progress"][0] == "1 / 2"  # stations on the new version
    assert out["history"] == 2
    assert out["kpi_stations"] == "3 / 4"
    assert shot.stat().st_size > 20_000


async def _browse(browser: Any, base: str, viewer: str, active: str, shot: Path) -> dict[str, Any]:
    # bypass_csp: Playwright's polling predicates are evaluated as strings, which the page's
    # own CSP (script-src 'self', no eval) would block; the page's scripts are unaffected.
    context = await browser.new_context(viewport={"width": 1440, "height": 1000}, bypass_csp=True)
    page = await context.new_page()
    outside: list[str] = []
    errors: list[str] = []
    page.on(
        "request",
        lambda r: outside.append(r.url) if not r.url.startswith((base, "blob:", "data:")) else None,
    )
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    # First visit: no key stored, the page asks; a wrong key is refused.
    response = await page.goto(base + "/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    await page.wait_for_selector("#login[open]")
    await page.fill("#login-key", "ssk_wrong")
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("#login-error:not([hidden])")
    login_error = await page.text_content("#login-error")
    errors.clear()  # the refused key's 401 is logged by the browser as a failed load
    await page.fill("#login-key", viewer)
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("body[data-loaded=true]", timeout=60_000)
    await page.wait_for_function(
        "document.querySelectorAll('#defects img.thumb').length > 0 && "
        "[...document.querySelectorAll('#defects img.thumb')].every(i => i.complete && i.naturalWidth > 0)",
        timeout=60_000,
    )
    out = {
        "login_error": login_error,
        "series": await page.locator("#rate-chart path.series").count(),
        "points": await page.locator("#rate-chart circle.point").count(),
        "legend": await page.locator("#legend li").count(),
        "stations": await page.locator("#stations tbody tr").count(),
        "statuses": await page.locator("#stations tbody tr td:nth-child(2)").all_text_contents(),
        "defect_rows": await page.locator("#defects tbody tr").count(),
        "thumbs_loaded": await page.evaluate(
            "[...document.querySelectorAll('#defects img.thumb')].filter(i => i.naturalWidth > 0).length"
        ),
        "active_rollout": await page.locator(
            f"#rollouts .rollout[data-rollout='{active}']"
        ).count(),
        "progress": await page.locator(
            f"#rollouts .rollout[data-rollout='{active}'] .progress-label span:nth-child(2)"
        ).all_text_contents(),
        "history": await page.locator("#rollouts table.history tbody tr").count(),
        "kpi_stations": await page.text_content("#kpi-stations"),
    }
    await page.screenshot(path=str(shot), full_page=True)
    # A reload keeps the key (localStorage): no second prompt.
    await page.reload()
    await page.wait_for_selector("body[data-loaded=true]", timeout=60_000)
    assert not await page.locator("#login[open]").count()
    out["outside"], out["errors"] = outside, errors
    return out
