-- One ConsumeQuota call, atomically: evaluate every item, then apply all of them or none.
-- The quota algorithms are written twice: in Python for the memory store (tenantgate.counters.memory, with
-- tenantgate.engines.quota) and here, in Lua, for Redis. tests/integration/test_quota_equivalence.py drives both
-- with the same operations at the same times and requires the same answers; change them together.
-- Time is the Redis server's clock, so every process agrees; only tests pass a time of their own (ARGV[1]). The
-- script reads the time once: keys expire at moments computed from it.
--
-- The script decides and writes; it answers what it read (the clock, and each item's state), from which the
-- store works out remaining, reset and retry in Python with the functions the memory store uses: each redis.call
-- costs about a microsecond and a half of Redis's single thread, the steady state of a rate or window item is one
-- HMGET, one HSET and one HINCRBY of the usage hash, and formatting answers here cost as much again. A key's expiry
-- is stored in its hash and moved only when it must move (a rate bucket: with as much slack again as it takes to
-- fill; a window: when the window changes). Only an idempotent call's answers are worked out here too: they are
-- kept, as JSON, for its retries, and answer the call itself (so that its first answer and its retries' are one).
--
-- KEYS[1] usage hash, KEYS[2] idempotency key (the usage hash again when the call has none), then two keys per
-- item (state, auxiliary state); all carry the tenant as a hash tag, so they share a Redis Cluster slot.
-- ARGV[1] the time in seconds, or '' for the server's clock; ARGV[2] the payload digest of an idempotent call,
-- else ''; ARGV[3] the idempotency TTL (ms); ARGV[4] '1' for a release, else '0'; then eight per item: amount,
-- lease id (the one to release, or the one to grant), kind, shadow ('1'/'0'), quota name, then the kind's
-- parameters: rate: limit, per_seconds, burst; window: limit, period, ''; concurrency: limit, lease TTL (ms), '';
-- allocation: limit, '', ''.
-- Returns {'ok', seconds, microseconds, then per item: allowed (1/0), read, read[, record]} | {'replay', record} |
-- {'conflict'} | {'unknown_lease', item index} (a release of a lease that is not held: nothing applied).
-- seconds and microseconds: the clock read (TIME's answer; ARGV[1] and '' with a time given). What each item read:
-- rate: the bucket's tokens and time as stored ('' for a bucket never used or dropped); window: the units used in
-- the current window and the window's end; concurrency: the units held by unexpired leases, then for a release
-- the lease's, else the earliest lease's end in ms as stored ('' when none); allocation: the units used, ''.
-- An idempotent call's answers are kept as JSON, [[allowed, remaining, reset, retry, lease], ...] (the lease
-- released, for a release), as earlier versions kept them: a retry answered by either reads the other's. That
-- record comes last in an idempotent call's 'ok' answer.

local FIELDS = 8
local count = (#ARGV - 4) / FIELDS
local idempotent = ARGV[2] ~= ''
local release = ARGV[4] == '1'

if idempotent then
  local previous = redis.call('GET', KEYS[2])
  if previous then
    local sep = string.find(previous, '|', 1, true)
    if string.sub(previous, 1, sep - 1) ~= ARGV[2] then
      return {'conflict'}
    end
    return {'replay', string.sub(previous, sep + 1)}
  end
end

local now = tonumber(ARGV[1])
local reply
if now then
  reply = {'ok', ARGV[1], ''}
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) + tonumber(time[2]) / 1000000
  reply = {'ok', time[1], time[2]}
end

-- An idempotent call's answer for one item: allowed, remaining, reset, retry (the lease is added when it is kept).
local function bounded(used, limit, amount, retry, reset)
  if used + amount <= limit then
    return {1, limit - used - amount, reset, 0}
  end
  return {0, math.max(0, limit - used), reset, retry}
end

-- What each item read, which its write starts from; and whether each item is allowed.
local amounts, allowed, plans, expiries, results = {}, {}, {}, {}, {}
local admitted = true
for i = 1, count do
  local b = 4 + (i - 1) * FIELDS
  local amount, kind, limit = tonumber(ARGV[b + 1]), ARGV[b + 3], tonumber(ARGV[b + 6])
  local key, aux = KEYS[2 * i + 1], KEYS[2 * i + 2]
  local ok, first, second
  if kind == 'rate' then
    local refill, burst = limit / tonumber(ARGV[b + 7]), tonumber(ARGV[b + 8])
    local state = redis.call('HMGET', key, 'tokens', 'ts', 'expires')
    local level = burst
    first, second = state[1] or '', state[2] or ''
    if state[1] then
      level = math.min(burst, tonumber(first) + math.max(0, now - tonumber(second)) * refill)
    end
    ok = amount <= level
    if idempotent then
      if ok then
        local after = level - amount
        results[i] = {1, math.floor(after), (burst - after) / refill, 0}
      else
        results[i] = {0, math.floor(level), (burst - level) / refill, (math.min(amount, burst) - level) / refill}
      end
    end
    -- The bucket is full, and its key no longer needed, once it has refilled for burst / refill seconds.
    local expires = math.ceil((now + burst / refill) * 1000) + 1000
    if state[3] and tonumber(state[3]) >= expires then expires = nil end
    plans[i], expiries[i] = level, expires and expires + math.ceil(burst / refill * 1000)
  elseif kind == 'window' then
    local start, ends = calendar_window(ARGV[b + 7], now)
    local state = redis.call('HMGET', key, 'start', 'used', 'ends')
    local used = 0
    if state[1] and tonumber(state[1]) == start then used = tonumber(state[2]) end
    ok, first, second = used + amount <= limit, used, ends
    if idempotent then results[i] = bounded(used, limit, amount, ends - now, ends - now) end
    -- Kept a day past the window's end; moved when the window (or the quota's period) changes.
    plans[i], expiries[i] = start, state[3] ~= tostring(ends) and ends
  elseif kind == 'concurrency' then
    local expired = redis.call('ZRANGEBYSCORE', key, '-inf', now * 1000)
    if #expired > 0 then
      redis.call('ZREM', key, unpack(expired))
      redis.call('HDEL', aux, unpack(expired))
    end
    local in_use = 0
    for _, held in ipairs(redis.call('HVALS', aux)) do in_use = in_use + tonumber(held) end
    first = in_use
    if release then
      local held = redis.call('HGET', aux, ARGV[b + 2])
      if not held then return {'unknown_lease', i} end
      ok, second = true, tonumber(held)
      if idempotent then results[i] = {1, limit - math.max(0, in_use - second), 0, 0} end
    else
      local earliest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      local retry = 0
      second = earliest[2] or ''
      if earliest[2] then retry = tonumber(second) / 1000 - now end
      ok = in_use + amount <= limit
      if idempotent then results[i] = bounded(in_use, limit, amount, retry, 0) end
    end
  else
    local used = tonumber(redis.call('GET', key) or '0')
    ok, first, second = release or used + amount <= limit, used, ''
    if idempotent then
      results[i] = release and {1, limit - math.max(0, used - amount), 0, 0} or bounded(used, limit, amount, 0, 0)
    end
    plans[i] = used
  end
  amounts[i], allowed[i] = amount, ok
  reply[3 * i + 1], reply[3 * i + 2], reply[3 * i + 3] = ok and 1 or 0, first, second
  if not ok and ARGV[b + 4] ~= '1' then admitted = false end
end

local records = {}
for i = 1, count do
  local b = 4 + (i - 1) * FIELDS
  local amount, kind = amounts[i], ARGV[b + 3]
  local key, aux = KEYS[2 * i + 1], KEYS[2 * i + 2]
  if admitted and allowed[i] then
    if kind == 'rate' then
      local level, expires = plans[i], expiries[i]
      if expires then
        redis.call('HSET', key, 'tokens', level - amount, 'ts', now, 'expires', expires)
        redis.call('PEXPIREAT', key, expires)
      else
        redis.call('HSET', key, 'tokens', level - amount, 'ts', now)
      end
    elseif kind == 'window' then
      local start, used, ends = plans[i], reply[3 * i + 2], expiries[i]
      if ends then
        redis.call('HSET', key, 'start', start, 'used', used + amount, 'ends', tostring(ends))
        redis.call('PEXPIREAT', key, math.ceil(ends * 1000) + 86400000)
      else
        redis.call('HSET', key, 'start', start, 'used', used + amount)
      end
    elseif kind == 'concurrency' then
      if release then
        redis.call('ZREM', key, ARGV[b + 2])
        redis.call('HDEL', aux, ARGV[b + 2])
      elseif amount > 0 then
        redis.call('ZADD', key, now * 1000 + tonumber(ARGV[b + 7]), ARGV[b + 2])
        redis.call('HSET', aux, ARGV[b + 2], amount)
        -- Kept until the last lease ends, not this one: taken under a lease_ttl lowered since, it may end first.
        local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
        redis.call('PEXPIREAT', key, math.ceil(tonumber(last[2])) + 1000)
        redis.call('PEXPIREAT', aux, math.ceil(tonumber(last[2])) + 1000)
      end
    elseif release then
      redis.call('SET', key, math.max(0, plans[i] - amount))
    else
      redis.call('INCRBY', key, amount)
    end
    if not release and amount > 0 then
      redis.call('HINCRBY', KEYS[1], ARGV[b + 5] .. ':consumed', amount)
    end
  elseif not allowed[i] then
    redis.call('HINCRBY', KEYS[1], ARGV[b + 5] .. ':denied', amount)
  end
  if idempotent then
    local result, lease = results[i], ''
    if release then
      lease = ARGV[b + 2]
    elseif kind == 'concurrency' and result[1] == 1 and amount > 0 then
      lease = ARGV[b + 2]
    end
    records[i] = string.format('[%d,%.17g,%.17g,%.17g,%s]', result[1], result[2], result[3], result[4],
                               cjson.encode(lease))
  end
end

if idempotent then
  local record = '[' .. table.concat(records, ',') .. ']'
  redis.call('SET', KEYS[2], ARGV[2] .. '|' .. record, 'PX', ARGV[3])
  reply[#reply + 1] = record
end
return reply
