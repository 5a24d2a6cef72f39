"""The run history's Lua (beatd.backends.redis_history has the keys): `HISTORY`, the helpers
the commit, claim and settling scripts call to write their record in their own atomic step,
and the scripts of the `RunHistory` role.

Every history helper takes `NS`, the key prefix ("beatd:"), or '' when the backend was opened
with `history=False`: then it writes nothing. A run's record is the hash NS .. 'h:run:' .. id,
each of its values short enough (64 bytes, Redis's hash-max-listpack-value) for the compact
listpack encoding unless an entry or node name or an error is long:
  p      JSON [slot_us, due - slot, kind, celery "1"/"0", epoch], written whole by the client
         (the published time is the record's score in the indexes: the commit script writes
         nothing per run but its HSET and its entry's ZADD)
  e, N   the entry, the node that published it
  n      how many attempts (absent: none yet)
  1..n   attempt i: JSON [start - slot, end - slot, outcome, reason] ('' for what is not
         known or not yet: an open attempt has end '')
  ci, hi its consumer; JSON [host, pid] (a worker's consumer name holds its host name, so
         together they would pass 64 bytes)
  xi     JSON [error type, error], for an attempt that ended with one
  r, o   received_us (Celery's task-received), overdue_us
All values are strings, times microseconds as decimal digits (offsets from the slot keep them
short), exact (Lua's numbers are doubles, and
cjson would print them to 14 digits). A record that does not decode is left alone, never an
error: a script must not fail after a queue write it cannot take back. For the same reason the
writes use only commands the ACL line of beatd before the history allowed (EXISTS and HGET
before HSET, never HSETNX): an upgrade that keeps the old line loses no run.
"""

from __future__ import annotations

from beatd.history import PASS_OVER

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
-- a held run's record: {key, n (attempts), slot (us, a number), entry}; nil when not held. The
-- slot is read from p's head with a pattern, not cjson: the claim and settling scripts call this
local function held_run(NS, id)
  local key = NS .. 'h:run:' .. id
  local h = redis.call('HMGET', key, 'n', 'p', 'e')
  local slot = h[2] and tonumber(string.match(h[2], '^%["(%-?%d+)"'))
  if not slot then return nil end
  return {NS = NS, key = key, n = tonumber(h[1] or '0') or 0, slot = slot, entry = h[3]}
end
local function off(run, at) return string.format('%d', tonumber(at) - run.slot) end
local function abs(run, o) return string.format('%d', run.slot + tonumber(o)) end
local function attempt(run, i) return decoded(redis.call('HGET', run.key, tostring(i))) end
local function open_attempt(run)  -- the last attempt, if it is still open
  if run.n == 0 then return nil end
  local a = attempt(run, run.n)
  if a and a[2] == '' then return a end
  return nil
end
-- the entry's summary: JSON [status, finished_us, duration_us, success_us, failure_us, failures]
local function summarize(run, a)
  local entry = run.entry
  if not entry then return end
  local skey = run.NS .. 'h:summary'
  local s = decoded(redis.call('HGET', skey, entry)) or {'', '0', '', '', '', '0'}
  local finished = abs(run, a[2])
  if tonumber(finished) < tonumber(s[2]) then return end  -- a newer run's end is kept
  s[1], s[2] = a[3], finished
  s[3] = string.format('%d', tonumber(a[2]) - tonumber(a[1]))
  if a[3] == 'succeeded' then
    s[4], s[6] = finished, '0'
  elseif FAILED_FINALLY[a[3]] then
    s[5], s[6] = finished, string.format('%d', (tonumber(s[6]) or 0) + 1)
  end
  redis.call('HSET', skey, entry, cjson.encode(s))
end
local function end_attempt(run, a, outcome, reason, error_type, err, at)
  a[2], a[3], a[4] = off(run, at), outcome, reason
  local i = tostring(run.n)
  if error_type == '' and err == '' then
    redis.call('HSET', run.key, i, cjson.encode(a))
  else
    redis.call('HSET', run.key, i, cjson.encode(a), 'x' .. i, cjson.encode({error_type, err}))
  end
  if FINAL[outcome] then summarize(run, a) end
end
-- a new attempt; a previous one still open ends `lost`
local function start_attempt(run, consumer, host, pid, at)
  local a = open_attempt(run)
  if a then end_attempt(run, a, 'lost', '', '', '', at) end
  run.n = run.n + 1
  local i = tostring(run.n)
  local new, where = cjson.encode({off(run, at), '', '', ''}), cjson.encode({host, pid})
  redis.call('HSET', run.key, 'n', i, i, new, 'c' .. i, consumer, 'h' .. i, where)
end
local function claimed(NS, id, consumer, host, pid)
  if NS == '' or type(id) ~= 'string' then return end
  local run = held_run(NS, id)
  if run then start_attempt(run, consumer, host, pid, now_us()) end
end
-- ARGV[i ..] NS, run id, outcome, reason, error type, error: end the run's open attempt now
local function settled(i)
  local NS = ARGV[i] or ''  -- none: a caller that writes no history
  if NS == '' then return end
  local run = held_run(NS, ARGV[i + 1])
  local a = run and open_attempt(run)
  if a then end_attempt(run, a, ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], now_us()) end
end
"""

# what the commit script calls once with its new records (a flat list of (id, entry, p)) and
# per missed-slot item of an applied write; every argument a string (times in microseconds)
COMMIT_HISTORY = """
-- the commit's new records, `runs` a flat list of (id, entry, p) of the messages of applied
-- writes: one variadic ZADD NX of the global index per chunk, scored `at`, says how many ids are
-- new; when fewer than asked (a repeated commit, an id published before: it keeps its record),
-- the new ones are those scored `at` (no earlier script ran in the same microsecond). Then per
-- new run one HSET of its record, whose p the client wrote whole, and one ZADD of its entry's
-- index
local function published(NS, runs, at, node)
  local index, seen = NS .. 'h:runs', {}
  for first = 1, #runs, 1500 do
    local chunk, add = {}, {}
    for i = first, math.min(first + 1499, #runs), 3 do
      if not seen[runs[i]] then
        seen[runs[i]] = true
        chunk[#chunk + 1] = i
        add[#add + 1] = at
        add[#add + 1] = runs[i]
      end
    end
    local new
    if #chunk > 0 and redis.call('ZADD', index, 'NX', unpack(add)) < #chunk then
      new = {}
      for _, id in ipairs(redis.call('ZRANGEBYSCORE', index, at, at)) do new[id] = true end
    end
    for _, i in ipairs(chunk) do
      local id, entry = runs[i], runs[i + 1]
      if not new or new[id] then
        redis.call('HSET', NS .. 'h:run:' .. id, 'p', runs[i + 2], 'e', entry, 'N', node)
        redis.call('ZADD', NS .. 'h:entry:' .. entry, at, id)
      end
    end
  end
end
local function missed_slots(NS, entry, reason, first, last, total, at, node, epoch)
  local field = entry .. '\\31' .. reason .. '\\31' .. first
  local value = cjson.encode({entry, reason, first, last, total, at, node, epoch, ''})
  if not redis.call('HGET', NS .. 'h:missed', field) then
    redis.call('HSET', NS .. 'h:missed', field, value)
    redis.call('ZADD', NS .. 'h:missed-at', at, field)
  end
end
"""

# ARGV NS, run id, at_us -> 1 marked, 0 not held, finished by at_us or marked already (a run
# that finished after at_us is marked: it finished while no leader watched its deadline)
MARK_OVERDUE = """
local run = held_run(ARGV[1], ARGV[2])
if not run or redis.call('HGET', run.key, 'o') then return 0 end
local last = run.n > 0 and attempt(run, run.n)
if last and FINAL[last[3]] and run.slot + tonumber(last[2]) <= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', run.key, 'o', ARGV[3])
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
local run = held_run(ARGV[1], ARGV[2])
if not run then return 0 end
local a = open_attempt(run)
if a and a[1] == off(run, ARGV[6]) and redis.call('HGET', run.key, 'c' .. run.n) == ARGV[3] then
  return 0
end
start_attempt(run, ARGV[3], ARGV[4], ARGV[5], ARGV[6])
return 1
"""

# ARGV NS, run id, outcome, reason, error type, error, at_us -> 1 ended, 0 not held or a repeat
# (the last attempt already ended so at that time); with no attempt open one starts at `at`
ATTEMPT_ENDED = """
if FINAL[ARGV[3]] then run_final(ARGV[1], ARGV[1], ARGV[2]) end  -- redis_controls_lua
local run, at = held_run(ARGV[1], ARGV[2]), ARGV[7]
if not run then return 0 end
local a = open_attempt(run)
if not a then
  local last = run.n > 0 and attempt(run, run.n)
  if last and last[2] == off(run, at) and last[3] == ARGV[3] then return 0 end
  start_attempt(run, '', '', '', at)
  a = open_attempt(run)
end
end_attempt(run, a, ARGV[3], ARGV[4], ARGV[5], ARGV[6], at)
return 1
"""

# ARGV NS, max_age_us, max_records, limit, per_entry, whole ("1": age and count too, "0":
# per entry only), entry... -> how many records were deleted (at most limit). The caps pass over
# an unfinished run (its last attempt's outcome not final; a record that does not decode is not
# one): they read the record of each run past them, the oldest first; only the age deletes it.
TRIM = (
    f"local PASS_OVER = {PASS_OVER}\n"
    + """
local NS, limit, per_entry = ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[5])
local runs, gone = NS .. 'h:runs', 0
local trimmed = NS .. 'h:trimmed'
local function drop(id)
  local key = NS .. 'h:run:' .. id
  local h = redis.call('HMGET', key, 'e', 'p')
  local entry = h[1]
  if entry then redis.call('ZREM', NS .. 'h:entry:' .. entry, id) end
  -- the entry's newest slot whose record went (RunHistory.trimmed_up_to): backfill refuses it
  local p = entry and decoded(h[2])
  if p and p[3] ~= 'manual' then
    local was = redis.call('HGET', trimmed, entry)
    if not was or tonumber(was) < tonumber(p[1]) then redis.call('HSET', trimmed, entry, p[1]) end
  end
  redis.call('DEL', key)
  redis.call('ZREM', runs, id)
  gone = gone + 1
end
local function oldest(index, count)
  if count <= 0 then return {} end
  return redis.call('ZRANGE', index, 0, count - 1)
end
local function unfinished(id)
  local run = held_run(NS, id)
  if not run then return false end
  if run.n == 0 then
    -- a Celery run no task event reached (unknown) may never finish (workers without -E):
    -- the caps take it like a finished one
    local h = redis.call('HMGET', run.key, 'p', 'r')
    local p = decoded(h[1])
    return not (p and p[4] == '1' and not h[2])
  end
  local last = attempt(run, run.n)
  return not (last and FINAL[last[3]])
end
-- drop the finished runs of `index` past its newest `keep`, the oldest first, a page at a time
-- (the unfinished ones passed over stay at the head: the next page starts after them), passing
-- over at most PASS_OVER unfinished ones
local function past_cap(index, keep)
  local kept = 0
  while gone < limit and kept < PASS_OVER do
    local over = redis.call('ZCARD', index) - keep - kept
    if over <= 0 then return end
    for _, id in ipairs(redis.call('ZRANGE', index, kept, kept + math.min(over, 500) - 1)) do
      if gone >= limit or kept >= PASS_OVER then return end
      if unfinished(id) then kept = kept + 1 else drop(id) end
    end
  end
end
if ARGV[6] == '1' then
  local t = redis.call('TIME')
  local cutoff = string.format('(%d', tonumber(t[1]) * 1000000 + tonumber(t[2]) - tonumber(ARGV[2]))
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', runs, '-inf', cutoff, 'LIMIT', 0, limit)) do
    drop(id)
  end
  past_cap(runs, tonumber(ARGV[3]))
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
  local excess = redis.call('ZCARD', at) - tonumber(ARGV[3])
  for _, field in ipairs(oldest(at, math.min(excess, limit - gone))) do forget(field) end
end
for i = 7, #ARGV do
  if gone >= limit then break end
  past_cap(NS .. 'h:entry:' .. ARGV[i], per_entry)
end
return gone
"""
)

# ARGV NS, JSON [[id, {field: value}, published_us]...] of runs, JSON [[field, value,
# recorded_us]...] of missed records, JSON [[entry, summary]...] -> how many run and missed
# records were added
IMPORT = """
local NS = ARGV[1]
local added = 0
for _, run in ipairs(cjson.decode(ARGV[2])) do
  local id, f = run[1], run[2]
  local key = NS .. 'h:run:' .. id
  if redis.call('EXISTS', key) == 0 then
    for name, value in pairs(f) do redis.call('HSET', key, name, value) end
    redis.call('ZADD', NS .. 'h:runs', run[3], id)
    redis.call('ZADD', NS .. 'h:entry:' .. f['e'], run[3], id)
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
  if not held or tonumber(new[2]) >= tonumber(held[2]) then
    redis.call('HSET', NS .. 'h:summary', s[1], s[2])
  end
end
return added
"""

# KEYS stream; ARGV entry id, consumer, count, then `settled`'s from 4 -> 1 recorded, 0 not ours
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
