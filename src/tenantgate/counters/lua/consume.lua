-- One ConsumeQuota call, atomically: evaluate every item, then apply all of them or none.
-- The quota algorithms are written twice: in Python for the memory store (tenantgate.counters.memory, with
-- tenantgate.engines.quota) and here, in Lua, for Redis. tests/integration/test_quota_equivalence.py drives both
-- with the same operations at the same times and requires the same answers; change them together.
-- Time is the Redis server's clock, so every process agrees; only tests pass a time of their own (ARGV[1]). The
-- script reads the time once: keys expire at moments computed from it.
--
-- Each redis.call costs about a microsecond and a half of Redis's single thread, more than the arithmetic: the
-- steady state of a rate or window item is one HMGET, one HSET and one HINCRBY of the usage hash. A key's expiry
-- is stored in its hash and moved only when it must move (a rate bucket: with as much slack again as it takes to
-- fill; a window: when the window changes). Answers are one string, no JSON (but for idempotency records).
--
-- KEYS[1] usage hash, KEYS[2] idempotency key (the usage hash again when the call has none), then two keys per
-- item (state, auxiliary state); all carry the tenant as a hash tag, so they share a Redis Cluster slot.
-- ARGV[1] the time in seconds, or '' for the server's clock; ARGV[2] the payload digest of an idempotent call,
-- else ''; ARGV[3] the idempotency TTL (ms); then nine per item: amount, release ('1'/'0'), lease id (the one to
-- release, or the one to grant), kind, shadow ('1'/'0'), quota name, then the kind's parameters: rate: limit,
-- per_seconds, burst; window: limit, period, ''; concurrency: limit, lease TTL (ms), ''; allocation: limit, '', ''.
-- Returns {'ok', answers} | {'replay', record} | {'conflict'} | {'unknown_lease', item index} (a release of a
-- lease that is not held: nothing applied). answers: per item 'allowed remaining reset retry lease', items
-- separated by ';'; numbers in full (17 significant digits come back as the same double); lease: the one granted.
-- An idempotent call's answers are kept as JSON, [[allowed, remaining, reset, retry, lease], ...] (the lease
-- released, for a release), as earlier versions kept them: a retry answered by either reads the other's.

local FIELDS = 9
local count = (#ARGV - 3) / FIELDS
local idempotent = ARGV[2] ~= ''

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
if not now then
  local time = redis.call('TIME')
  now = tonumber(time[1]) + tonumber(time[2]) / 1000000
end

local function bounded(used, limit, amount, retry, reset)
  if used + amount <= limit then
    return {1, limit - used - amount, reset, 0, ''}
  end
  return {0, math.max(0, limit - used), reset, retry, ''}
end

-- What each item read, which its write starts from.
local results, plans = {}, {}
local admitted = true
for i = 1, count do
  local b = 3 + (i - 1) * FIELDS
  local amount, release, kind = tonumber(ARGV[b + 1]), ARGV[b + 2] == '1', ARGV[b + 4]
  local limit = tonumber(ARGV[b + 7])
  local key, aux = KEYS[2 * i + 1], KEYS[2 * i + 2]
  local result
  if kind == 'rate' then
    local refill = limit / tonumber(ARGV[b + 8])
    local burst = tonumber(ARGV[b + 9])
    local state = redis.call('HMGET', key, 'tokens', 'ts', 'expires')
    local level = burst
    if state[1] then
      level = math.min(burst, tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * refill)
    end
    if amount <= level then
      local after = level - amount
      result = {1, math.floor(after), (burst - after) / refill, 0, ''}
    else
      result = {0, math.floor(level), (burst - level) / refill, (math.min(amount, burst) - level) / refill, ''}
    end
    -- The bucket is full, and its key no longer needed, once it has refilled for burst / refill seconds.
    local expires = math.ceil((now + burst / refill) * 1000) + 1000
    if state[3] and tonumber(state[3]) >= expires then expires = nil end
    plans[i] = {level, expires and expires + math.ceil(burst / refill * 1000)}
  elseif kind == 'window' then
    local first, last = calendar_window(ARGV[b + 8], now)
    local state = redis.call('HMGET', key, 'start', 'used', 'ends')
    local used = 0
    if state[1] and tonumber(state[1]) == first then used = tonumber(state[2]) end
    result = bounded(used, limit, amount, last - now, last - now)
    -- Kept a day past the window's end; moved when the window (or the quota's period) changes.
    plans[i] = {first, used, state[3] ~= tostring(last) and last}
  elseif kind == 'concurrency' then
    local expired = redis.call('ZRANGEBYSCORE', key, '-inf', now * 1000)
    if #expired > 0 then
      redis.call('ZREM', key, unpack(expired))
      redis.call('HDEL', aux, unpack(expired))
    end
    local in_use = 0
    for _, held in ipairs(redis.call('HVALS', aux)) do in_use = in_use + tonumber(held) end
    if release then
      local held = redis.call('HGET', aux, ARGV[b + 3])
      if not held then return {'unknown_lease', i} end
      result = {1, limit - math.max(0, in_use - tonumber(held)), 0, 0, ''}
    else
      local earliest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      local retry = 0
      if earliest[2] then retry = tonumber(earliest[2]) / 1000 - now end
      result = bounded(in_use, limit, amount, retry, 0)
      if result[1] == 1 and amount > 0 then result[5] = ARGV[b + 3] end
    end
  else
    local used = tonumber(redis.call('GET', key) or '0')
    if release then
      result = {1, limit - math.max(0, used - amount), 0, 0, ''}
    else
      result = bounded(used, limit, amount, 0, 0)
    end
    plans[i] = used
  end
  results[i] = result
  if result[1] == 0 and ARGV[b + 5] ~= '1' then admitted = false end
end

local answers, records = {}, {}
for i = 1, count do
  local b = 3 + (i - 1) * FIELDS
  local amount, release, kind, result = tonumber(ARGV[b + 1]), ARGV[b + 2] == '1', ARGV[b + 4], results[i]
  local key, aux = KEYS[2 * i + 1], KEYS[2 * i + 2]
  if admitted and result[1] == 1 then
    if kind == 'rate' then
      local level, expires = plans[i][1], plans[i][2]
      if expires then
        redis.call('HSET', key, 'tokens', level - amount, 'ts', now, 'expires', expires)
        redis.call('PEXPIREAT', key, expires)
      else
        redis.call('HSET', key, 'tokens', level - amount, 'ts', now)
      end
    elseif kind == 'window' then
      local first, used, last = plans[i][1], plans[i][2], plans[i][3]
      if last then
        redis.call('HSET', key, 'start', first, 'used', used + amount, 'ends', tostring(last))
        redis.call('PEXPIREAT', key, math.ceil(last * 1000) + 86400000)
      else
        redis.call('HSET', key, 'start', first, 'used', used + amount)
      end
    elseif kind == 'concurrency' then
      if release then
        redis.call('ZREM', key, ARGV[b + 3])
        redis.call('HDEL', aux, ARGV[b + 3])
      elseif amount > 0 then
        redis.call('ZADD', key, now * 1000 + tonumber(ARGV[b + 8]), ARGV[b + 3])
        redis.call('HSET', aux, ARGV[b + 3], amount)
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
      redis.call('HINCRBY', KEYS[1], ARGV[b + 6] .. ':consumed', amount)
    end
  elseif result[1] == 0 then
    redis.call('HINCRBY', KEYS[1], ARGV[b + 6] .. ':denied', amount)
  end
  answers[i] = string.format('%d %d %.17g %.17g %s', result[1], result[2], result[3], result[4], result[5])
  if idempotent then
    records[i] = string.format('[%d,%.17g,%.17g,%.17g,%s]', result[1], result[2], result[3], result[4],
                               cjson.encode(release and ARGV[b + 3] or result[5]))
  end
end

if idempotent then
  redis.call('SET', KEYS[2], ARGV[2] .. '|[' .. table.concat(records, ',') .. ']', 'PX', ARGV[3])
end
return {'ok', count == 1 and answers[1] or table.concat(answers, ';')}
