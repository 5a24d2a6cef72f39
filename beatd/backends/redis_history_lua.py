"""The run history's Lua (beatd.backends.redis_history has the keys): `HISTORY`, the helpers
the commit, claim and settling scripts call to write their record in their own atomic step,
and the scripts of the `RunHistory` role.

Every history helper takes `NS`, the key prefix ("beatd:"), or '' when the backend was opened
with `history=False`: then it writes nothing. A run's record is the hash NS .. 'h:run:' .. id:
  p      JSON [entry, slot_us, due_us, kind, celery "1"/"0", published_us, node, epoch]
  n      how many attempts (absent: none yet)
  1..n   JSON [consumer, host, pid, start_us, end_us, outcome, reason, error type, error]
         ('' for what is not known or not yet: an open attempt has end_us '')
  r, o   received_us (Celery's task-received), overdue_us
All values are strings: microseconds as decimal digits, exact (Lua's numbers are doubles, and
cjson would print them to 14 digits). A record that does not decode is left alone, never an
error: a script must not fail after a queue write it cannot take back. For the same reason the
writes use only commands the ACL line of beatd before the history allowed (EXISTS and HGET
before HSET, never HSETNX): an upgrade that keeps the old line loses no run.
"""

from __future__ import annotations

HISTORY = """
local FINAL = {succeeded = true, failed = true, expired = true, dead_lettered = true}
local FAILED_FINALLY = {failed = true, dead_lettered = true}
local function now_us()
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2]))
end
local function decoded(text)
  if not text then return nil end
  local ok, v = pcall(cjson.decode, text)
  if ok and type(v) == 'table' then return v end
  return nil
end
-- the run's attempt count, and its last attempt if that is still open
local function open_attempt(key)
  local n = tonumber(redis.call('HGET', key, 'n') or '0') or 0
  if n == 0 then return 0, nil end
  local a = decoded(redis.call('HGET', key, tostring(n)))
  if a and a[5] == '' then return n, a end
  return n, nil
end
-- the entry's summary: JSON [status, finished_us, duration_us, success_us, failure_us, failures]
local function summarize(NS, key, a)
  local p = decoded(redis.call('HGET', key, 'p'))
  if not p then return end
  local skey = NS .. 'h:summary'
  local s = decoded(redis.call('HGET', skey, p[1])) or {'', '0', '', '', '', '0'}
  if tonumber(a[5]) < tonumber(s[2]) then return end  -- a newer run's end is kept
  s[1], s[2] = a[6], a[5]
  s[3] = string.format('%d', tonumber(a[5]) - tonumber(a[4]))
  if a[6] == 'succeeded' then
    s[4], s[6] = a[5], '0'
  elseif FAILED_FINALLY[a[6]] then
    s[5], s[6] = a[5], string.format('%d', (tonumber(s[6]) or 0) + 1)
  end
  redis.call('HSET', skey, p[1], cjson.encode(s))
end
local function end_attempt(NS, key, n, a, outcome, reason, error_type, err, at)
  a[5], a[6], a[7], a[8], a[9] = at, outcome, reason, error_type, err
  redis.call('HSET', key, tostring(n), cjson.encode(a))
  if FINAL[outcome] then summarize(NS, key, a) end
end
-- a new attempt; a previous one still open ends `lost`. The caller checked the record exists
local function start_attempt(NS, key, consumer, host, pid, at)
  local n, a = open_attempt(key)
  if a then end_attempt(NS, key, n, a, 'lost', '', '', '', at) end
  n = n + 1
  local a = {consumer, host, pid, at, '', '', '', '', ''}
  redis.call('HSET', key, 'n', n, tostring(n), cjson.encode(a))
end
local function claimed(NS, id, consumer, host, pid)
  if NS == '' or type(id) ~= 'string' then return end
  local key = NS .. 'h:run:' .. id
  if redis.call('EXISTS', key) == 1 then start_attempt(NS, key, consumer, host, pid, now_us()) end
end
-- ARGV[i ..] NS, run id, outcome, reason, error type, error: end the run's open attempt now
local function settled(i)
  local NS = ARGV[i] or ''  -- none: a caller that writes no history
  if NS == '' then return end
  local key = NS .. 'h:run:' .. ARGV[i + 1]
  local n, a = open_attempt(key)
  if a then
    end_attempt(NS, key, n, a, ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], now_us())
  end
end
"""

# what the commit script calls per message (`prefix`: p's JSON up to its published time, made by
# the client) and per missed-slot item of an applied write
COMMIT_HISTORY = """
local function published(NS, entry, id, prefix, celery, at, node, epoch)
  local key = NS .. 'h:run:' .. id
  local p = prefix .. (celery and '"1","' or '"0","') .. at .. '",' .. node .. ',"' .. epoch .. '"]'
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'p', p)
    redis.call('ZADD', NS .. 'h:runs', at, id)
    redis.call('ZADD', NS .. 'h:entry:' .. entry, at, id)
  end
end
local function missed_slots(NS, entry, reason, first, last, total, at, node, epoch)
  local field = entry .. '\\31' .. reason .. '\\31' .. first
  local value = cjson.encode({entry, reason, first, last, total, at, cjson.decode(node), epoch, ''})
  if not redis.call('HGET', NS .. 'h:missed', field) then
    redis.call('HSET', NS .. 'h:missed', field, value)
    redis.call('ZADD', NS .. 'h:missed-at', at, field)
  end
end
"""

# ARGV NS, run id, at_us -> 1 marked, 0 not held, finished or marked already
MARK_OVERDUE = """
local key = ARGV[1] .. 'h:run:' .. ARGV[2]
local held = redis.call('HMGET', key, 'p', 'o')
if not held[1] or held[2] then return 0 end
local n, a = open_attempt(key)
if n > 0 and not a then
  local last = decoded(redis.call('HGET', key, tostring(n)))
  if last and FINAL[last[6]] then return 0 end
end
redis.call('HSET', key, 'o', ARGV[3])
return 1
"""

# ARGV NS, missed field (entry, reason, first_us joined by \\31), at_us -> 1 marked, 0 not
MARK_MISSED_OVERDUE = """
local key = ARGV[1] .. 'h:missed'
local m = decoded(redis.call('HGET', key, ARGV[2]))
if not m or m[9] ~= '' then return 0 end
m[9] = ARGV[3]
redis.call('HSET', key, ARGV[2], cjson.encode(m))
return 1
"""

# ARGV NS, run id, at_us -> 1 recorded, 0 not held or received already
RUN_RECEIVED = """
local key = ARGV[1] .. 'h:run:' .. ARGV[2]
local held = redis.call('HMGET', key, 'p', 'r')
if not held[1] or held[2] then return 0 end
redis.call('HSET', key, 'r', ARGV[3])
return 1
"""

# ARGV NS, run id, consumer, host, pid ('' for none), at_us -> 1 started, 0 not held or a repeat
ATTEMPT_STARTED = """
local key = ARGV[1] .. 'h:run:' .. ARGV[2]
if redis.call('EXISTS', key) == 0 then return 0 end
local _, a = open_attempt(key)
if a and a[1] == ARGV[3] and a[4] == ARGV[6] then return 0 end
start_attempt(ARGV[1], key, ARGV[3], ARGV[4], ARGV[5], ARGV[6])
return 1
"""

# ARGV NS, run id, outcome, reason, error type, error, at_us -> 1 ended, 0 not held or a repeat
# (the last attempt already ended so at that time); with no attempt open one starts at `at`
ATTEMPT_ENDED = """
local NS, key, at = ARGV[1], ARGV[1] .. 'h:run:' .. ARGV[2], ARGV[7]
if redis.call('EXISTS', key) == 0 then return 0 end
local n, a = open_attempt(key)
if not a then
  local last = n > 0 and decoded(redis.call('HGET', key, tostring(n)))
  if last and last[5] == at and last[6] == ARGV[3] then return 0 end
  start_attempt(NS, key, '', '', '', at)
  n, a = open_attempt(key)
end
end_attempt(NS, key, n, a, ARGV[3], ARGV[4], ARGV[5], ARGV[6], at)
return 1
"""

# ARGV NS, max_age_us, max_records, limit, per_entry, whole ("1": age and count too, "0":
# per entry only), entry... -> how many records were deleted (at most limit)
TRIM = """
local NS, limit, per_entry = ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[5])
local runs, gone = NS .. 'h:runs', 0
local function drop(id)
  local key = NS .. 'h:run:' .. id
  local p = decoded(redis.call('HGET', key, 'p'))
  if p then redis.call('ZREM', NS .. 'h:entry:' .. p[1], id) end
  redis.call('DEL', key)
  redis.call('ZREM', runs, id)
  gone = gone + 1
end
local function oldest(index, count)
  if count <= 0 then return {} end
  return redis.call('ZRANGE', index, 0, count - 1)
end
if ARGV[6] == '1' then
  local t = redis.call('TIME')
  local cutoff = string.format('(%d', tonumber(t[1]) * 1000000 + tonumber(t[2]) - tonumber(ARGV[2]))
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', runs, '-inf', cutoff, 'LIMIT', 0, limit)) do
    drop(id)
  end
  local excess = redis.call('ZCARD', runs) - tonumber(ARGV[3])
  for _, id in ipairs(oldest(runs, math.min(excess, limit - gone))) do drop(id) end
  local missed, at = NS .. 'h:missed', NS .. 'h:missed-at'
  local function forget(field)
    redis.call('HDEL', missed, field)
    redis.call('ZREM', at, field)
    gone = gone + 1
  end
  if gone < limit then
    local aged = redis.call('ZRANGEBYSCORE', at, '-inf', cutoff, 'LIMIT', 0, limit - gone)
    for _, field in ipairs(aged) do forget(field) end
  end
  excess = redis.call('ZCARD', at) - tonumber(ARGV[3])
  for _, field in ipairs(oldest(at, math.min(excess, limit - gone))) do forget(field) end
end
for i = 7, #ARGV do
  if gone >= limit then break end
  local index = NS .. 'h:entry:' .. ARGV[i]
  local over = redis.call('ZCARD', index) - per_entry
  for _, id in ipairs(oldest(index, math.min(over, limit - gone))) do drop(id) end
end
return gone
"""

# ARGV NS, JSON [[id, {field: value}]...] of runs, JSON [[field, value, recorded_us]...] of
# missed records, JSON [[entry, summary]...] -> how many run and missed records were added
IMPORT = """
local NS = ARGV[1]
local added = 0
for _, run in ipairs(cjson.decode(ARGV[2])) do
  local id, f = run[1], run[2]
  local key = NS .. 'h:run:' .. id
  if redis.call('EXISTS', key) == 0 then
    for name, value in pairs(f) do redis.call('HSET', key, name, value) end
    local p = cjson.decode(f['p'])
    redis.call('ZADD', NS .. 'h:runs', p[6], id)
    redis.call('ZADD', NS .. 'h:entry:' .. p[1], p[6], id)
    added = added + 1
  end
end
for _, m in ipairs(cjson.decode(ARGV[3])) do
  if not redis.call('HGET', NS .. 'h:missed', m[1]) then
    redis.call('HSET', NS .. 'h:missed', m[1], m[2])
    redis.call('ZADD', NS .. 'h:missed-at', m[3], m[1])
    added = added + 1
  end
end
for _, s in ipairs(cjson.decode(ARGV[4])) do
  local held = decoded(redis.call('HGET', NS .. 'h:summary', s[1]))
  local new = cjson.decode(s[2])
  if not held or tonumber(new[2]) > tonumber(held[2]) then
    redis.call('HSET', NS .. 'h:summary', s[1], s[2])
  end
end
return added
"""

# ARGV NS, run id (of the claimed message), ..., per `settled`; KEYS stream; ARGV entry id,
# consumer, count, then `settled`'s from 4 -> 1 recorded, 0 not ours
NOTE_ENDING = """
if not owns(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
settled(4)
return 1
"""

HISTORY_SCRIPTS = {
    "mark_overdue": MARK_OVERDUE,
    "mark_missed_overdue": MARK_MISSED_OVERDUE,
    "run_received": RUN_RECEIVED,
    "attempt_started": ATTEMPT_STARTED,
    "attempt_ended": ATTEMPT_ENDED,
    "trim": TRIM,
    "import_history": IMPORT,
    "note_ending": NOTE_ENDING,
}
