-- Change moderation state and log it (redis.moderation.RedisModerationStore).
-- KEYS: 1 state hash (bans or settings), 2 the scope's log (sorted set), 3 version
-- ARGV: 1 op (set|del), 2 field, 3 value, 4 log member, 5 log max
-- set: HSET field value; del: HDEL field (nothing is logged when there was nothing).
-- Returns 1 when something changed (always for set).
local changed = 1
if ARGV[1] == 'set' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
else
  changed = redis.call('HDEL', KEYS[1], ARGV[2])
end
if changed == 1 then
  redis.call('ZADD', KEYS[2], 0, ARGV[4])
  local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
  if excess > 0 then
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
  end
  redis.call('INCR', KEYS[3])
end
return changed
