-- The shared rate limiter's sliding window (redis.ratelimit.RedisRateLimiter).
-- KEYS: one sorted set per (key, rule). ARGV: count and period (ms) per key.
-- All or nothing, like InMemoryRateLimiter.check_many: a key named twice sees its first
-- count. Returns {allowed (1|0), retry after in ms as a string (Lua numbers would be
-- truncated to integers)}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local added = {}
local retry = 0
local refused = false
for i = 1, #KEYS do
  local key = KEYS[i]
  local count = tonumber(ARGV[2 * i - 1])
  local period = tonumber(ARGV[2 * i])
  local floor = '(' .. string.format('%.17g', now - period)
  local mine = added[key] or 0
  local recent = redis.call('ZCOUNT', key, floor, '+inf') + mine
  if recent >= count then
    refused = true
    local wait = period
    if mine < count then
      local hit = redis.call('ZREVRANGEBYSCORE', key, '+inf', floor, 'WITHSCORES', 'LIMIT', count - mine - 1, 1)
      wait = tonumber(hit[2]) + period - now
    end
    if wait < 0.000001 then
      wait = 0.000001
    end
    if wait > retry then
      retry = wait
    end
  else
    added[key] = mine + 1
  end
end
if refused then
  return {0, string.format('%.17g', retry)}
end
local stamp = string.format('%.17g', now)
for i = 1, #KEYS do
  local key = KEYS[i]
  local count = tonumber(ARGV[2 * i - 1])
  local period = tonumber(ARGV[2 * i])
  redis.call('ZADD', key, now, stamp .. ':' .. i)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.17g', now - period))
  redis.call('ZREMRANGEBYRANK', key, 0, -count - 1)
  redis.call('PEXPIRE', key, math.ceil(period))
end
return {1, '0'}
