#!lua
-- Store a batch of events of ONE station atomically, each event exactly once.
-- Returns one integer per event, in batch order: 1 stored, 0 duplicate (its event key, the
-- dedupe key, already existed: from an earlier batch or earlier in this one).
-- KEYS/ARGV layout: schema.IngestCall (services/aggregator/schema.py, the one home of the
-- schema). Every key is declared and carries the station's hash tag: one cluster slot.
-- The shebang makes Redis refuse the whole script up front when out of memory, and no
-- command below can fail on keys of the schema's types, so a call writes all or nothing.
--
-- Per event: SET NX PXAT (the dedupe check, the write and the expiry), one SET per crop. Per batch: what the stored events
-- add to the indexes (one ZADD per index), the counters (one HINCRBY per field and hour),
-- the class set, the trims and the expiries. The effect is the same as storing the
-- events one by one; the shared keys are just written once per batch, not once per event.

local idx, defect_idx, classes = KEYS[1], KEYS[2], KEYS[3]
local n_hours = tonumber(ARGV[1])
local n_classes = tonumber(ARGV[2])
local trim_below = '(' .. ARGV[3]
local events = cjson.decode(ARGV[4])
local hour_expire = 4             -- ARGV[hour_expire + h]: counters h expire at
local class_name = 4 + n_hours    -- ARGV[class_name + c]: name of class c
local value_arg = 4 + n_hours + n_classes  -- ARGV[a + 1]: an event's value, then its crops
local cnt_key = 3                 -- KEYS[cnt_key + h]
local class_key = 3 + n_hours     -- KEYS[class_key + c]
local event_key = 3 + n_hours + n_classes

-- PEXPIREAT GT treats a key without a TTL as never expiring: set one first, then only extend.
local function extend(key, at)
  redis.call('PEXPIREAT', key, at, 'NX')
  redis.call('PEXPIREAT', key, at, 'GT')
end

-- ZADD in slices: unpack() of a whole large batch would overflow Lua's C stack.
local function zadd(key, pairs)
  for i = 1, #pairs, 1000 do
    redis.call('ZADD', key, unpack(pairs, i, math.min(i + 999, #pairs)))
  end
end

local result = {}
local members = {}                -- station index: score, member, ...
local defect_members = {}         -- defect index: score, member, ...
local defect_expire = 0
local class_members = {}          -- per class: score, member, ...
local class_expire = {}           -- per class: latest expire-at
local counts = {}                 -- per hour: {frames, defect_frames, defects, [3 + class] = n}
local any_stored = false
local max_expire = 0
local k = event_key
local a = value_arg

for i, e in ipairs(events) do
  -- e: event_id, captured_at_ms, expire_at, hour, frames, defect_frames, defects,
  --    {class, count, top score (text), ...}, crops, top score of the event (text)
  local ev, n_crops, expire_at = KEYS[k + 1], e[9], e[3]
  if not redis.call('SET', ev, ARGV[a + 1], 'NX', 'PXAT', expire_at) then
    result[i] = 0
  else
    result[i] = 1
    any_stored = true
    local event_id, captured = e[1], e[2]
    for j = 1, n_crops do
      redis.call('SET', KEYS[k + 1 + j], ARGV[a + 1 + j], 'PXAT', expire_at)
    end
    members[#members + 1] = captured
    members[#members + 1] = event_id
    if expire_at > max_expire then max_expire = expire_at end
    if e[7] > 0 then
      defect_members[#defect_members + 1] = captured
      defect_members[#defect_members + 1] = event_id .. '\0' .. e[10]  -- schema.class_member
      if expire_at > defect_expire then defect_expire = expire_at end
    end

    local c = counts[e[4]]
    if c == nil then
      c = {0, 0, 0}
      counts[e[4]] = c
    end
    c[1] = c[1] + e[5]
    c[2] = c[2] + e[6]
    c[3] = c[3] + e[7]
    local per_class = e[8]
    for j = 1, #per_class, 3 do
      local cls, n = per_class[j], per_class[j + 1]
      c[cls + 3] = (c[cls + 3] or 0) + n
      local m = class_members[cls]
      if m == nil then
        m = {}
        class_members[cls] = m
        class_expire[cls] = 0
      end
      m[#m + 1] = captured
      m[#m + 1] = event_id .. '\0' .. per_class[j + 2]  -- schema.class_member
      if expire_at > class_expire[cls] then class_expire[cls] = expire_at end
    end
  end
  k = k + 1 + n_crops
  a = a + 1 + n_crops
end

if any_stored then
  zadd(idx, members)
  redis.call('ZREMRANGEBYSCORE', idx, '-inf', trim_below)
  extend(idx, max_expire)
  if defect_expire > 0 then
    zadd(defect_idx, defect_members)
    redis.call('ZREMRANGEBYSCORE', defect_idx, '-inf', trim_below)
    extend(defect_idx, defect_expire)
  end
  local classes_expire = 0
  for cls = 1, n_classes do
    local m = class_members[cls]
    if m ~= nil then
      if class_expire[cls] > classes_expire then classes_expire = class_expire[cls] end
      local key = KEYS[class_key + cls]
      zadd(key, m)
      redis.call('ZREMRANGEBYSCORE', key, '-inf', trim_below)
      extend(key, class_expire[cls])
      redis.call('SADD', classes, ARGV[class_name + cls])
    end
  end
  if classes_expire > 0 then
    extend(classes, classes_expire)
  end
  for h = 1, n_hours do
    local c = counts[h]
    if c ~= nil then
      local key = KEYS[cnt_key + h]
      redis.call('HINCRBY', key, 'frames', c[1])
      redis.call('HINCRBY', key, 'defect_frames', c[2])
      redis.call('HINCRBY', key, 'defects', c[3])
      for cls = 1, n_classes do
        if c[cls + 3] ~= nil then
          redis.call('HINCRBY', key, 'defects:' .. ARGV[class_name + cls], c[cls + 3])
        end
      end
      extend(key, ARGV[hour_expire + h])
    end
  end
end
return result
