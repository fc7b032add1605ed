-- Write a video's cdn snapshot if this node holds (or can take) the lease
-- (redis.snapshots.SnapshotPublisher).
-- KEYS: 1 lease, 2 snapshot
-- ARGV: 1 node, 2 lease ms, 3 etag, 4 body
-- Returns 1 when written (the lease renewed), 0 when another node holds the lease.
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
redis.call('SET', KEYS[2], ARGV[3] .. '\n' .. ARGV[4], 'PX', tonumber(ARGV[2]) * 2)
return 1
