-- Remove a comment from a video's hot store (HotStore.remove).
-- KEYS: 1 recent, 2 tombstones, 3 the video's stream, 4 (optional) the region outbox
-- ARGV: 1 padded id, 2 id, 3 video, 4 tombstones kept, 5 ttl s, 6 (with KEYS[4]) the
--       outbox's length, about (the removal goes there too, for the other regions)
-- A tombstone is the id, or "id:author" for a shadowed comment (whose removal only its
-- author may hear of); it is recorded even when the comment is not in recent (an older
-- one). Returns 1 when the comment was in recent (the removal then goes down the stream).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local p = ARGV[1]
local m = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. p .. ':', '(' .. p .. ';', 'LIMIT', 0, 1)
local tomb = ARGV[2]
if #m > 0 then
  local rec = cjson.decode(string.sub(m[1], 21))
  if rec['shadow'] then
    tomb = ARGV[2] .. ':' .. rec['author']['id']
  end
end
redis.call('ZADD', KEYS[2], now, tomb)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[4]) - 1)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
if #KEYS >= 4 then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', 'k', 'r', 'v', ARGV[3], 'id', ARGV[2])
end
if #m == 0 then
  return 0
end
redis.call('ZREM', KEYS[1], m[1])
redis.call('XADD', KEYS[3], '*', 'k', 'r', 'v', ARGV[3], 'id', ARGV[2])
return 1
