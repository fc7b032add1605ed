-- The viewers of each shard of a spread video, summed over the nodes (redis.spread.ShardLoads).
-- KEYS: 1 the video's per-shard presence hash (field "node/shard" -> "count:expires_ms")
-- ARGV: 1 the shard count in force
-- Returns that many sums, shard 0 first. Fields that expired, or of a shard at or above
-- the count, are left out. Read only.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local out = {}
for i = 1, n do
  out[i] = 0
end
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local shard = tonumber(string.match(flat[i], '/(%d+)$'))
  local count, expires = string.match(flat[i + 1], '^(%d+):(%d+)$')
  if shard and count and shard < n and tonumber(expires) >= now then
    out[shard + 1] = out[shard + 1] + tonumber(count)
  end
end
return out
