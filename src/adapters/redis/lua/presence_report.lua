-- Report this node's viewers of a video and sum every node's (redis.presence.Presence).
-- KEYS: 1 the video's presence hash (node -> "count:expires_ms")
-- ARGV: 1 node, 2 count, 3 ttl ms, 4 read only (1|0)
-- Returns the total of the unexpired counts (expired fields are deleted unless read only).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
if ARGV[4] == '0' then
  if tonumber(ARGV[2]) > 0 then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. (now + ttl))
  else
    redis.call('HDEL', KEYS[1], ARGV[1])
  end
end
local total = 0
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local v = flat[i + 1]
  local sep = string.find(v, ':', 1, true)
  local expires = tonumber(string.sub(v, sep + 1))
  if expires < now then
    if ARGV[4] == '0' then
      redis.call('HDEL', KEYS[1], flat[i])
    end
  else
    total = total + tonumber(string.sub(v, 1, sep - 1))
  end
end
if ARGV[4] == '0' and total > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
end
return total
