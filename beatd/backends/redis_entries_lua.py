"""The runtime entries' Lua (beatd.backends.redis_entries has the role): each write is one
script with its change record, the feed's trim and its audit record (`add_audit`, CONTROLS).

Keys, under the namespace's prefix P ("beatd:"), format 3 (folded in, unreleased):
  P .. 'rt:def'    hash  name -> the resolved definition, JSON text as beatd wrote it (never
                   decoded here: cjson would turn an empty list into an object)
  P .. 'rt:meta'   hash  name -> JSON [version, created us, created by, updated us, updated by,
                   request id ('' none)]
  P .. 'rt:names'  zset  every name at score 0, for pages by name (ZRANGE BYLEX)
  P .. 'rt:files'  hash  the leader's registered file-entry names -> their file
  P .. 'rt:feed'   zset  change records "seq US name US version ('' removed)" by seq
  P .. 'rt:seq'    string the last change's seq (GET/SET: the ACL line allows no INCR)
Times are microseconds as decimal strings (now_us, HISTORY).
"""

from __future__ import annotations

ENTRIES = """
local US = '\\31'
local function trim_feed(P, keep)
  local over = redis.call('ZCARD', P .. 'rt:feed') - keep
  while over > 0 do  -- the oldest records, a thousand a call (unpack's stack is bounded)
    local n = math.min(over, 1000)
    redis.call('ZREM', P .. 'rt:feed', unpack(redis.call('ZRANGE', P .. 'rt:feed', 0, n - 1)))
    over = over - n
  end
end
local function entry_changed(P, name, version, keep)
  local seq = tonumber(redis.call('GET', P .. 'rt:seq') or '0') + 1
  redis.call('SET', P .. 'rt:seq', seq)
  redis.call('ZADD', P .. 'rt:feed', seq, seq .. US .. name .. US .. version)
  trim_feed(P, keep)
end
local function entry_json(P, name, meta)
  return '{"version":' .. meta[1] .. ',"definition":' .. redis.call('HGET', P .. 'rt:def', name)
    .. '}'
end
"""

# ARGV P, by, request id ('' none), the audit detail (JSON), feed retention, 'write' or 'check',
# then per entry to a 'write' (name, definition, expected ('' none), audit id), to a 'check'
# (name, expected) -> {meta}... for every entry, in order (the definition is the one sent: a
# repeat of the request stored that one), or {} to a 'check' (which only checks) | {'taken' |
# 'readonly', name, file} | {'mismatch', name, expected, actual version}: the first refusal,
# nothing written. The feed's seq is read and set, and the feed trimmed, once a script.
PUT_ENTRIES = """
local P, by, rid, detail, keep = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local check = ARGV[6] == 'check'
local width, at = check and 2 or 4, check and 1 or 2
local stored = {}
for i = 7, #ARGV, width do
  local name, expected = ARGV[i], ARGV[i + at]
  local text = redis.call('HGET', P .. 'rt:meta', name)
  local m = text and cjson.decode(text)
  if not (m and rid ~= '' and m[6] == rid) then
    local file = redis.call('HGET', P .. 'rt:files', name)
    if file then
      if expected == '' or expected == '0' then return {'taken', name, file} end
      return {'readonly', name, file}
    end
    local actual = m and tonumber(m[1]) or 0
    if expected ~= '' and tonumber(expected) ~= actual then
      return {'mismatch', name, expected, tostring(actual)}
    end
  end
  stored[i] = m or false
end
if check then return {} end
local now, out = now_us(), {}
local head = tonumber(redis.call('GET', P .. 'rt:seq') or '0')
local seq = head
for i = 7, #ARGV, 4 do
  local name, def, m = ARGV[i], ARGV[i + 1], stored[i]
  if m and rid ~= '' and m[6] == rid then
    out[#out + 1] = redis.call('HGET', P .. 'rt:meta', name)
  else
    seq = seq + 1
    local meta, before, action = {seq, now, by, now, by, rid}, 'null', 'entry.add'
    if m then
      meta, action = {m[1] + 1, m[2], m[3], now, by, rid}, 'entry.set'
      before = entry_json(P, name, m)
    end
    local text = cjson.encode(meta)
    redis.call('HSET', P .. 'rt:meta', name, text)
    redis.call('HSET', P .. 'rt:def', name, def)
    redis.call('ZADD', P .. 'rt:names', 0, name)
    redis.call('ZADD', P .. 'rt:feed', seq, seq .. US .. name .. US .. meta[1])
    local after = '{"version":' .. meta[1] .. ',"definition":' .. def .. '}'
    add_audit(P, ARGV[i + 3], now, name, '[' .. cjson.encode(action) .. ',' .. cjson.encode(name)
      .. ',' .. cjson.encode(by) .. ',' .. detail .. ',' .. before .. ',' .. after .. ',""]')
    out[#out + 1] = text
  end
end
if seq > head then
  redis.call('SET', P .. 'rt:seq', seq)
  trim_feed(P, keep)
end
return out
"""

# ARGV P, name, by, expected ('' none), audit id, the audit detail (JSON), feed retention
# -> {'ok', meta, definition} | {'readonly', file} | {'unknown'} | {'mismatch', actual version}
REMOVE_ENTRY = """
local P, name, by, expected = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local file = redis.call('HGET', P .. 'rt:files', name)
if file then return {'readonly', file} end
local stored = redis.call('HGET', P .. 'rt:meta', name)
if not stored then return {'unknown'} end
local m = cjson.decode(stored)
if expected ~= '' and tonumber(expected) ~= tonumber(m[1]) then
  return {'mismatch', tostring(m[1])}
end
local def, before, now = redis.call('HGET', P .. 'rt:def', name), entry_json(P, name, m), now_us()
redis.call('HDEL', P .. 'rt:meta', name)
redis.call('HDEL', P .. 'rt:def', name)
redis.call('ZREM', P .. 'rt:names', name)
entry_changed(P, name, '', tonumber(ARGV[7]))
add_audit(P, ARGV[5], now, name, '["entry.remove",' .. cjson.encode(name) .. ','
  .. cjson.encode(by) .. ',' .. ARGV[6] .. ',' .. before .. ',null,""]')
return {'ok', stored, def}
"""

# ARGV P, after ('' from the first), limit -> {name, meta, definition}... (one consistent page)
LIST_ENTRIES = """
local P = ARGV[1]
local low = ARGV[2] == '' and '-' or '(' .. ARGV[2]
local names = redis.call('ZRANGE', P .. 'rt:names', low, '+', 'BYLEX', 'LIMIT', 0, ARGV[3])
local out = {}
for _, name in ipairs(names) do
  out[#out + 1] = name
  out[#out + 1] = redis.call('HGET', P .. 'rt:meta', name)
  out[#out + 1] = redis.call('HGET', P .. 'rt:def', name)
end
return out
"""

# ARGV P, name -> {meta, definition} (false each when there is none)
GET_ENTRY = """
local P, name = ARGV[1], ARGV[2]
return {redis.call('HGET', P .. 'rt:meta', name), redis.call('HGET', P .. 'rt:def', name)}
"""

# ARGV P, name... -> {meta, definition}... in the order of the names (false each when there is
# none): HMGET's, a name at a time (unpack's stack is bounded)
GET_ENTRIES = """
local P, out = ARGV[1], {}
for i = 2, #ARGV do
  out[#out + 1] = redis.call('HGET', P .. 'rt:meta', ARGV[i])
  out[#out + 1] = redis.call('HGET', P .. 'rt:def', ARGV[i])
end
return out
"""

# ARGV P, cursor -> {head, oldest seq ('' none), record...}
ENTRY_CHANGES = """
local P = ARGV[1]
local head = redis.call('GET', P .. 'rt:seq') or '0'
local first = redis.call('ZRANGE', P .. 'rt:feed', 0, 0, 'WITHSCORES')
local out = {head, first[2] or ''}
if ARGV[2] ~= '' then
  local records = redis.call('ZRANGE', P .. 'rt:feed', '(' .. ARGV[2], '+inf', 'BYSCORE', 'LIMIT',
    0, ARGV[3])
  for _, r in ipairs(records) do out[#out + 1] = r end
end
return out
"""

# KEYS lease; ARGV token, epoch, P, (name, file)... -> {colliding name...}
REGISTER_FILES = """
local lost = check_lease(KEYS[1], ARGV[1], ARGV[2])
if lost then return lost end
local P = ARGV[3]
local colliding = {}
for i = 4, #ARGV, 2 do
  if redis.call('HGET', P .. 'rt:meta', ARGV[i]) then
    colliding[#colliding + 1] = ARGV[i]
  end
end
if #colliding > 0 then return colliding end
redis.call('DEL', P .. 'rt:files')
for i = 4, #ARGV, 2000 do
  redis.call('HSET', P .. 'rt:files', unpack(ARGV, i, math.min(i + 1999, #ARGV)))
end
return colliding
"""

# ARGV P, feed retention, (name, meta, definition)... -> how many were added
IMPORT_ENTRIES = """
local P, keep, added = ARGV[1], tonumber(ARGV[2]), 0
for i = 3, #ARGV, 3 do
  local name = ARGV[i]
  if not redis.call('HGET', P .. 'rt:meta', name) then
    local version = cjson.decode(ARGV[i + 1])[1]
    if tonumber(redis.call('GET', P .. 'rt:seq') or '0') < version then
      redis.call('SET', P .. 'rt:seq', version)  -- no later entry takes its version
    end
    redis.call('HSET', P .. 'rt:meta', name, ARGV[i + 1])
    redis.call('HSET', P .. 'rt:def', name, ARGV[i + 2])
    redis.call('ZADD', P .. 'rt:names', 0, name)
    entry_changed(P, name, version, keep)
    added = added + 1
  end
end
return added
"""

ENTRIES_SCRIPTS = {
    "put_entries": PUT_ENTRIES,
    "remove_entry": REMOVE_ENTRY,
    "get_entry": GET_ENTRY,
    "get_entries": GET_ENTRIES,
    "list_entries": LIST_ENTRIES,
    "entry_changes": ENTRY_CHANGES,
    "import_entries": IMPORT_ENTRIES,
}
