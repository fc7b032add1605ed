-- Propose a fan-out mode change for a video (redis.presence.Presence.decide_hook).
-- KEYS: 1 the video's mode ("mode:changed_ms")
-- ARGV: 1 from, 2 to, 3 dwell ms, 4 the video's shard channel (same slot), 5 payload of the mode event
-- Changes the mode only if the proposer saw the current one and it was held for the dwell
-- time, then publishes the event. Returns the mode in force after the proposal.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('GET', KEYS[1])
local mode, since = 'push', 0
if cur then
  local sep = string.find(cur, ':', 1, true)
  mode = string.sub(cur, 1, sep - 1)
  since = tonumber(string.sub(cur, sep + 1))
end
if mode ~= ARGV[1] or mode == ARGV[2] or now - since < tonumber(ARGV[3]) then
  return mode
end
redis.call('SET', KEYS[1], ARGV[2] .. ':' .. now, 'EX', 86400)
redis.call('SPUBLISH', ARGV[4], ARGV[5])
return ARGV[2]
