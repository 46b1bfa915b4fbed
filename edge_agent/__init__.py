"""Station daemon: cameras, ONNX Runtime, durable spool, gRPC uplink, verified model updates.

Imports ``slimspect`` only; never torch, never ``trainer`` or ``services``.
"""
