"""Keep the garbage collector's full passes off the request path of a long-running service.

CPython's cyclic collector walks every tracked object of the generation it collects. A
service has ~100k long-lived objects once it has imported FastAPI, pydantic, grpc and
redis and built its app; every full (generation 2) pass walks all of them again, and
measured in the API process under load that is a stall of tens of milliseconds in
whatever request is running (the query benchmark's p99 outliers). None of these objects
will ever be garbage: :func:`freeze_startup_objects` moves them to the permanent
generation (``gc.freeze``, as Instagram's and gunicorn's preloading servers do), so the
passes that remain only walk what requests allocate. Cycles made later are still found.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("slimspect.heap")


def freeze_startup_objects() -> int:
    """Collects once, then moves every object alive now out of the collector's reach.

    Call it when start-up is done (servers bound, app built). Returns how many objects
    were frozen (``gc.get_freeze_count()``).
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("startup objects frozen", extra={"objects": frozen})
    return frozen
