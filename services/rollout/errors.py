"""Errors of the rollout service, typed so the HTTP layer maps each to one status code.

=====================  ======  ====================================================
error                  HTTP    when
=====================  ======  ====================================================
RolloutNotFound        404     no rollout with that id
StationNotFound        404     the station never sent a heartbeat
InvalidRollout         422     bad input: share, version, station or model name ...
RolloutStateError      409     the rollout is not active (promoted, rolled back,
                               superseded), or another replica decided it first
PromotionRefused       409     the promotion gate is not passed (``reason`` says why)
InvalidHeartbeat       (gRPC)  INVALID_ARGUMENT on Fleet.Heartbeat
=====================  ======  ====================================================
"""

from __future__ import annotations


class RolloutError(Exception):
    """Base of every error the rollout service raises on purpose."""


class NotFound(RolloutError, LookupError):
    pass


class RolloutNotFound(NotFound):
    def __init__(self, rollout_id: str) -> None:
        super().__init__(f"no rollout {rollout_id!r}")
        self.rollout_id = rollout_id


class StationNotFound(NotFound):
    def __init__(self, station: str) -> None:
        super().__init__(f"no heartbeat from station {station!r} yet")
        self.station = station


class InvalidRollout(RolloutError, ValueError):
    """A request the service refuses to act on as given."""


class RolloutStateError(RolloutError):
    """The rollout is not in a state that allows the action."""


class PromotionRefused(RolloutStateError):
    """The gate refused a (not forced) promotion; ``reason`` names what failed."""

    def __init__(self, rollout_id: str, reason: str, blockers: list[str]) -> None:
        super().__init__(f"rollout {rollout_id} cannot be promoted: {reason}")
        self.rollout_id = rollout_id
        self.reason = reason
        self.blockers = blockers


class InvalidHeartbeat(RolloutError, ValueError):
    """A heartbeat that cannot be recorded (bad station or model name, oversized fields)."""
