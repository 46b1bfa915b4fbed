"""gRPC ingest into Redis; owns the Redis schema and its Lua scripts.

Modules, one job each::

    settings.py   AggregatorSettings (SLIMSPECT_AGGREGATOR_*), read once at the edge
    schema.py     THE Redis schema: every key, field and TTL rule (docstring), key builders
    ingest.lua    stores a batch of one station atomically (dedupe + events + indexes + counters)
    writer.py     runs ingest.lua per slice of a batch, one pipeline per batch; retention sweep
    validate.py   per-event validation -> RejectReason
    auth.py       station bearer tokens, stored as SHA-256 digests (Redis or file)
    server.py     grpc.aio server: Ingest.Report, health, reflection, graceful stop
    metrics.py    Prometheus metrics;  logs.py  JSON log lines
    cli.py        `slimspect aggregator` (serve, token add/list/revoke)
"""
