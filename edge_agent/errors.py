"""The exceptions of the station agent, in one hierarchy.

::

    AgentError
    +-- ConfigError          the configuration cannot work; the message names the key
    +-- ModelLoadError       a model directory or file cannot be verified or loaded
    +-- SmokeTestError       a loaded model does not give its golden detections

Errors of the shared core (:class:`slimspect.errors.StoreError` and its subclasses) pass
through unchanged: their messages already name the bucket, key or file.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The configuration is invalid or cannot work here; ``key`` is the setting at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class ModelLoadError(AgentError):
    """A model cannot be verified from the disk cache or loaded into ONNX Runtime."""


class SmokeTestError(AgentError):
    """A model loaded, but its golden image does not give the manifest's expected detections."""
