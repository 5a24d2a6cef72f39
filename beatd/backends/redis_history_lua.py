"""The run history's Lua (beatd.backends.redis_history has the keys): `HISTORY`, the helpers
that read a run's record and its entry's summary into a batch, change them and write them back
once, and the scripts of the `RunHistory` role (redis_history_log_lua has the logs the commit,
claim and settling scripts append to, and the fold that moves them into the records).

Every history helper takes `NS`, the key prefix ("beatd:"), or '' when the backend was opened
with `history=False`: then it writes nothing. A run's record is the hash
NS .. 'h:run:' .. id, each of its values short enough (64 bytes, Redis's
hash-max-listpack-value) for the compact listpack encoding unless an entry or node name or an
error is long:
  p      JSON [slot_us, due - slot, kind, celery "1"/"0", epoch], written whole by the client
         (the published time is the record's score in the indexes)
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
appends to the log are made with pcall (RPUSH is new to the ACL line with the history): a user
left on the older line loses the records, not the runs.
"""

from __future__ import annotations

from beatd.history import PASS_OVER

HISTORY = r"""
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
-- a JSON array of strings: cjson's encoder (C) is several times faster than joining the values
-- in Lua after a pattern search of them for what needs escaping
local arr = cjson.encode
-- A batch: the runs' records and entries' summaries a script reads once, changes in memory and
-- writes back once (`flush`), each hash with one HSET
local function batch(NS) return {NS = NS, runs = {}, order = {}, ends = {}, ended = {}} end
local function slot_of(p) return p and tonumber(string.match(p, '^%["(%-?%d+)"')) end
-- a held run's record: {key, f (its fields), n (attempts), slot (us), entry}; nil when not held
local function held_run(B, id)
  local run = B.runs[id]
  if run == nil then
    local key = B.NS .. 'h:run:' .. id
    local f = fields(redis.call('HGETALL', key))
    run = {key = key, f = f, n = tonumber(f['n'] or '0') or 0, slot = slot_of(f['p']),
      entry = f['e'], dirty = {}, a = {}}
    B.runs[id] = run
    B.order[#B.order + 1] = run
  end
  if not run.slot then return nil end
  return run
end
local function set(run, name, value)
  run.f[name] = value
  run.dirty[name] = true
end
local function off(run, at) return string.format('%d', tonumber(at) - run.slot) end
local function abs(run, o) return string.format('%d', run.slot + tonumber(o)) end
-- attempt i, decoded once (run.a); `put` changes it, flush encodes it
local function attempt(run, i)
  local k = tostring(i)
  local a = run.a[k]
  if a == nil then
    a = decoded(run.f[k]) or false
    run.a[k] = a
  end
  return a or nil
end
local function put(run, i, a)
  run.a[i] = a
  run.dirty[i] = true
end
local function open_attempt(run)  -- the last attempt, if it is still open
  if run.n == 0 then return nil end
  local a = attempt(run, run.n)
  if a and a[2] == '' then return a end
  return nil
end
-- the entry's summary: [status, finished_us, duration_us, success_us, failure_us, failures].
-- A batch notes each final end (`summarize`) and `flush` reads the summaries it changes with
-- one HMGET, applies the ends in the order they came, and writes them with one HSET
local function summarize(B, run, a)
  local entry = run.entry
  if not entry then return end
  local ends = B.ends[entry]
  if not ends then
    ends = {}
    B.ends[entry] = ends
    B.ended[#B.ended + 1] = entry
  end
  ends[#ends + 1] = {abs(run, a[2]), string.format('%d', tonumber(a[2]) - tonumber(a[1])), a[3]}
end
local function summary_ends(s, ends)
  local changed = false
  for _, e in ipairs(ends) do
    local finished = e[1]
    if tonumber(finished) >= tonumber(s[2]) then  -- else a newer run's end is kept
      s[1], s[2], s[3], changed = e[3], finished, e[2], true
      if e[3] == 'succeeded' then
        s[4], s[6] = finished, '0'
      elseif FAILED_FINALLY[e[3]] then
        s[5], s[6] = finished, string.format('%d', (tonumber(s[6]) or 0) + 1)
      end
    end
  end
  return changed
end
local function flush_summaries(B)
  local key = B.NS .. 'h:summary'
  for first = 1, #B.ended, 500 do
    local entries = {unpack(B.ended, first, math.min(first + 499, #B.ended))}
    local held = redis.call('HMGET', key, unpack(entries))
    local sums = {}
    for j, entry in ipairs(entries) do
      local s = decoded(held[j]) or {'', '0', '', '', '', '0'}
      if summary_ends(s, B.ends[entry]) then
        sums[#sums + 1] = entry
        sums[#sums + 1] = arr(s)
      end
    end
    if #sums > 0 then redis.call('HSET', key, unpack(sums)) end
  end
end
local function end_attempt(B, run, a, outcome, reason, error_type, err, at)
  a[2], a[3], a[4] = off(run, at), outcome, reason
  local i = tostring(run.n)
  put(run, i, a)
  if error_type ~= '' or err ~= '' then set(run, 'x' .. i, arr({error_type, err})) end
  if FINAL[outcome] then summarize(B, run, a) end
end
-- a new attempt; a previous one still open ends `lost`
local function start_attempt(B, run, consumer, host, pid, at)
  local a = open_attempt(run)
  if a then end_attempt(B, run, a, 'lost', '', '', '', at) end
  run.n = run.n + 1
  local i = tostring(run.n)
  set(run, 'n', i)
  put(run, i, {off(run, at), '', '', ''})
  set(run, 'c' .. i, consumer)
  set(run, 'h' .. i, arr({host, pid}))
end
-- write what the batch changed: each run's hash and new runs' entry index, the summaries
local function flush(B)
  for _, run in ipairs(B.order) do
    local args = {}
    for name in pairs(run.dirty) do
      local a = run.a[name]
      args[#args + 1] = name
      args[#args + 1] = a and arr(a) or run.f[name]
    end
    if #args > 0 then redis.call('HSET', run.key, unpack(args)) end
    if run.at then redis.call('ZADD', B.NS .. 'h:entry:' .. run.entry, run.at, run.id) end
  end
  flush_summaries(B)
  B.runs, B.order, B.ends, B.ended = {}, {}, {}, {}
end
"""

# what the commit script calls once with its messages and their p (its own JSON arguments) and
# the entries it skipped, and per missed-slot item of an applied write; times in microseconds
COMMIT_HISTORY = r"""
local function published(NS, messages, plist, skip, at, node)
  log_published(NS, messages, plist, skip, at, node)
end
local function missed_slots(NS, entry, reason, first, last, total, at, node, epoch)
  local field = entry .. '\31' .. reason .. '\31' .. first
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
if not caught_up(ARGV[1]) then return FOLD_MORE end
local run = held_run(batch(ARGV[1]), ARGV[2])
if not run or run.f['o'] then return 0 end
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
if not caught_up(ARGV[1]) then return FOLD_MORE end
local key = ARGV[1] .. 'h:run:' .. ARGV[2]
local held = redis.call('HMGET', key, 'p', 'r')
if not held[1] or held[2] then return 0 end
redis.call('HSET', key, 'r', ARGV[3])
return 1
"""

# ARGV NS, run id, consumer, host, pid ('' for none), at_us -> 1 started, 0 not held or a repeat
ATTEMPT_STARTED = """
if not caught_up(ARGV[1]) then return FOLD_MORE end
local B = batch(ARGV[1])
local run = held_run(B, ARGV[2])
if not run then return 0 end
local a = open_attempt(run)
if a and a[1] == off(run, ARGV[6]) and run.f['c' .. run.n] == ARGV[3] then return 0 end
start_attempt(B, run, ARGV[3], ARGV[4], ARGV[5], ARGV[6])
flush(B)
return 1
"""

# ARGV NS, run id, outcome, reason, error type, error, at_us -> 1 ended, 0 not held or a repeat
# (the last attempt already ended so at that time); with no attempt open one starts at `at`
ATTEMPT_ENDED = """
if not caught_up(ARGV[1]) then return FOLD_MORE end
if FINAL[ARGV[3]] then run_final(ARGV[1], ARGV[1], ARGV[2]) end  -- redis_controls_lua
local B, at = batch(ARGV[1]), ARGV[7]
local run = held_run(B, ARGV[2])
if not run then return 0 end
local a = open_attempt(run)
if not a then
  local last = run.n > 0 and attempt(run, run.n)
  if last and last[2] == off(run, at) and last[3] == ARGV[3] then return 0 end
  start_attempt(B, run, '', '', '', at)
  a = open_attempt(run)
end
end_attempt(B, run, a, ARGV[3], ARGV[4], ARGV[5], ARGV[6], at)
flush(B)
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
if not caught_up(NS) then return FOLD_MORE end
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
  local run = held_run(batch(NS), id)
  if not run then return false end
  if run.n == 0 then
    -- a Celery run no task event reached (unknown) may never finish (workers without -E):
    -- the caps take it like a finished one
    local p = decoded(run.f['p'])
    return not (p and p[4] == '1' and not run.f['r'])
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
if not caught_up(NS) then return FOLD_MORE end
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
