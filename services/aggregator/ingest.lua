#!lua
-- Store ONE inspection event atomically, or report it as a duplicate.
-- Returns 1 when stored, 0 when the event key (the dedupe key) already exists.
-- KEYS/ARGV layout: schema.IngestCall (services/aggregator/schema.py, the one home of the
-- schema). Every key is declared and carries the station's hash tag: one cluster slot.
-- The shebang makes Redis refuse the whole script up front when out of memory, and no
-- command below can fail on keys of the schema's types, so a call writes all or nothing.

local ev, idx, cnt, classes = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('EXISTS', ev) == 1 then
  return 0
end

local event_id = ARGV[1]
local captured = ARGV[2]
local expire_at = ARGV[3]
local counters_expire_at = ARGV[4]
local trim_below = '(' .. ARGV[5]
local n_classes = tonumber(ARGV[9])
local n_crops = tonumber(ARGV[10])
local n_items = tonumber(ARGV[11])

-- PEXPIREAT GT treats a key without a TTL as never expiring: set one first, then only extend.
local function extend(key, at)
  redis.call('PEXPIREAT', key, at, 'NX')
  redis.call('PEXPIREAT', key, at, 'GT')
end

local function index(key)
  redis.call('ZADD', key, captured, event_id)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', trim_below)
  extend(key, expire_at)
end

redis.call('HSET', ev, unpack(ARGV, 12, 11 + n_items))
redis.call('PEXPIREAT', ev, expire_at)
index(idx)

redis.call('HINCRBY', cnt, 'frames', ARGV[6])
redis.call('HINCRBY', cnt, 'defect_frames', ARGV[7])
redis.call('HINCRBY', cnt, 'defects', ARGV[8])

local a = 12 + n_items
for i = 1, n_classes do
  local name, count = ARGV[a], ARGV[a + 1]
  index(KEYS[4 + i])
  redis.call('HINCRBY', cnt, 'defects:' .. name, count)
  redis.call('SADD', classes, name)
  a = a + 2
end
extend(cnt, counters_expire_at)
if n_classes > 0 then
  extend(classes, expire_at)
end

for i = 1, n_crops do
  redis.call('SET', KEYS[4 + n_classes + i], ARGV[a], 'PXAT', expire_at)
  a = a + 1
end
return 1
