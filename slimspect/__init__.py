"""slimspect: edge-cloud visual defect inspection (shared core).

The core is what every deployable imports: the wire stubs (``slimspect.v1``), the model
manifest, the signed model store, the one post-processing, and the ``slimspect`` command.
It never imports ``trainer``, ``edge_agent`` or ``services`` (only ``cli`` mounts their
commands, lazily).
"""

__version__ = "0.1.0"
