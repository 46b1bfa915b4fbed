"""Embedded servers for the local default stack (``slimspect up``) and the test suite.

Each runs a binary that a Python package ships (no Docker, no system service) on loopback
ports only, keeps its state and log in one directory, and stops with its process group.

======================  ====================================================================
module                  job
======================  ====================================================================
s3.py                   SeaweedFS ``weed mini`` as an S3 store
redis_server.py         the ``redis-server`` binary and its command line (AOF on)
ray_head.py             the ``ray start --head --block`` command line on free ports
ports.py                free loopback ports
processes.py            start a process in its own session; find and stop it by pid later
probes.py               does a server answer (Redis PING, HTTP, gRPC health, TCP)
credentials.py          signing keys, station tokens and the operator key of a stack
station_config.py       the station.yaml of a simulated station
stack_state.py          stack.json: what a stack runs, for ``down`` and ``status``
stack_env.py            the environment of the stack's processes, and its env.sh
stack.py                ``up``, ``down`` and ``status`` themselves
======================  ====================================================================
"""

from slimspect.embedded.s3 import SeaweedS3, find_weed

__all__ = ["SeaweedS3", "find_weed"]
