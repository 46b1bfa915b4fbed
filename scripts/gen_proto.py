#!/usr/bin/env python3
"""Regenerate the wire stubs (slimspect/v1/*_pb2*.py[i]) from proto/.

    python scripts/gen_proto.py [--out DIR]     # default DIR: the repo root

Every proto/**/*.proto is compiled with the protoc bundled in grpcio-tools, with
``-I proto``, so proto/slimspect/v1/x.proto lands in DIR/slimspect/v1/x_pb2.py and the
stubs import each other as ``from slimspect.v1 import ...``. The output depends only on
the .proto files and the grpcio-tools version (pinned in pyproject's dev extra): running
it twice gives the same bytes, which tests/unit/test_wire.py checks against the tree.
"""

from __future__ import annotations

import argparse
import importlib.resources
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
INIT_TEXT = (
    '"""Generated protobuf/gRPC stubs for the slimspect.v1 wire contracts.\n\n'
    "Do not edit: the source of truth is proto/slimspect/v1/*.proto; regenerate with\n"
    '`make proto` (scripts/gen_proto.py)."""\n'
)


def generate(out: Path) -> list[Path]:
    """Compile every .proto under proto/ into ``out``; return the files written."""
    protos = sorted(p.relative_to(PROTO_DIR).as_posix() for p in PROTO_DIR.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_DIR}")
    package_dirs = sorted({out / Path(p).parent for p in protos})
    for d in package_dirs:  # drop stubs of removed protos; leave anything else alone
        d.mkdir(parents=True, exist_ok=True)
        for f in d.iterdir():
            if f.name.endswith(GENERATED_SUFFIXES):
                f.unlink()
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(PROTO_DIR / p) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for d in package_dirs:
        (d / "__init__.py").write_text(INIT_TEXT)
    return sorted(f for d in package_dirs for f in d.iterdir() if f.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: repo root)")
    ns = parser.parse_args(argv)
    for f in generate(ns.out.resolve()):
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
