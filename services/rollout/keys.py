"""The Redis keys of fleet state: the one home of every key this package writes.

The aggregator owns the event keys (``ev:``, ``crop:``, ``idx:``, ``cls:``, ``cnt:``,
``stations``, ``auth:tokens``; see services/aggregator/schema.py); the fleet keys are owned
here and nothing else spells one. Fleet state is tiny (one hash per station and per rollout,
one stream), so the keys are global rather than per-station.

Every key starts with the hash tag ``{fleet}`` (``<prefix>:{fleet}`` with a key prefix), so
they all live in ONE Redis Cluster slot: the transition script (``transition.lua``) and the
WATCH/MULTI transaction that starts a rollout touch several of them at once, which a cluster
allows only within a slot. The optional prefix (``RolloutSettings.key_prefix``) isolates
tests on a shared Redis; it is restricted to ``[A-Za-z0-9._-]``, so it can hold no brace.

Keys (``S`` station, ``M`` model name, ``R`` rollout id ``ro-<12 hex>``)::

    {fleet}:station:S       HASH    the station's last heartbeat: station last_seen_ms
                                    agent_version model_name model_version health fps
                                    spool_depth spool_bytes events_dropped sent_at_ms,
                                    last_update (JSON {version,status,reason,at_ms} or ""),
                                    cameras (JSON list of {camera,state,fps,error}), and what
                                    the reply said: target_model target_version channel
    {fleet}:stations        ZSET    every station that ever sent a heartbeat, score last_seen_ms
    {fleet}:assign          HASH    S -> M: explicit model assignments (operator's choice)
    {fleet}:models          SET     model names with a rollout or reported by a station
    {fleet}:model:M         HASH    stable         the stable version (absent: none yet)
                                    stable_rollout the rollout that set it
                                    stable_at_ms   when
                                    active         the active canary rollout of M, if any
    {fleet}:rollouts        ZSET    every rollout id, score created_at_ms
    {fleet}:rollout:R       HASH    the rollout (fields of models.Rollout; stations as a JSON
                                    list, "" for none; previous_version and share "" for none)
    {fleet}:canary:R        HASH    what the canary of R did, per station S:
                                    member:S     "1": S is (or was) a canary station of R
                                    since:S      ms of its first heartbeat on R's version
                                                 (deleted when it reports another version)
                                    baseline:S   its FPS in its last heartbeat on the
                                                 previous version
                                    unhealthy:S  UNHEALTHY heartbeats it sent on R's version
                                    fail:S:T     JSON {status, reason}: a failed update to R's
                                                 version that finished at agent time T (the
                                                 same report, repeated by later heartbeats,
                                                 is one field: counted once)
    {fleet}:audit           STREAM  every decision, capped at ``audit_maxlen`` (MAXLEN ~):
                                    at_ms rollout_id model_name version station action actor
                                    reason ("" for an absent value)

Transitions of ``{fleet}:rollout:R`` (active -> promoted | rolled_back | superseded) happen
only in ``transition.lua`` or in the start transaction (which WATCHes ``model:M`` and the
rollout it supersedes), so two replicas can never both apply one; a final state never changes.
"""

from __future__ import annotations

import re

PREFIX_RE = re.compile(r"[A-Za-z0-9._-]{0,64}")
TAG = "{fleet}"


class FleetKeys:
    """Builds the fleet keys under an optional namespace ``prefix``."""

    def __init__(self, prefix: str = "") -> None:
        if not PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"key prefix {prefix!r} must be 0-64 of A-Z a-z 0-9 . _ -")
        self.base = f"{prefix}:{TAG}" if prefix else TAG

    @property
    def pattern(self) -> str:
        """SCAN pattern matching every key of this namespace."""
        return f"{self.base}:*"

    def station(self, station: str) -> str:
        return f"{self.base}:station:{station}"

    @property
    def stations(self) -> str:
        return f"{self.base}:stations"

    @property
    def assignments(self) -> str:
        return f"{self.base}:assign"

    @property
    def models(self) -> str:
        return f"{self.base}:models"

    def model(self, model_name: str) -> str:
        return f"{self.base}:model:{model_name}"

    @property
    def rollouts(self) -> str:
        return f"{self.base}:rollouts"

    def rollout(self, rollout_id: str) -> str:
        return f"{self.base}:rollout:{rollout_id}"

    def canary(self, rollout_id: str) -> str:
        return f"{self.base}:canary:{rollout_id}"

    @property
    def audit(self) -> str:
        return f"{self.base}:audit"
