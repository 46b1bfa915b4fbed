"""Ingest throughput and ack latency of the aggregator, end to end over loopback gRPC.

Starts a private ``redis-server`` (free port, no persistence: the shared Redis on 6379 is
never touched) and the real aggregator as a separate process (``slimspect aggregator
serve``: client and server do not share a GIL), makes a token per station, then:

1. throughput: ``--streams`` concurrent ``Ingest.Report`` streams (one station each) send
   ``--events`` events in batches of ``--batch``, each stream keeping at most
   ``--inflight`` batches unacknowledged (the agent's defaults: 64 events, 4 in flight).
   events/s = events acked as accepted / (first write .. last ack); afterwards every
   event is verified to be in Redis (sum of the stations' time indexes). Several batch
   sizes may be given (``--batch 64,256``): Redis is flushed between them; the headline
   ``events_per_s`` is the first.
2. latency: the same streams paced to ``--rate`` events/s in total for ``--latency-seconds``
   (open loop: batch k of a stream is due at a fixed time, the streams staggered), ack
   latency = ack received - batch due (so a client that falls behind shows up as latency,
   not as a lower rate); p50/p90/p99/max.

Events: uniform 0..5 detections, a ``--crop-bytes`` JPEG-like crop on ``--crop-share`` of
the detections, UUIDv7 ids, captured in the last minute (see ``_services.EventMix``). They
are built and serialized before the clock starts; the client writes the bytes as they are.
CPU seconds of the aggregator, Redis and the client over each phase are recorded (2 cores:
200 % is the whole machine).

    python benchmarks/bench_ingest.py [--events 200000] [--streams 10] [--batch 64]
        [--inflight 4] [--rate 5000] [--latency-seconds 20] [--crop-share 0.3]
        [--crop-bytes 4096] [--out benchmarks/results/ingest.json]

A small check run: ``--events 5000 --latency-seconds 2``. Writes ``benchmarks/results/ingest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import resource
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import redis
import redis.asyncio as aioredis
from _machine import describe, loadavg, run_facts
from _services import (
    EventMaker,
    EventMix,
    add_event_options,
    aggregator_processes,
    cpu_seconds,
    percentile,
    redis_server,
    workdir,
)

from services.aggregator import schema
from services.aggregator.auth import RedisTokenStore
from slimspect.v1 import inspection_pb2 as pb

RESULTS = Path(__file__).resolve().parent / "results" / "ingest.json"
METHOD = "/slimspect.v1.Ingest/Report"
DEFAULT_EVENTS = 200_000
DEFAULT_LATENCY_S = 20.0
TARGET_EVENTS_PER_S = 20_000


@dataclass
class StreamResult:
    acks: int = 0
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    late_ms: list[float] = field(default_factory=list)
    first_write: float = 0.0
    last_ack: float = 0.0


def make_batches(
    maker: EventMaker, station: str, n_events: int, batch: int, first_sequence: int = 0
) -> list[bytes]:
    """``n_events`` events of ``station`` in serialized ReportBatches of ``batch``."""
    now = int(time.time() * 1000)
    out = []
    for start in range(0, n_events, batch):
        events = [
            maker.event(station, now - maker.rng.randrange(60_000), camera=f"cam{j % 3}")
            for j in range(start, min(start + batch, n_events))
        ]
        seq = first_sequence + len(out)
        out.append(pb.ReportBatch(sequence=seq, events=events).SerializeToString())
    return out


async def run_stream(
    channel: grpc.aio.Channel,
    token: str,
    batches: list[bytes],
    *,
    inflight: int,
    due: list[float] | None = None,
) -> StreamResult:
    """One Report stream: writes ``batches`` (each when ``due``, if given), with at most
    ``inflight`` unacked, and collects the acks."""
    call = channel.stream_stream(
        METHOD, request_serializer=None, response_deserializer=pb.Ack.FromString
    )(metadata=[("authorization", f"Bearer {token}")])
    result = StreamResult()
    window = asyncio.Semaphore(inflight)
    started: dict[int, float] = {}
    first_seq = pb.ReportBatch.FromString(batches[0]).sequence if batches else 0

    async def write() -> None:
        for i, data in enumerate(batches):
            await window.acquire()
            if due is not None:
                delay = due[i] - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            now = time.perf_counter()
            if due is not None:
                result.late_ms.append(max(0.0, (now - due[i]) * 1000))
            started[first_seq + i] = due[i] if due is not None else now
            if i == 0:
                result.first_write = now
            await call.write(data)
        await call.done_writing()

    writer = asyncio.create_task(write())
    async for ack in call:
        t = time.perf_counter()
        result.acks += 1
        result.accepted += ack.accepted
        result.duplicate += ack.duplicate
        result.rejected += ack.rejected
        result.latencies_ms.append((t - started.pop(ack.sequence)) * 1000)
        result.last_ack = t
        window.release()
    await writer
    code = await call.code()
    if code != grpc.StatusCode.OK:
        raise RuntimeError(f"stream ended with {code}: {await call.details()}")
    return result


@contextlib.asynccontextmanager
async def connections(port: int, n: int) -> AsyncIterator[list[grpc.aio.Channel]]:
    """``n`` channels, each its own TCP connection (as ``n`` agents would have; grpc
    otherwise shares one connection between channels with the same target and options)."""
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", 64 << 20)]
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
            )
            for _ in range(n)
        ]


class Cpu:
    """CPU seconds of the aggregator, Redis and this client over a phase."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def sample(self) -> dict[str, float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        out = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        out["client"] = own.ru_utime + own.ru_stime
        return out

    @staticmethod
    def percent(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
        return {k: round(100 * (after[k] - before[k]) / wall, 1) for k in before}


async def stored_events(url: str, stations: list[str]) -> int:
    """Events in Redis: every stored event is in its station's time index."""
    client = aioredis.Redis.from_url(url)
    try:
        pipe = client.pipeline(transaction=False)
        for s in stations:
            pipe.zcard(schema.index_key(s))
        return sum(await pipe.execute())
    finally:
        await client.aclose()


async def fresh_tokens(url: str, stations: list[str]) -> list[str]:
    """Flushes the PRIVATE benchmark Redis and makes one token per station."""
    client = aioredis.Redis.from_url(url)
    try:
        await client.flushdb()
        store = RedisTokenStore(client)
        return [await store.add(s) for s in stations]
    finally:
        await client.aclose()


async def throughput(
    url: str, port: int, cpu: Cpu, args: argparse.Namespace, batch: int, maker: EventMaker
) -> dict:
    stations = [f"bench-s{i}" for i in range(args.streams)]
    tokens = await fresh_tokens(url, stations)
    per_stream = -(-args.events // args.streams)
    warm = [make_batches(maker, s, batch, batch) for s in stations]
    t0 = time.perf_counter()
    work = [make_batches(maker, s, per_stream, batch, first_sequence=1) for s in stations]
    built_s = time.perf_counter() - t0
    wire_bytes = sum(len(b) for w in work for b in w)
    async with connections(port, args.streams) as chans:
        await asyncio.gather(
            *(run_stream(c, t, w, inflight=1) for c, t, w in zip(chans, tokens, warm, strict=True))
        )
        before = cpu.sample()
        t_start = time.perf_counter()
        results = await asyncio.gather(
            *(
                run_stream(c, t, w, inflight=args.inflight)
                for c, t, w in zip(chans, tokens, work, strict=True)
            )
        )
        t_end = time.perf_counter()
        after = cpu.sample()
    wall = max(r.last_ack for r in results) - min(r.first_write for r in results)
    accepted = sum(r.accepted for r in results)
    sent = per_stream * args.streams
    stored = await stored_events(url, stations) - batch * args.streams
    lat = [x for r in results for x in r.latencies_ms]
    out = {
        "batch": batch,
        "streams": args.streams,
        "inflight_per_stream": args.inflight,
        "events": sent,
        "seconds": round(wall, 3),
        "events_per_s": round(accepted / wall),
        "batches_per_s": round(sum(r.acks for r in results) / wall, 1),
        "wire_mib_per_s": round(wire_bytes / wall / 2**20, 2),
        "accepted": accepted,
        "duplicate": sum(r.duplicate for r in results),
        "rejected": sum(r.rejected for r in results),
        "stored_verified": stored,
        "ack_latency_under_full_load_ms": {
            "p50": round(percentile(lat, 50), 2),
            "p99": round(percentile(lat, 99), 2),
        },
        "cpu_percent": Cpu.percent(before, after, t_end - t_start),
        "cpu_us_per_event": {k: round((after[k] - before[k]) / sent * 1e6, 1) for k in before},
        "client_build_s": round(built_s, 2),
    }
    if accepted != sent or stored != sent:
        raise RuntimeError(f"sent {sent}, acked accepted {accepted}, stored {stored}: {out}")
    return out


async def latency(
    url: str, port: int, cpu: Cpu, args: argparse.Namespace, maker: EventMaker
) -> dict:
    stations = [f"bench-s{i}" for i in range(args.streams)]
    tokens = await fresh_tokens(url, stations)
    batch = args.latency_batch or int(args.batch.split(",")[0])
    per_stream_rate = args.rate / args.streams
    interval = batch / per_stream_rate
    n_batches = max(1, round(args.latency_seconds / interval))
    work = [make_batches(maker, s, n_batches * batch, batch, first_sequence=1) for s in stations]
    warm = [make_batches(maker, s, batch, batch) for s in stations]
    async with connections(port, args.streams) as chans:
        await asyncio.gather(
            *(run_stream(c, t, w, inflight=1) for c, t, w in zip(chans, tokens, warm, strict=True))
        )
        before = cpu.sample()
        t0 = time.perf_counter() + 0.2
        dues = [
            [t0 + (i / args.streams + k) * interval for k in range(n_batches)]
            for i in range(args.streams)
        ]
        results = await asyncio.gather(
            *(
                run_stream(c, t, w, inflight=args.inflight, due=d)
                for c, t, w, d in zip(chans, tokens, work, dues, strict=True)
            )
        )
        wall = time.perf_counter() - t0
        after = cpu.sample()
    lat = [x for r in results for x in r.latencies_ms]
    late = [x for r in results for x in r.late_ms]
    sent = n_batches * batch * args.streams
    accepted = sum(r.accepted for r in results)
    if accepted != sent:
        raise RuntimeError(f"latency phase: sent {sent}, accepted {accepted}")
    return {
        "offered_events_per_s": args.rate,
        "achieved_events_per_s": round(accepted / wall),
        "batch": batch,
        "streams": args.streams,
        "batch_interval_per_stream_ms": round(interval * 1000, 2),
        "seconds": round(wall, 2),
        "batches": len(lat),
        "ack_latency_ms": {
            "p50": round(percentile(lat, 50), 2),
            "p90": round(percentile(lat, 90), 2),
            "p99": round(percentile(lat, 99), 2),
            "max": round(max(lat), 2),
        },
        "client_late_ms": {"p99": round(percentile(late, 99), 2), "max": round(max(late), 2)},
        "cpu_percent": Cpu.percent(before, after, wall),
    }


async def run(args: argparse.Namespace, url: str, port: int, pids: dict[str, int]) -> dict:
    mix = EventMix(crop_share=args.crop_share, crop_bytes=args.crop_bytes)
    maker = EventMaker(mix, seed=args.seed)
    cpu = Cpu(pids)
    runs = []
    for b in (int(x) for x in args.batch.split(",")):
        r = await throughput(url, port, cpu, args, b, maker)
        runs.append(r)
        print(
            f"throughput: batch {b:>4}, {args.streams} streams x {args.inflight} in flight: "
            f"{r['events_per_s']:,} events/s ({r['events']:,} events in {r['seconds']} s, "
            f"{r['wire_mib_per_s']} MiB/s on the wire), stored {r['stored_verified']:,}; "
            f"CPU % {r['cpu_percent']}, CPU us/event {r['cpu_us_per_event']}",
            flush=True,
        )
    lat = None
    if args.latency_seconds > 0:
        lat = await latency(url, port, cpu, args, maker)
        a = lat["ack_latency_ms"]
        print(
            f"latency at {lat['offered_events_per_s']:,} events/s offered "
            f"({lat['achieved_events_per_s']:,} achieved, batch {lat['batch']}, "
            f"{lat['batches']} batches): p50 {a['p50']} ms, p90 {a['p90']} ms, p99 {a['p99']} ms, "
            f"max {a['max']} ms; CPU % {lat['cpu_percent']}",
            flush=True,
        )
    head = runs[0]
    return {
        "events_per_s": head["events_per_s"],
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "batch": head["batch"],
        "streams": args.streams,
        "inflight_per_stream": args.inflight,
        "aggregator_processes": args.aggregators,
        "ack_latency_ms_at_rate": lat["ack_latency_ms"] if lat else None,
        "throughput": runs,
        "latency": lat,
        "events": mix.describe(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="throughput run, total")
    p.add_argument("--streams", type=int, default=10)
    p.add_argument("--batch", default="64", help="events per batch; a comma list runs each")
    p.add_argument("--inflight", type=int, default=4, help="unacked batches per stream")
    p.add_argument("--rate", type=float, default=5000, help="offered events/s, latency run")
    p.add_argument("--latency-seconds", type=float, default=DEFAULT_LATENCY_S, help="0: skip")
    p.add_argument("--latency-batch", type=int, default=0, help="default: the first --batch")
    p.add_argument(
        "--aggregators",
        type=int,
        default=1,
        help="aggregator processes sharing the port (SO_REUSEPORT); the streams' connections "
        "are spread between them by the kernel",
    )
    add_event_options(p)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    before = loadavg()
    t0 = time.perf_counter()
    with (
        workdir("bench-ingest-") as tmp,
        redis_server(tmp, config=args.redis_config) as (rproc, url),
    ):
        version = redis.Redis.from_url(url).info("server")["redis_version"]
        with aggregator_processes(tmp, url, args.aggregators) as (aggs, port):
            pids = {f"aggregator{'' if i == 0 else i}": a.pid for i, a in enumerate(aggs)}
            data = asyncio.run(run(args, url, port, {**pids, "redis": rproc.pid}))
            for agg in aggs:
                agg.check()
    full = args.events >= DEFAULT_EVENTS and args.latency_seconds >= DEFAULT_LATENCY_S
    result = {
        "machine": describe(
            f"{platform.system()} {platform.release()}",
            f"grpcio {grpc.__version__}",
            f"redis-py {redis.__version__}",
            f"redis-server {version}",
        ),
        **data,
        "setup": "aggregator = `slimspect aggregator serve` in its own process (log level "
        "WARNING), private redis-server (no persistence) on loopback, client = this process "
        "(grpc.aio, pre-serialized batches, one TCP connection per stream as separate agents "
        "would have); all three on the same machine",
        "redis_config": args.redis_config,
        "full_size": full,
        **run_facts(before, t0),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    verdict = "meets" if result["events_per_s"] >= TARGET_EVENTS_PER_S else "BELOW"
    print(
        f"events_per_s {result['events_per_s']:,} ({verdict} the {TARGET_EVENTS_PER_S:,} target)"
        f"{'' if full else ' [small run]'}; load {before} -> {result['loadavg_after']}"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
