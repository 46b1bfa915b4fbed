"""The station agent: cameras, ONNX Runtime, the on-device spool, the gRPC uplink to the
aggregator, heartbeats and verified model updates. Run it with ``slimspect agent``.

No torch and no trainer here: a station carries onnxruntime and meets the centre only on
the wire (DESIGN.md, Imports).
"""
