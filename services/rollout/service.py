"""The rollout service: records heartbeats, answers which model each station runs, and moves
rollouts through their lifecycle, with every decision in the audit log.

What a station is told. Its model name is, first match: an explicit assignment
(:meth:`RolloutService.assign`), the model it reports running, the settings' ``default_model``;
with none of them the reply is empty (keep what runs). For that model the station gets the
active canary rollout's version when it is in the canary (see policy.py), else the stable
version, else an empty version (keep the current one).

Lifecycle. :meth:`~RolloutService.start` on channel ``canary`` makes a rollout ``active``; it
ends ``promoted`` (its version becomes stable), ``rolled_back`` (the canary goes back to
stable) or ``superseded`` (a newer rollout of the model replaced it). On channel ``stable`` it
sets the stable version at once (an operator's choice) and is ``promoted`` from the start.
Final states never change.

Concurrency. Several API replicas share one Redis. Transitions out of ``active`` happen only
in ``transition.lua``, which applies a transition only to a rollout that is still active, so
of two concurrent promote/rollback calls exactly one applies and the other gets
:class:`RolloutStateError`. Starting a rollout is a WATCH/MULTI transaction on the model's
hash and the rollout it supersedes, retried when another replica changed either.

Evaluation. Each heartbeat of a canary station updates what the canary did (``canary:R``,
see keys.py) and evaluates the rollout: it reads only the canary stations' hashes, so it
stays cheap on a large fleet. :meth:`~RolloutService.sweep` evaluates every active rollout;
the Fleet server runs it periodically, for canaries whose stations stopped calling.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from importlib import resources

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from services.aggregator.schema import STATION_RE
from services.rollout import policy
from services.rollout.errors import (
    InvalidRollout,
    PromotionRefused,
    RolloutNotFound,
    RolloutStateError,
    StationNotFound,
)
from services.rollout.keys import FleetKeys
from services.rollout.models import (
    AuditEntry,
    CanaryStation,
    Channel,
    Decision,
    Rollout,
    RolloutProgress,
    StationState,
)
from services.rollout.records import (
    Track,
    audit_entry,
    audit_fields,
    canary_tracks,
    check_heartbeat,
    decode_hash,
    rollout_fields,
    rollout_from,
    station_fields,
    station_state,
    target_fields,
    text,
    wire_float,
)
from services.rollout.settings import RolloutSettings
from slimspect.manifest import check_name, check_version
from slimspect.v1 import fleet_pb2

log = logging.getLogger("slimspect.rollout")

TRANSITION_LUA = resources.files("services.rollout").joinpath("transition.lua").read_text()
ROLLOUT_ID_RE = re.compile(r"ro-[0-9a-f]{12}")
GATE_ACTOR = "rollout-gate"  # the actor of automatic decisions
MAX_ACTOR = 128
MAX_REASON = 1000
_FAILED = (fleet_pb2.UPDATE_FAILED, fleet_pb2.UPDATE_ROLLED_BACK)


def wall_ms() -> int:
    return int(time.time() * 1000)


def new_rollout_id() -> str:
    return "ro-" + secrets.token_hex(6)


class RolloutService:
    """Fleet state and rollouts on Redis; every method is safe to call from several replicas."""

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: RolloutSettings,
        *,
        now_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._now = now_ms
        self.keys = FleetKeys(settings.key_prefix)
        self._transition = redis.register_script(TRANSITION_LUA)
        self._tolerances = policy.Tolerances(
            max_update_failures=settings.max_update_failures,
            max_unhealthy_heartbeats=settings.max_unhealthy_heartbeats,
        )

    @property
    def settings(self) -> RolloutSettings:
        return self._settings

    # ---- heartbeats -------------------------------------------------------------------------

    async def record_heartbeat(
        self, request: fleet_pb2.HeartbeatRequest
    ) -> fleet_pb2.HeartbeatReply:
        """Records a station's heartbeat, evaluates its canary (if any) and says what to run.

        Raises :class:`~services.rollout.errors.InvalidHeartbeat` for a heartbeat that cannot
        be recorded. The caller has authenticated the station.
        """
        check_heartbeat(request)
        now = self._now()
        station, k = request.station, self.keys
        model = text(await self._redis.hget(k.assignments, station)) or None
        model = model or request.model_name or self._settings.default_model or None
        stable, rollout = await self._model_targets(model) if model else (None, None)
        canary = rollout is not None and policy.in_canary(
            station, share=rollout.share, stations=rollout.stations
        )
        version, channel = _target(stable, rollout if canary else None)

        pipe = self._redis.pipeline(transaction=False)
        fields = station_fields(
            request, now_ms=now, target_model=model, target_version=version, channel=channel
        )
        pipe.hset(k.station(station), mapping=fields)
        pipe.zadd(k.stations, {station: now})
        if request.model_name:
            pipe.sadd(k.models, request.model_name)
        if canary and rollout is not None:
            self._track(pipe, rollout, request, now)
        await pipe.execute()

        if canary and rollout is not None:
            progress = await self._evaluate(rollout, apply=True)
            if progress.rollout.final:  # decided on this heartbeat: answer the new target
                stable, active = await self._model_targets(rollout.model_name)
                in_new = active is not None and policy.in_canary(
                    station, share=active.share, stations=active.stations
                )
                version, channel = _target(stable, active if in_new else None)
                await self._redis.hset(
                    k.station(station), mapping=target_fields(model, version, channel)
                )
        return fleet_pb2.HeartbeatReply(
            model_name=model or "",
            model_version=version or "",
            channel=channel or "",
            heartbeat_interval_s=self._settings.heartbeat_interval_s,
            server_time_ms=now,
        )

    def _track(
        self,
        pipe: aioredis.client.Pipeline,
        rollout: Rollout,
        request: fleet_pb2.HeartbeatRequest,
        now: int,
    ) -> None:
        """Queues what this heartbeat tells about the canary of ``rollout`` (keys.py: canary:R)."""
        key, station = self.keys.canary(rollout.id), request.station
        pipe.hset(key, f"member:{station}", "1")
        if request.model_name == rollout.model_name:
            if request.model_version == rollout.version:
                pipe.hsetnx(key, f"since:{station}", now)
                if request.health == fleet_pb2.UNHEALTHY:
                    pipe.hincrby(key, f"unhealthy:{station}", 1)
            elif request.model_version:
                pipe.hset(key, f"baseline:{station}", repr(wire_float(request.fps)))
                pipe.hdel(key, f"since:{station}")
        update = request.last_update
        if (
            request.HasField("last_update")
            and update.version == rollout.version
            and update.status in _FAILED
        ):
            # The agent's clock, moved onto ours by the offset its sent_at_ms shows: a failure
            # reported before this rollout began (an earlier try of the version) is not its.
            offset = now - request.sent_at_ms if request.sent_at_ms else 0
            if update.at_ms + offset >= rollout.created_at_ms:
                failure = {
                    "status": fleet_pb2.UpdateStatus.Name(update.status),
                    "reason": update.reason[:500],
                }
                pipe.hsetnx(key, f"fail:{station}:{update.at_ms}", json.dumps(failure))

    async def _model_targets(self, model_name: str) -> tuple[str | None, Rollout | None]:
        """The stable version of a model and its active canary rollout."""
        info = decode_hash(await self._redis.hgetall(self.keys.model(model_name)))
        rollout = None
        if info.get("active"):
            raw = await self._redis.hgetall(self.keys.rollout(info["active"]))
            if raw:
                found = rollout_from(decode_hash(raw))
                rollout = None if found.final else found
        return info.get("stable") or None, rollout

    # ---- starting rollouts ------------------------------------------------------------------

    async def start(
        self,
        model_name: str,
        version: str,
        *,
        channel: Channel = "canary",
        share: float | None = None,
        stations: Iterable[str] | None = None,
        actor: str,
        reason: str = "",
        soak_s: float | None = None,
        min_fps_ratio: float | None = None,
    ) -> Rollout:
        """Starts a rollout; an active canary of the same model is superseded (audited).

        ``channel="canary"`` needs exactly one of ``share`` (in (0, 1]) or ``stations``;
        ``channel="stable"`` takes neither and sets the stable version at once. ``soak_s``
        and ``min_fps_ratio`` default to the settings.
        """
        if isinstance(stations, str):
            raise InvalidRollout("stations must be a list of station names, not one string")
        station_list = None if stations is None else sorted(set(stations))
        rollout = self._new_rollout(
            model_name,
            version,
            channel=channel,
            share=share,
            stations=station_list,
            actor=actor,
            reason=reason,
            soak_s=self._settings.soak_s if soak_s is None else soak_s,
            min_fps_ratio=self._settings.min_fps_ratio if min_fps_ratio is None else min_fps_ratio,
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    rollout, old = await self._commit_start(pipe, rollout)
                    break
                except WatchError:  # another replica changed the model or its canary: redo
                    continue
        log.info(
            "rollout started",
            extra={
                "rollout": rollout.id,
                "model": model_name,
                "version": version,
                "channel": channel,
                "actor": actor,
                "superseded": old.id if old else None,
            },
        )
        if channel == "canary":
            await self._seed_canary(rollout, superseded=old)
        return rollout

    async def _commit_start(
        self, pipe: aioredis.client.Pipeline, rollout: Rollout
    ) -> tuple[Rollout, Rollout | None]:
        """One try of the start transaction; returns the rollout and the one it superseded.

        WATCHes the model's hash and its active rollout, so a concurrent start, promote or
        rollback of the same model makes EXEC fail (WatchError) instead of interleaving.
        """
        k, actor = self.keys, rollout.created_by
        model_key = k.model(rollout.model_name)
        await pipe.watch(model_key)
        info = decode_hash(await pipe.hgetall(model_key))
        old: Rollout | None = None
        if info.get("active"):
            await pipe.watch(k.rollout(info["active"]))
            raw = decode_hash(await pipe.hgetall(k.rollout(info["active"])))
            old = rollout_from(raw) if raw else None
            old = None if old is None or old.final else old
        stable = info.get("stable") or None
        if rollout.version == stable:
            raise InvalidRollout(
                f"{rollout.model_name} {rollout.version} is the stable version already"
            )
        now = self._now()
        rollout = rollout.model_copy(
            update={"previous_version": stable, "created_at_ms": now, "updated_at_ms": now}
        )
        pipe.multi()
        if old is not None:
            why = f"superseded by {rollout.id} ({rollout.model_name} {rollout.version})"
            superseded = {
                "state": "superseded",
                "updated_at_ms": str(now),
                "decided_by": actor,
                "decision_reason": why,
            }
            pipe.hset(k.rollout(old.id), mapping=superseded)
            self._queue_audit(
                pipe, rollout=old, at_ms=now, action="supersede", actor=actor, reason=why
            )
        pipe.hset(k.rollout(rollout.id), mapping=rollout_fields(rollout))
        pipe.zadd(k.rollouts, {rollout.id: now})
        pipe.sadd(k.models, rollout.model_name)
        if rollout.channel == "canary":
            pipe.hset(model_key, "active", rollout.id)
            action = "start"
        else:
            stable_fields = {
                "stable": rollout.version,
                "stable_rollout": rollout.id,
                "stable_at_ms": str(now),
            }
            pipe.hset(model_key, mapping=stable_fields)
            pipe.hdel(model_key, "active")
            action = "set_stable"
        reason = rollout.reason or _describe(rollout)
        self._queue_audit(
            pipe, rollout=rollout, at_ms=now, action=action, actor=actor, reason=reason
        )
        await pipe.execute()
        return rollout, old

    def _new_rollout(
        self,
        model_name: str,
        version: str,
        *,
        channel: str,
        share: float | None,
        stations: list[str] | None,
        actor: str,
        reason: str,
        soak_s: float,
        min_fps_ratio: float,
    ) -> Rollout:
        """A validated rollout record (times and previous version filled in at commit)."""
        try:
            check_name(model_name)
            check_version(version)
        except ValueError as exc:
            raise InvalidRollout(str(exc)) from None
        if channel not in ("canary", "stable"):
            raise InvalidRollout(f"channel must be 'canary' or 'stable', not {channel!r}")
        if channel == "stable" and (share is not None or stations is not None):
            raise InvalidRollout("a stable rollout takes no share or stations: it is fleet-wide")
        if channel == "canary" and (share is None) == (stations is None):
            raise InvalidRollout("a canary needs exactly one of share or stations")
        if share is not None and not 0 < share <= 1:
            raise InvalidRollout(f"share must be in (0, 1], not {share}")
        if stations is not None:
            if not stations:
                raise InvalidRollout("the canary station list is empty")
            bad = [s for s in stations if not STATION_RE.fullmatch(s)]
            if bad:
                raise InvalidRollout(f"invalid station names: {', '.join(map(repr, bad))}")
        if soak_s < 0:
            raise InvalidRollout(f"soak_s must be >= 0, not {soak_s}")
        if not 0 <= min_fps_ratio <= 1:
            raise InvalidRollout(f"min_fps_ratio must be in [0, 1], not {min_fps_ratio}")
        _check_actor(actor, reason)
        return Rollout(
            id=new_rollout_id(),
            model_name=model_name,
            version=version,
            previous_version=None,
            channel=channel,  # type: ignore[arg-type]
            share=share,
            stations=stations,
            state="promoted" if channel == "stable" else "active",
            created_at_ms=0,
            updated_at_ms=0,
            created_by=actor,
            soak_s=soak_s,
            min_fps_ratio=min_fps_ratio,
            reason=reason,
            decided_by=actor if channel == "stable" else None,
            decision_reason="set stable directly" if channel == "stable" else "",
        )

    async def _seed_canary(self, rollout: Rollout, *, superseded: Rollout | None) -> None:
        """Marks the known stations of the new canary, with their FPS on the old version.

        Their next heartbeats refresh the baselines; seeding covers a station whose first
        heartbeat after the start already runs the new version (it updated at once). A
        station already on a canary version of the ``superseded`` rollout keeps the baseline
        that rollout recorded (its FPS before any canary), which comes first.
        """
        k = self.keys
        states = await self._raw_states()
        assignments = await self._assignments()
        carried: dict[str, float] = {}
        if superseded is not None:
            old = canary_tracks(await self._redis.hgetall(k.canary(superseded.id)))
            carried = {s: t.baseline_fps for s, t in old.items() if t.baseline_fps is not None}
        pipe = self._redis.pipeline(transaction=False)
        key = k.canary(rollout.id)
        for station, fps in carried.items():
            if policy.in_canary(station, share=rollout.share, stations=rollout.stations):
                pipe.hsetnx(key, f"baseline:{station}", repr(fps))
        for station in rollout.stations or ():
            pipe.hset(key, f"member:{station}", "1")
        for station, fields in states.items():
            target = self._model_of(station, fields, assignments)
            if target != rollout.model_name or not policy.in_canary(
                station, share=rollout.share, stations=rollout.stations
            ):
                continue
            pipe.hset(key, f"member:{station}", "1")
            same_model = fields.get("model_name") == rollout.model_name
            running = fields.get("model_version", "")
            if same_model and running and running != rollout.version:
                pipe.hsetnx(key, f"baseline:{station}", fields.get("fps") or "0")
        await pipe.execute()

    # ---- reading rollouts -------------------------------------------------------------------

    async def get(self, rollout_id: str) -> Rollout:
        """The rollout, or :class:`RolloutNotFound`."""
        if not ROLLOUT_ID_RE.fullmatch(rollout_id):
            raise RolloutNotFound(rollout_id)
        raw = await self._redis.hgetall(self.keys.rollout(rollout_id))
        if not raw:
            raise RolloutNotFound(rollout_id)
        return rollout_from(decode_hash(raw))

    async def list(self, model_name: str | None = None, active_only: bool = False) -> list[Rollout]:
        """Rollouts, newest first, of one model or all."""
        ids = [text(i) for i in await self._redis.zrevrange(self.keys.rollouts, 0, -1)]
        pipe = self._redis.pipeline(transaction=False)
        for rollout_id in ids:
            pipe.hgetall(self.keys.rollout(rollout_id))
        rollouts = [rollout_from(decode_hash(raw)) for raw in await pipe.execute() if raw]
        return [
            r
            for r in rollouts
            if (model_name is None or r.model_name == model_name)
            and (not active_only or r.state == "active")
        ]

    async def channels(self, model_name: str) -> dict[str, str | None]:
        """``{"stable": version | None, "canary": version of the active canary | None}``."""
        stable, rollout = await self._model_targets(model_name)
        return {"stable": stable, "canary": rollout.version if rollout else None}

    async def models(self) -> list[str]:
        """Model names with a rollout or reported by a station, sorted."""
        return sorted(text(m) for m in await self._redis.smembers(self.keys.models))

    async def progress(self, rollout_id: str) -> RolloutProgress:
        """The rollout, its canary stations and the gate's verdict now (nothing applied)."""
        return await self._evaluate(await self.get(rollout_id), apply=False)

    # ---- decisions --------------------------------------------------------------------------

    async def evaluate(self, rollout_id: str) -> RolloutProgress:
        """Evaluates the gate and applies its verdict (auto rollback / auto promote).

        The returned progress carries the verdict that was acted on, and the rollout as it is
        afterwards.
        """
        return await self._evaluate(await self.get(rollout_id), apply=True)

    async def sweep(self) -> list[RolloutProgress]:
        """Evaluates every active rollout (see :meth:`evaluate`)."""
        models = await self.models()
        pipe = self._redis.pipeline(transaction=False)
        for model in models:
            pipe.hget(self.keys.model(model), "active")
        active = [text(a) for a in await pipe.execute() if a]
        results = []
        for rollout_id in active:
            try:
                results.append(await self.evaluate(rollout_id))
            except RolloutNotFound:  # pragma: no cover - removed under our feet
                continue
        return results

    async def promote(
        self, rollout_id: str, *, actor: str, reason: str = "", force: bool = False
    ) -> Rollout:
        """Promotes an active canary: its version becomes stable.

        Refused with :class:`PromotionRefused` (naming what failed, and audited) unless the
        gate passes or ``force``; :class:`RolloutStateError` when the rollout is not active.
        """
        _check_actor(actor, reason)
        rollout = await self._active(rollout_id)
        gate = (await self._evaluate(rollout, apply=False)).gate
        if gate.verdict != "promote" and not force:
            await self._audit(
                rollout=rollout, action="promote_refused", actor=actor, reason=gate.reason
            )
            log.info("promotion refused", extra={"rollout": rollout.id, "reason": gate.reason})
            raise PromotionRefused(rollout.id, gate.reason, gate.blockers)
        if gate.verdict == "promote":
            action, why = "promote", _join(reason, f"gate passed: {gate.reason}")
        else:
            action, why = "force_promote", _join(reason, f"forced past the gate: {gate.reason}")
        return await self._decide(rollout, "promoted", action=action, actor=actor, reason=why)

    async def rollback(self, rollout_id: str, *, actor: str, reason: str = "") -> Rollout:
        """Rolls an active canary back: its stations return to the stable version."""
        _check_actor(actor, reason)
        rollout = await self._active(rollout_id)
        why = reason or "rolled back by an operator"
        return await self._decide(
            rollout, "rolled_back", action="rollback", actor=actor, reason=why
        )

    async def _active(self, rollout_id: str) -> Rollout:
        rollout = await self.get(rollout_id)
        if rollout.final:
            raise RolloutStateError(f"rollout {rollout.id} is {rollout.state}, not active")
        return rollout

    async def _decide(
        self, rollout: Rollout, to: str, *, action: str, actor: str, reason: str
    ) -> Rollout:
        """Applies a transition (transition.lua); RolloutStateError when it lost the race."""
        applied, before = await self._apply(rollout, to, action=action, actor=actor, reason=reason)
        if not applied:
            raise RolloutStateError(f"rollout {rollout.id} is {before or 'gone'}, not active")
        return await self.get(rollout.id)

    async def _apply(
        self, rollout: Rollout, to: str, *, action: str, actor: str, reason: str
    ) -> tuple[bool, str]:
        k = self.keys
        applied, before = await self._transition(
            keys=[k.rollout(rollout.id), k.model(rollout.model_name), k.audit],
            args=[
                rollout.id,
                to,
                self._now(),
                actor,
                reason[:MAX_REASON],
                action,
                self._settings.audit_maxlen,
            ],
        )
        if applied:
            log.info(
                f"rollout {to}",
                extra={"rollout": rollout.id, "action": action, "actor": actor, "reason": reason},
            )
        return bool(applied), text(before)

    async def _evaluate(self, rollout: Rollout, *, apply: bool) -> RolloutProgress:
        now = self._now()
        stations = await self._canary_stations(rollout, now)
        if rollout.final:
            gate = Decision(
                verdict="final",
                reason=f"rollout is {rollout.state}"
                + (f": {rollout.decision_reason}" if rollout.decision_reason else ""),
            )
            return RolloutProgress(
                rollout=rollout, stations=stations, gate=gate, evaluated_at_ms=now
            )
        gate = policy.decide(rollout, stations, now_ms=now, tolerances=self._tolerances)
        to = None
        if apply and gate.verdict == "rollback":
            to, action = "rolled_back", "auto_rollback"
        elif apply and gate.verdict == "promote" and self._settings.auto_promote:
            to, action = "promoted", "auto_promote"
        if to is not None:
            await self._apply(rollout, to, action=action, actor=GATE_ACTOR, reason=gate.reason)
            rollout = await self.get(rollout.id)  # whoever applied first, this is the outcome
        return RolloutProgress(rollout=rollout, stations=stations, gate=gate, evaluated_at_ms=now)

    async def _canary_stations(self, rollout: Rollout, now: int) -> list[CanaryStation]:
        """The canary stations of ``rollout`` (members that still run its model)."""
        if rollout.channel != "canary":
            return []
        tracks = canary_tracks(await self._redis.hgetall(self.keys.canary(rollout.id)))
        names = sorted({s for s, t in tracks.items() if t.member} | set(rollout.stations or ()))
        if not names:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for station in names:
            pipe.hgetall(self.keys.station(station))
        pipe.hmget(self.keys.assignments, names)
        *raws, assigned = await pipe.execute()
        assignments = {s: text(m) for s, m in zip(names, assigned, strict=True) if m}
        out = []
        for station, raw in zip(names, raws, strict=True):
            fields = decode_hash(raw)
            if self._model_of(station, fields, assignments) not in (rollout.model_name, None):
                continue  # moved to another model since
            if not fields and station not in (rollout.stations or ()):
                continue
            out.append(self._canary_station(rollout, station, fields, tracks.get(station), now))
        return out

    def _canary_station(
        self,
        rollout: Rollout,
        station: str,
        fields: dict[str, str],
        track: Track | None,
        now: int,
    ) -> CanaryStation:
        track = track or Track()
        if not fields:
            return CanaryStation(
                station=station,
                seen=False,
                online=False,
                model_version=None,
                on_version=False,
                since_ms=None,
                soaked_s=0.0,
                health=None,
                fps=None,
                baseline_fps=track.baseline_fps,
                fps_ratio=None,
                update_status=None,
                failures=track.failures,
                unhealthy_heartbeats=track.unhealthy,
            )
        state = station_state(
            fields, now_ms=now, stale_after_ms=self._settings.stale_after_ms, assigned_model=None
        )
        same_model = state.model_name == rollout.model_name
        on_version = same_model and state.model_version == rollout.version
        since = track.since_ms if on_version else None
        update = state.last_update
        mine = update is not None and update.version == rollout.version
        ratio = None
        if on_version and track.baseline_fps:
            ratio = round(state.fps / track.baseline_fps, 4)
        return CanaryStation(
            station=station,
            seen=True,
            online=state.online,
            model_version=state.model_version if same_model else None,
            on_version=on_version,
            since_ms=since,
            soaked_s=max(0.0, (now - since) / 1000) if since is not None else 0.0,
            health=state.health,
            fps=state.fps,
            baseline_fps=track.baseline_fps,
            fps_ratio=ratio,
            update_status=update.status if mine and update else None,
            update_reason=update.reason if mine and update else "",
            failures=track.failures,
            unhealthy_heartbeats=track.unhealthy,
        )

    # ---- stations ---------------------------------------------------------------------------

    async def stations(self) -> list[StationState]:
        """Every station that ever sent a heartbeat, by name."""
        now = self._now()
        raws = await self._raw_states()
        assignments = await self._assignments()
        return [
            station_state(
                fields,
                now_ms=now,
                stale_after_ms=self._settings.stale_after_ms,
                assigned_model=assignments.get(station),
            )
            for station, fields in sorted(raws.items())
        ]

    async def station(self, name: str) -> StationState:
        """One station's state, or :class:`StationNotFound`."""
        if not STATION_RE.fullmatch(name):
            raise StationNotFound(name)
        raw = await self._redis.hgetall(self.keys.station(name))
        if not raw:
            raise StationNotFound(name)
        assigned = text(await self._redis.hget(self.keys.assignments, name)) or None
        return station_state(
            decode_hash(raw),
            now_ms=self._now(),
            stale_after_ms=self._settings.stale_after_ms,
            assigned_model=assigned,
        )

    async def assign(
        self, station: str, model_name: str | None, *, actor: str = "operator", reason: str = ""
    ) -> None:
        """Assigns ``station`` to a model (None: removes the assignment); audited.

        The station need not have sent a heartbeat yet: its first one gets the model.
        """
        if not STATION_RE.fullmatch(station):
            raise InvalidRollout(f"invalid station name {station!r}")
        if model_name is not None:
            try:
                check_name(model_name)
            except ValueError as exc:
                raise InvalidRollout(str(exc)) from None
        _check_actor(actor, reason)
        pipe = self._redis.pipeline(transaction=True)
        if model_name is None:
            pipe.hdel(self.keys.assignments, station)
        else:
            pipe.hset(self.keys.assignments, station, model_name)
            pipe.sadd(self.keys.models, model_name)
        what = f"{station} -> {model_name}" if model_name else f"{station}: assignment removed"
        pipe.xadd(
            self.keys.audit,
            audit_fields(
                at_ms=self._now(),
                action="assign",
                actor=actor,
                reason=_join(what, reason),
                model_name=model_name,
                station=station,
            ),
            maxlen=self._settings.audit_maxlen,
            approximate=True,
        )
        await pipe.execute()

    async def assignments(self) -> dict[str, str]:
        """Explicit station -> model assignments."""
        return await self._assignments()

    async def _assignments(self) -> dict[str, str]:
        return decode_hash(await self._redis.hgetall(self.keys.assignments))

    async def _raw_states(self) -> dict[str, dict[str, str]]:
        names = [text(s) for s in await self._redis.zrange(self.keys.stations, 0, -1)]
        pipe = self._redis.pipeline(transaction=False)
        for station in names:
            pipe.hgetall(self.keys.station(station))
        raws = await pipe.execute()
        return {s: decode_hash(r) for s, r in zip(names, raws, strict=True) if r}

    def _model_of(
        self, station: str, fields: dict[str, str], assignments: dict[str, str]
    ) -> str | None:
        """The model a station should run (assignment, reported model, default model)."""
        return (
            assignments.get(station)
            or fields.get("model_name")
            or self._settings.default_model
            or None
        )

    # ---- audit ------------------------------------------------------------------------------

    async def audit(self, rollout_id: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """Audit entries, newest first: all, or those of one rollout."""
        if limit <= 0:
            return []
        out: list[AuditEntry] = []
        upper = "+"
        page = max(limit, 200) if rollout_id else limit
        while len(out) < limit:
            entries = await self._redis.xrevrange(self.keys.audit, max=upper, count=page)
            for entry_id, fields in entries:
                entry = audit_entry(entry_id, fields)
                if rollout_id is None or entry.rollout_id == rollout_id:
                    out.append(entry)
            if len(entries) < page:
                break
            upper = "(" + text(entries[-1][0])
        return out[:limit]

    async def _audit(self, *, rollout: Rollout, action: str, actor: str, reason: str) -> None:
        pipe = self._redis.pipeline(transaction=False)
        self._queue_audit(
            pipe, rollout=rollout, at_ms=self._now(), action=action, actor=actor, reason=reason
        )
        await pipe.execute()

    def _queue_audit(
        self,
        pipe: aioredis.client.Pipeline,
        *,
        rollout: Rollout,
        at_ms: int,
        action: str,
        actor: str,
        reason: str,
    ) -> None:
        pipe.xadd(
            self.keys.audit,
            audit_fields(
                at_ms=at_ms,
                action=action,
                actor=actor,
                reason=reason[:MAX_REASON],
                rollout_id=rollout.id,
                model_name=rollout.model_name,
                version=rollout.version,
            ),
            maxlen=self._settings.audit_maxlen,
            approximate=True,
        )


def _target(stable: str | None, canary: Rollout | None) -> tuple[str | None, str | None]:
    """(version, channel) a station gets: the canary's when it is in one, else the stable."""
    if canary is not None:
        return canary.version, "canary"
    if stable:
        return stable, "stable"
    return None, None


def _check_actor(actor: str, reason: str) -> None:
    if not actor or not actor.strip() or len(actor) > MAX_ACTOR:
        raise InvalidRollout(f"actor must be 1-{MAX_ACTOR} characters")
    if len(reason) > MAX_REASON:
        raise InvalidRollout(f"reason longer than {MAX_REASON} characters")


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _describe(rollout: Rollout) -> str:
    if rollout.channel == "stable":
        return f"set {rollout.model_name} stable to {rollout.version}"
    if rollout.stations is None:
        return f"canary {rollout.model_name} {rollout.version} on {rollout.share:g} of the fleet"
    stations = ", ".join(rollout.stations)
    return f"canary {rollout.model_name} {rollout.version} on stations {stations}"
