-- A post in one call on one Redis server (redis.broker.RedisBroker.publish_within): the
-- rate limits (lua/sliding_window.lua) and, when they allow it, the append
-- (lua/append.lua), atomically. Built by hotstore.PostCall. Not for a Redis Cluster: the
-- limiter's keys live in the user's slot, the append's in the video's.
-- KEYS: the append's KEYS (4, or 5 with the moderation stream), then the limiter's KEYS
-- ARGV: 1 how many of KEYS are the append's, 2 how many of the ARGV after these two are
--       the append's; the append's ARGV, then the limiter's ARGV
-- Returns {3, retry after in ms (string)} when a limit refuses (nothing counted, nothing
-- appended), else the append's answer ({1, now}, {2, now} or {0, now}; a refusal by the
-- reorder window comes after the limits counted the post, as with two calls).
--#include sliding_window as rate_limit
--#include append as append
local nk = tonumber(ARGV[1])
local na = tonumber(ARGV[2])
local akeys, aargv, lkeys, largv = {}, {}, {}, {}
for i = 1, #KEYS do
  if i <= nk then akeys[#akeys + 1] = KEYS[i] else lkeys[#lkeys + 1] = KEYS[i] end
end
for i = 3, #ARGV do
  if i <= na + 2 then aargv[#aargv + 1] = ARGV[i] else largv[#largv + 1] = ARGV[i] end
end
if #lkeys > 0 then
  local limited = rate_limit(lkeys, largv)
  if tonumber(limited[1]) == 0 then
    return {3, limited[2]}
  end
end
return append(akeys, aargv)
