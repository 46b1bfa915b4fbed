"""Central services: the gRPC aggregator on Redis, fleet rollout, the HTTP API."""
