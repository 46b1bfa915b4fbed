"""Free loopback ports for embedded servers.

Ports are drawn at random from 20000-55535, not asked of the kernel with ``bind(0)``: the
kernel hands out its ephemeral range (32768-60999) to outgoing connections too, so a port
it gave us a moment ago is the likeliest one to be taken again before the server binds it.
A port counts as free when it can be bound with ``SO_REUSEADDR``, as Go's and Redis's
listeners bind (so a port in TIME_WAIT after a restart counts as free).
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterable

from slimspect.errors import EmbeddedServiceError

HOST = "127.0.0.1"
PORT_RANGE = (20000, 55535)


def port_free(port: int, host: str = HOST) -> bool:
    """Whether ``host:port`` can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_ports(count: int, *, avoid: Iterable[int] = (), host: str = HOST) -> list[int]:
    """``count`` distinct free ports on ``host``, none of them in ``avoid``."""
    rng = random.SystemRandom()
    taken = set(avoid)
    chosen: list[int] = []
    for _ in range(count):
        for _ in range(500):
            port = rng.randrange(*PORT_RANGE)
            if port not in taken and port_free(port, host):
                chosen.append(port)
                taken.add(port)
                break
        else:
            raise EmbeddedServiceError(f"no free port found on {host} in {PORT_RANGE}")
    return chosen
