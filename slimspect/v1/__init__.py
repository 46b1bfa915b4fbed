"""Generated protobuf/gRPC stubs for the slimspect.v1 wire contracts.

Do not edit: the source of truth is proto/slimspect/v1/*.proto; regenerate with
`make proto` (scripts/gen_proto.py)."""
