"""A small asyncio helper the agent's loops share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


async def wait_first(*waits: Awaitable[object], timeout: float | None) -> set[asyncio.Future]:
    """Waits until the first of ``waits`` completes or ``timeout`` seconds pass.

    Returns the futures that completed (empty on timeout); the others are cancelled, so
    waiting on an ``Event`` this way leaves nothing behind.
    """
    futures = [asyncio.ensure_future(w) for w in waits]
    try:
        done, _ = await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in futures:
            if not future.done():
                future.cancel()
    return done
