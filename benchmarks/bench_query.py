"""Defect-list query latency with a million stored events, and Redis memory per event.

Starts a private ``redis-server`` (free port, no persistence: the shared Redis on 6379 is
never touched) and loads ``--events`` synthetic events (``_services.EventMix``: 0..5
detections, crops on some) over ``--stations`` stations, three cameras each, captured
uniformly over the last ``--days`` days. They are written by the aggregator's own writer
(``services.aggregator.writer.IngestWriter``: the same Lua script and schema as a live
ingest, without gRPC), from ``--load-procs`` processes, in batches of ``--batch``.

The load stops at each of ``--sizes`` (the last is ``--events``); at each size:

* Redis memory: ``INFO memory`` used_memory minus its value before the load, per stored
  event, with and without the crop payload (the JPEG bytes themselves);
* query latency of one page of ``--limit`` (100) from ``GET /v1/defects`` through the real
  HTTP API (``slimspect api serve``, uvicorn in its own process; httpx client, one
  keep-alive connection, requests one after the other), for filter sets:
  ``none``; ``station``; ``class``; ``station+class+window`` (a 6-hour window at a random
  place); ``min_score`` (0.9: a post-filter, the API reads events until the page is full);
  station and class vary from request to request. ``--requests`` per set after
  ``--warmup``; p50/p90/p99/max. The same queries are also timed in process
  (``services.api.events.DefectIndex.page``, no HTTP) to split the API's own overhead.

    python benchmarks/bench_query.py [--events 1000000] [--sizes 10000,100000,1000000]
        [--stations 20] [--days 7] [--requests 200] [--load-procs 2]

A small check run: ``--events 20000 --sizes 5000,20000 --requests 30``.
Writes ``benchmarks/results/query.json`` (memory figures included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import platform
import random
import time
from pathlib import Path

import httpx
import redis
import redis.asyncio as aioredis
from _machine import describe, loadavg, run_facts
from _services import (
    CLASSES,
    EventMaker,
    EventMix,
    add_event_options,
    api_process,
    percentile,
    redis_server,
    workdir,
)

from services.aggregator import schema
from services.aggregator.writer import IngestWriter
from services.api.events import DefectIndex, DefectQuery
from services.api.keys import ApiKeyStore, Role

RESULTS = Path(__file__).resolve().parent / "results" / "query.json"
DAY_MS = 86_400_000
RETENTION_MS = 30 * DAY_MS  # the aggregator's default
DEFAULT_EVENTS = 1_000_000
TARGET_P99_MS = 20.0
WINDOW_MS = 6 * 3_600_000
MIN_SCORE = 0.9
CONCURRENT_WRITES = 4


def stations_of(n: int) -> list[str]:
    return [f"line{i // 4 + 1}-st{i % 4 + 1}" for i in range(n)]


# --- loading ------------------------------------------------------------------------------


def _load_part(job: tuple[str, int, int, int, dict]) -> tuple[int, int]:
    """Writes ``count`` events (worker ``seed``); returns (events, crop payload bytes)."""
    url, count, seed, batch, opts = job
    return asyncio.run(_load(url, count, seed, batch, opts))


async def _load(url: str, count: int, seed: int, batch: int, opts: dict) -> tuple[int, int]:
    client = aioredis.Redis.from_url(url)
    writer = IngestWriter(client, retention_ms=RETENTION_MS)
    maker = EventMaker(EventMix(crop_share=opts["crop_share"], crop_bytes=opts["crop_bytes"]), seed)
    rng = random.Random(seed + 1)
    stations = stations_of(opts["stations"])
    now = opts["now_ms"]
    span = int(opts["days"] * DAY_MS)
    crop_bytes = 0
    queue: asyncio.Queue[tuple[str, list] | None] = asyncio.Queue(maxsize=CONCURRENT_WRITES * 2)

    async def consume() -> None:
        while (item := await queue.get()) is not None:
            await writer.write(item[0], item[1], now_ms=now)

    workers = [asyncio.create_task(consume()) for _ in range(CONCURRENT_WRITES)]
    made = 0
    try:
        while made < count:
            station = rng.choice(stations)
            n = min(batch, count - made)
            events = [
                maker.event(station, now - rng.randrange(span), camera=f"cam{rng.randrange(3)}")
                for _ in range(n)
            ]
            crop_bytes += sum(len(d.crop_jpeg) for e in events for d in e.detections)
            await queue.put((station, events))
            made += n
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
    finally:
        await client.aclose()
    return made, crop_bytes


def load(
    url: str, count: int, stage: int, args: argparse.Namespace, now_ms: int
) -> tuple[int, int]:
    opts = {
        "crop_share": args.crop_share,
        "crop_bytes": args.crop_bytes,
        "stations": args.stations,
        "days": args.days,
        "now_ms": now_ms,
    }
    procs = max(1, min(args.load_procs, count // 1000 or 1))
    parts = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
    jobs = [
        (url, n, args.seed * 1_000_003 + stage * 101 + i, args.batch, opts)
        for i, n in enumerate(parts)
    ]
    if procs == 1:
        results = [_load_part(jobs[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(procs) as pool:
            results = pool.map(_load_part, jobs)
    return sum(r[0] for r in results), sum(r[1] for r in results)


def stored(client: redis.Redis, n_stations: int) -> int:
    """Events in Redis: every stored event is in its station's time index."""
    return sum(client.zcard(schema.index_key(s)) for s in stations_of(n_stations))


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def memory_parts(client: redis.Redis, n_stations: int, events: int, sample: int = 20) -> dict:
    """Where the bytes of an event go (``MEMORY USAGE``; key names and their entries
    included, the expiry table not): its value (mean of a sample, with the encoding Redis
    chose), its crop keys, and its share of the time indexes (all of them, exactly)."""
    ev_bytes, crop_bytes, encodings = [], [], set()
    index_total = 0
    crops_seen = 0
    for station in stations_of(n_stations):
        index = schema.index_key(station)
        for raw in client.zrandmember(index, sample) or []:
            event_id = raw.decode()
            key = schema.event_key(station, event_id)
            ev_bytes.append(client.memory_usage(key, samples=0) or 0)
            encodings.add(client.object("encoding", key).decode())
            raw = client.get(key)
            detections = schema.decode_event(raw)["detections"] if raw else []
            for i, d in enumerate(detections):
                if d["crop"]:
                    crops_seen += 1
                    crop_bytes.append(
                        client.memory_usage(schema.crop_key(station, event_id, i), samples=0) or 0
                    )
        indexes = [index] + [
            schema.class_index_key(station, c.decode())
            for c in client.smembers(schema.classes_key(station))
        ]
        index_total += sum(client.memory_usage(k, samples=0) or 0 for k in indexes)
    n = max(len(ev_bytes), 1)
    return {
        "event_value": round(sum(ev_bytes) / n),
        "event_value_encoding": sorted(encodings),
        "crop_keys": round(sum(crop_bytes) / n),
        "crop_key_each": round(sum(crop_bytes) / max(crops_seen, 1)),
        "indexes": round(index_total / events),
    }


# --- queries ------------------------------------------------------------------------------


def filter_sets(args: argparse.Namespace, now_ms: int, n: int) -> dict[str, list[dict]]:
    """``n`` parameter sets per filter set (station and class vary, windows move)."""
    rng = random.Random(args.seed + 7)
    stations = stations_of(args.stations)
    span = int(args.days * DAY_MS)
    out: dict[str, list[dict]] = {
        "none": [{} for _ in range(n)],
        "station": [{"station": rng.choice(stations)} for _ in range(n)],
        "class": [{"class": rng.choice(CLASSES)} for _ in range(n)],
        "station+class+window": [],
        "min_score": [{"min_score": MIN_SCORE} for _ in range(n)],
    }
    for _ in range(n):
        start = now_ms - span + rng.randrange(span - WINDOW_MS)
        out["station+class+window"].append(
            {
                "station": rng.choice(stations),
                "class": rng.choice(CLASSES),
                "from": str(start),
                "to": str(start + WINDOW_MS),
            }
        )
    return out


def to_query(params: dict) -> DefectQuery:
    return DefectQuery(
        station=params.get("station"),
        class_name=params.get("class"),
        from_ms=int(params["from"]) if "from" in params else None,
        to_ms=int(params["to"]) if "to" in params else None,
        min_score=params.get("min_score"),
    )


def stats(ms: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(ms, 50), 2),
        "p90": round(percentile(ms, 90), 2),
        "p99": round(percentile(ms, 99), 2),
        "max": round(max(ms), 2),
    }


def measure_http(base: str, key: str, sets: dict[str, list[dict]], args) -> dict[str, dict]:
    out = {}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as http:
        for name, params in sets.items():
            times, items, examined = [], [], []
            for i, p in enumerate(params[: args.warmup] + params):
                t0 = time.perf_counter()
                r = http.get("/v1/defects", params={**p, "limit": args.limit})
                dt = (time.perf_counter() - t0) * 1000
                if r.status_code != 200:
                    raise RuntimeError(f"{name} {p}: HTTP {r.status_code} {r.text[:300]}")
                if i >= args.warmup:
                    body = r.json()
                    times.append(dt)
                    items.append(len(body["items"]))
                    examined.append(body["examined"])
            out[name] = {
                **stats(times),
                "requests": len(times),
                "mean_items": round(sum(items) / len(items), 1),
                "mean_examined": round(sum(examined) / len(examined), 1),
            }
    return out


async def measure_in_process(url: str, sets: dict[str, list[dict]], args) -> dict[str, dict]:
    client = aioredis.Redis.from_url(url)
    index = DefectIndex(client)
    out = {}
    try:
        for name, params in sets.items():
            times = []
            for i, p in enumerate(params[: args.warmup] + params):
                query = to_query(p)
                t0 = time.perf_counter()
                await index.page(query, limit=args.limit)
                if i >= args.warmup:
                    times.append((time.perf_counter() - t0) * 1000)
            out[name] = stats(times)
    finally:
        await client.aclose()
    return out


# --- main ---------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    p.add_argument("--sizes", default="10000,100000", help="earlier stops (plus --events)")
    p.add_argument("--stations", type=int, default=20)
    p.add_argument("--days", type=float, default=7.0)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--requests", type=int, default=200, help="per filter set and size")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batch", type=int, default=500, help="events per writer call (load)")
    p.add_argument("--load-procs", type=int, default=2)
    add_event_options(p)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    sizes = sorted({int(x) for x in args.sizes.split(",") if x and int(x) < args.events})
    sizes.append(args.events)

    before = loadavg()
    t_all = time.perf_counter()
    now_ms = int(time.time() * 1000)
    mix = EventMix(crop_share=args.crop_share, crop_bytes=args.crop_bytes)
    steps = []
    with workdir("bench-query-") as tmp, redis_server(tmp, config=args.redis_config) as (_, url):
        client = redis.Redis.from_url(url)
        version = client.info("server")["redis_version"]
        key = asyncio.run(_viewer_key(url))
        with api_process(tmp, url) as (api, port):
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base) as h:  # the API's own Redis client connects now
                h.get("/healthz")
            baseline = used_memory(client)
            loaded = crop_total = 0
            load_s = 0.0
            for stage, size in enumerate(sizes):
                t0 = time.perf_counter()
                n, crops = load(url, size - loaded, stage, args, now_ms)
                load_s += time.perf_counter() - t0
                loaded += n
                crop_total += crops
                in_redis = stored(client, args.stations)
                if in_redis != loaded:
                    raise RuntimeError(f"loaded {loaded} events but {in_redis} are indexed")
                mem = used_memory(client) - baseline
                step = {
                    "events": loaded,
                    "load_events_per_s": round(loaded / load_s),
                    "memory": {
                        "used_memory_delta_bytes": mem,
                        "bytes_per_event": round(mem / loaded),
                        "crop_payload_bytes_per_event": round(crop_total / loaded),
                        "bytes_per_event_without_crop_payload": round((mem - crop_total) / loaded),
                        "parts": memory_parts(client, args.stations, loaded),
                    },
                }
                steps.append(step)
                print(
                    f"{loaded:>9,} events (load {step['load_events_per_s']:,}/s): "
                    f"{step['memory']['bytes_per_event']:,} B/event "
                    f"({step['memory']['bytes_per_event_without_crop_payload']:,} without the "
                    f"crop payload); parts {step['memory']['parts']}",
                    flush=True,
                )
                if args.requests <= 0:
                    continue
                sets = filter_sets(args, now_ms, args.requests)
                http = measure_http(base, key, sets, args)
                api.check()
                inproc = asyncio.run(measure_in_process(url, sets, args))
                step["http_ms"] = http
                step["in_process_ms"] = inproc
                step["http_p99_max_ms"] = max(v["p99"] for v in http.values())
                for name in sets:
                    h, i = http[name], inproc[name]
                    print(
                        f"    {name:<22} HTTP p50 {h['p50']:6.2f} p99 {h['p99']:6.2f} ms "
                        f"(in process p50 {i['p50']:6.2f} p99 {i['p99']:6.2f}), "
                        f"{h['mean_items']:.0f} items, {h['mean_examined']:.0f} examined",
                        flush=True,
                    )
        client.close()
    last = steps[-1]
    full = args.events >= DEFAULT_EVENTS and args.requests >= 200
    result = {
        "machine": describe(
            f"{platform.system()} {platform.release()}",
            f"redis-py {redis.__version__}",
            f"httpx {httpx.__version__}",
            f"redis-server {version}",
        ),
        "events": last["events"],
        "p99_ms": last.get("http_p99_max_ms"),
        "target_p99_ms": TARGET_P99_MS,
        "limit": args.limit,
        "http_ms": last.get("http_ms"),
        "in_process_ms": last.get("in_process_ms"),
        "memory": [{"events": s["events"], **s["memory"]} for s in steps],
        "by_size": steps,
        "data": {
            **mix.describe(),
            "stations": args.stations,
            "cameras_per_station": 3,
            "captured_over_days": args.days,
            "loaded_by": "services.aggregator.writer.IngestWriter (ingest.lua), "
            f"{args.load_procs} processes, batches of {args.batch}",
        },
        "filters": {
            "station+class+window": f"{WINDOW_MS // 3_600_000} h window at a random place",
            "min_score": MIN_SCORE,
            "requests_per_set": args.requests,
            "warmup": args.warmup,
        },
        "setup": "`slimspect api serve --no-fleet` (uvicorn) in its own process, private "
        "redis-server (no persistence), httpx client in this process, one keep-alive "
        "connection, sequential requests; all on the same machine",
        "redis_config": args.redis_config,
        "full_size": full,
        **run_facts(before, t_all),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if result["p99_ms"] is not None:
        verdict = "meets" if result["p99_ms"] <= TARGET_P99_MS else "ABOVE"
        print(
            f"worst p99 {result['p99_ms']} ms at {result['events']:,} events ({verdict} the "
            f"{TARGET_P99_MS:g} ms target){'' if full else ' [small run]'}; "
            f"load {before} -> {result['loadavg_after']}"
        )
    print(f"wrote {args.out}")


async def _viewer_key(url: str) -> str:
    client = aioredis.Redis.from_url(url)
    try:
        return await ApiKeyStore(client).add("bench-viewer", Role.viewer)
    finally:
        await client.aclose()


if __name__ == "__main__":
    main()
