"""The node records' Lua (beatd.backends.redis_nodes has the role); `now_us` is HISTORY's.

Keys, under the namespace's prefix P ("beatd:"), format 3 (folded in, unreleased):
  P .. 'nodes'  hash  node -> "expires us US last seen us US record" (record: NodeRecord.to_json)
"""

from __future__ import annotations

# ARGV P, node, record, keep (µs) -> nothing: write the node's record, deleting expired ones
WRITE_NODE = """
local P, node, record, keep = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = tonumber(now_us())
local held = redis.call('HGETALL', P .. 'nodes')
for i = 1, #held, 2 do
  local expires = tonumber(string.match(held[i + 1], '^(%d+)'))
  if expires <= now then redis.call('HDEL', P .. 'nodes', held[i]) end
end
local value = string.format('%.0f', now + keep) .. '\\31' .. string.format('%.0f', now) .. '\\31'
redis.call('HSET', P .. 'nodes', node, value .. record)
"""

# ARGV P -> {node, "last seen us US record"}... of the records not expired
LIST_NODES = """
local now = tonumber(now_us())
local held, live = redis.call('HGETALL', ARGV[1] .. 'nodes'), {}
for i = 1, #held, 2 do
  local expires, rest = string.match(held[i + 1], '^(%d+)\\31(.*)$')
  if tonumber(expires) > now then
    live[#live + 1] = held[i]
    live[#live + 1] = rest
  end
end
return live
"""

NODES_SCRIPTS = {"write_node": WRITE_NODE, "list_nodes": LIST_NODES}
