-- Moves an ACTIVE rollout to a final state, atomically, with its audit entry.
--
-- KEYS: 1 the rollout hash, 2 its model's hash, 3 the audit stream (see keys.py)
-- ARGV: 1 rollout id, 2 new state (promoted | rolled_back | superseded), 3 now ms,
--       4 actor, 5 reason, 6 audit action, 7 audit maxlen
-- Returns {1, "active"} when applied; {0, state} when the rollout is not active (another
-- replica decided first, or it was final already); {0, ""} when there is no such rollout.
--
-- Only an active rollout changes, so of two concurrent transitions exactly one applies.
-- Promotion makes the version stable; every final state clears the model's active
-- canary, if it is still this rollout.

local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return {0, ''}
end
if state ~= 'active' then
  return {0, state}
end

local id, to, now, actor, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local model = redis.call('HGET', KEYS[1], 'model_name')
local version = redis.call('HGET', KEYS[1], 'version')

redis.call('HSET', KEYS[1], 'state', to, 'updated_at_ms', now,
  'decided_by', actor, 'decision_reason', reason)
if redis.call('HGET', KEYS[2], 'active') == id then
  redis.call('HDEL', KEYS[2], 'active')
end
if to == 'promoted' then
  redis.call('HSET', KEYS[2], 'stable', version, 'stable_rollout', id, 'stable_at_ms', now)
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*',
  'at_ms', now, 'rollout_id', id, 'model_name', model, 'version', version,
  'station', '', 'action', ARGV[6], 'actor', actor, 'reason', reason)
return {1, 'active'}
