"""``slimspect demo``: the end-to-end story on the embedded stack (see command.py)."""

from slimspect.demo.command import demo

__all__ = ["demo"]
