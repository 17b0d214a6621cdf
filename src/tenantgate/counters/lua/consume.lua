-- One ConsumeQuota call, atomically: evaluate every item, then apply all of them or none.
-- The quota algorithms are written twice: in Python for the memory store (tenantgate.counters.memory, with
-- tenantgate.engines.quota) and here, in Lua, for Redis. tests/integration/test_quota_equivalence.py drives both
-- with the same operations at the same times and requires the same answers; change them together.
-- Time is the Redis server's clock, so every process agrees; only tests pass a time of their own (ARGV[5]). The
-- script reads the time once: keys expire at moments computed from it.
--
-- KEYS[1] usage hash, KEYS[2] idempotency key, then two keys per item (state, auxiliary state);
-- all carry the tenant as a hash tag, so they share a Redis Cluster slot.
-- ARGV[1] item count, ARGV[2] '1' when idempotent, ARGV[3] payload digest, ARGV[4] idempotency TTL (ms),
-- ARGV[5] the time in seconds, or '' for the server's clock,
-- then per item: kind, amount, release, lease id, limit, per_seconds, burst, period, lease TTL (ms),
-- shadow, quota name.
-- Returns {'ok', json} | {'replay', json} | {'conflict'} | {'unknown_lease', item index} (a release of a lease
-- that is not held: nothing applied); json is [[allowed, remaining, reset, retry, lease], ...].

local FIELDS = 11
local count = tonumber(ARGV[1])
local idempotent = ARGV[2] == '1'

if idempotent then
  local previous = redis.call('GET', KEYS[2])
  if previous then
    local sep = string.find(previous, '|', 1, true)
    if string.sub(previous, 1, sep - 1) ~= ARGV[3] then
      return {'conflict'}
    end
    return {'replay', string.sub(previous, sep + 1)}
  end
end

local now
if ARGV[5] == '' then
  local clock = redis.call('TIME')
  now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
else
  now = tonumber(ARGV[5])
end

local function bounded(used, limit, amount, retry, reset)
  if used + amount <= limit then
    return {1, limit - used - amount, reset, 0, ''}
  end
  return {0, math.max(0, limit - used), reset, retry, ''}
end

local items, results, plans = {}, {}, {}
local admitted = true
for i = 1, count do
  local b = 5 + (i - 1) * FIELDS
  local item = {
    kind = ARGV[b + 1], amount = tonumber(ARGV[b + 2]), release = ARGV[b + 3] == '1', lease = ARGV[b + 4],
    limit = tonumber(ARGV[b + 5]), per = tonumber(ARGV[b + 6]), burst = tonumber(ARGV[b + 7]),
    period = ARGV[b + 8], ttl = tonumber(ARGV[b + 9]), shadow = ARGV[b + 10] == '1', quota = ARGV[b + 11],
    key = KEYS[2 * i + 1], aux = KEYS[2 * i + 2],
  }
  items[i] = item
  local result
  if item.kind == 'rate' then
    local refill = item.limit / item.per
    local state = redis.call('HMGET', item.key, 'tokens', 'ts')
    local level = item.burst
    if state[1] then
      level = math.min(item.burst, tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * refill)
    end
    if item.amount <= level then
      local after = level - item.amount
      result = {1, math.floor(after), (item.burst - after) / refill, 0, ''}
    else
      result = {0, math.floor(level), (item.burst - level) / refill,
                (math.min(item.amount, item.burst) - level) / refill, ''}
    end
    plans[i] = level
  elseif item.kind == 'window' then
    local first, last = calendar_window(item.period, now)
    local state = redis.call('HMGET', item.key, 'start', 'used')
    local used = 0
    if state[1] and tonumber(state[1]) == first then used = tonumber(state[2]) end
    result = bounded(used, item.limit, item.amount, last - now, last - now)
    plans[i] = {first, last, used}
  elseif item.kind == 'concurrency' then
    local expired = redis.call('ZRANGEBYSCORE', item.key, '-inf', now * 1000)
    if #expired > 0 then
      redis.call('ZREM', item.key, unpack(expired))
      redis.call('HDEL', item.aux, unpack(expired))
    end
    local in_use = 0
    for _, held in ipairs(redis.call('HVALS', item.aux)) do in_use = in_use + tonumber(held) end
    if item.release then
      local held = redis.call('HGET', item.aux, item.lease)
      if not held then return {'unknown_lease', i} end
      result = {1, item.limit - math.max(0, in_use - tonumber(held)), 0, 0, item.lease}
    else
      local earliest = redis.call('ZRANGE', item.key, 0, 0, 'WITHSCORES')
      local retry = 0
      if earliest[2] then retry = tonumber(earliest[2]) / 1000 - now end
      result = bounded(in_use, item.limit, item.amount, retry, 0)
      if result[1] == 1 and item.amount > 0 then result[5] = item.lease end
    end
  else
    local used = tonumber(redis.call('GET', item.key) or '0')
    if item.release then
      result = {1, item.limit - math.max(0, used - item.amount), 0, 0, ''}
    else
      result = bounded(used, item.limit, item.amount, 0, 0)
    end
    plans[i] = used
  end
  results[i] = result
  if result[1] == 0 and not item.shadow then admitted = false end
end

for i = 1, count do
  local item, result = items[i], results[i]
  if admitted and result[1] == 1 then
    if item.kind == 'rate' then
      redis.call('HSET', item.key, 'tokens', plans[i] - item.amount, 'ts', now)
      redis.call('PEXPIREAT', item.key, math.ceil((now + item.burst / (item.limit / item.per)) * 1000) + 1000)
    elseif item.kind == 'window' then
      redis.call('HSET', item.key, 'start', plans[i][1], 'used', plans[i][3] + item.amount)
      redis.call('PEXPIREAT', item.key, math.ceil(plans[i][2] * 1000) + 86400000)
    elseif item.kind == 'concurrency' then
      if item.release then
        redis.call('ZREM', item.key, item.lease)
        redis.call('HDEL', item.aux, item.lease)
      elseif item.amount > 0 then
        redis.call('ZADD', item.key, now * 1000 + item.ttl, item.lease)
        redis.call('HSET', item.aux, item.lease, item.amount)
        -- Kept until the last lease ends, not this one: taken under a lease_ttl lowered since, it may end first.
        local last = redis.call('ZRANGE', item.key, -1, -1, 'WITHSCORES')
        redis.call('PEXPIREAT', item.key, math.ceil(tonumber(last[2])) + 1000)
        redis.call('PEXPIREAT', item.aux, math.ceil(tonumber(last[2])) + 1000)
      end
    elseif item.release then
      redis.call('SET', item.key, math.max(0, plans[i] - item.amount))
    else
      redis.call('INCRBY', item.key, item.amount)
    end
    if not item.release and item.amount > 0 then
      redis.call('HINCRBY', KEYS[1], item.quota .. ':consumed', item.amount)
    end
  elseif result[1] == 0 then
    redis.call('HINCRBY', KEYS[1], item.quota .. ':denied', item.amount)
  end
end

-- Numbers with 17 significant digits, which a double needs to come back the same: cjson writes 14, which would
-- round a remaining count past 10^14 (a volume quota of 100Ti) and the times the memory store answers exactly.
local parts = {}
for i = 1, count do
  local r = results[i]
  parts[i] = string.format('[%d,%.17g,%.17g,%.17g,%s]', r[1], r[2], r[3], r[4], cjson.encode(r[5]))
end
local encoded = '[' .. table.concat(parts, ',') .. ']'
if idempotent then
  redis.call('SET', KEYS[2], ARGV[3] .. '|' .. encoded, 'PX', ARGV[4])
end
return {'ok', encoded}
