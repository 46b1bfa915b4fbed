"""gRPC ingest into Redis; owns the Redis schema and its Lua scripts."""
