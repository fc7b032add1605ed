-- Propose a new shard count for a video (redis.presence.Presence.agree_spread).
-- KEYS: 1 the video's shard count (a string; absent means 1)
-- ARGV: 1 from, 2 to, 3 ttl ms
-- Changes the count only if the proposer saw the current one; a count of 1 deletes the
-- key. Returns the count in force after the proposal.
local cur = tonumber(redis.call('GET', KEYS[1]) or '1')
if cur ~= tonumber(ARGV[1]) then
  return cur
end
local to = tonumber(ARGV[2])
if to <= 1 then
  redis.call('DEL', KEYS[1])
  return 1
end
redis.call('SET', KEYS[1], to, 'PX', ARGV[3])
return to
