-- Append a comment to a video's hot store (livecomments.redis.hotstore.HotStore.append).
-- Called through hotstore.AppendCall, which builds KEYS and ARGV in one place.
-- KEYS: 1 recent (sorted set), 2 meta (hash), 3 the video's stream, 4 rate (hash),
--       5 (optional) the moderation stream, then (optional, last) the region outbox
-- ARGV: 1 padded id, 2 padded id - 1, 3 the id's ms, 4 window ms, 5 hot size, 6 ttl s,
--       7 channel (the video's shard channel: same slot as KEYS), 8 bus payload, 9 video,
--       10 record (JSON), 11 (with KEYS[5]) the moderation stream's length, about (0 when
--       there is an outbox but no moderation stream), 12 (with an outbox) the outbox's
--       length, about
-- Refuses an id whose time is more than the window away from Redis' clock ({0, now}),
-- ignores an id already there ({2, now}, only refreshing the expiry); otherwise adds
-- the member "padded id:record", trims to the hot size (raising the floor), appends to
-- the stream (and to the moderation stream, capped), counts the second and publishes
-- the payload on the shard channel (SPUBLISH), atomically ({1, now}).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id_ms = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
if id_ms < now - window or id_ms > now + window then
  return {0, now}
end
local p = ARGV[1]
if #redis.call('ZRANGEBYLEX', KEYS[1], '[' .. p .. ':', '(' .. p .. ';', 'LIMIT', 0, 1) > 0 then
  -- A write all the same, so that a WAIT after this call also covers the first write of
  -- this id (earlier in the replication stream than this one).
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
  return {2, now}
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  local floor = redis.call('HGET', KEYS[2], 'floor')
  if not floor or floor < ARGV[2] then
    redis.call('HSET', KEYS[2], 'floor', ARGV[2])
  end
end
redis.call('ZADD', KEYS[1], 0, p .. ':' .. ARGV[10])
local n = redis.call('ZCARD', KEYS[1])
local size = tonumber(ARGV[5])
if n > size then
  local gone = redis.call('ZRANGE', KEYS[1], 0, n - size - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - size - 1)
  local top = string.sub(gone[#gone], 1, 19)
  local floor = redis.call('HGET', KEYS[2], 'floor')
  if not floor or floor < top then
    redis.call('HSET', KEYS[2], 'floor', top)
  end
end
local ttl = tonumber(ARGV[6])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('XADD', KEYS[3], '*', 'k', 'c', 'v', ARGV[9], 'r', ARGV[10])
local outbox_max = tonumber(ARGV[12] or '0')
local nmod = #KEYS
if outbox_max > 0 then
  redis.call('XADD', KEYS[#KEYS], 'MAXLEN', '~', outbox_max, '*', 'v', ARGV[9], 'r', ARGV[10])
  nmod = nmod - 1
end
if nmod >= 5 then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[11], '*', 'r', ARGV[10])
end
local sec = math.floor(now / 1000)
redis.call('HINCRBY', KEYS[4], sec, 1)
redis.call('HDEL', KEYS[4], sec - 12)
redis.call('EXPIRE', KEYS[4], 15)
redis.call('SPUBLISH', ARGV[7], ARGV[8])
return {1, now}
