"""Embedded servers for the local default stack (``slimspect up``) and the test suite.

Each runs a binary that a Python package ships (no Docker, no system service) on loopback
ports only, keeps its state and log in one directory, and stops with its process group.
"""

from slimspect.embedded.s3 import SeaweedS3, find_weed

__all__ = ["SeaweedS3", "find_weed"]
