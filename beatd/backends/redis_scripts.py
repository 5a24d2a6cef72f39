"""The Lua scripts behind the Redis backend: each one is a single atomic step on the server.

`PRELUDE` (helpers shared by every script) is prepended to each; scripts are sent by SHA and
loaded on a NOSCRIPT reply. Every script that adds a run to a queue's stream publishes an empty
message on the channel named like the stream, which idle workers wait on (no polling).

A script cannot take back a write, so nothing that a working setup may refuse runs after one:
the wake-up PUBLISH, which an ACL without the channels refuses, is best effort (`redis.pcall`).
(A user lacking a data command, or a key of another type in the namespace, can still stop a
script midway: a broken setup, named by the error.)
"""

from __future__ import annotations

import hashlib

from beatd.backends.redis_controls_lua import CONTROLS, CONTROLS_SCRIPTS
from beatd.backends.redis_entries_lua import ENTRIES, ENTRIES_SCRIPTS, REGISTER_FILES
from beatd.backends.redis_history_log_lua import FOLD, HISTORY_LOG
from beatd.backends.redis_history_lua import COMMIT_HISTORY, HISTORY, HISTORY_SCRIPTS
from beatd.backends.redis_nodes_lua import NODES_SCRIPTS

GROUP = "workers"
LEASE_LOST = "LEASELOST"
FORMAT_NEWER = "FORMATNEWER"  # the error reply of a take that finds a newer format

# The persisted-state format is the value of `beatd:format-version`. Beatd before format versions
# never writes that key, but SETs the older marker `beatd:format` to "1" at every fresh take (the
# marker says only that beatd's data is there, beatd.dataloss), so the version survives an old
# leader and nothing is upgraded twice. Without the version key the marker's value is the format
# (1: beatd before versions; none: a fresh namespace, written in the current format).
# MIGRATIONS[n] is Lua that upgrades format n + 1 to n + 2, run by ACQUIRE under the lease it
# takes, atomically with setting the new version; `NS` is the key prefix ("beatd:"). A later
# change of the keys appends one (docs/design.md).
MIGRATIONS: tuple[str, ...] = (
    "-- format 1 to 2: the same keys; only the version is new",
    "-- format 2 to 3: the run history's keys (NS .. 'h:*'), the operator controls' "
    "(NS .. 'ctl:*'), the runtime entries' (NS .. 'rt:*') and the dead letters' counts per "
    "queue (NS .. 'dead-count') are new; nothing to convert here: the counts are made by the "
    "recount that follows in every fresh take",
)
FORMAT_VERSION = 1 + len(MIGRATIONS)
FORMAT = str(FORMAT_VERSION)  # the value of the format-version key
MARKER = "1"  # the value of the marker, as every beatd writes it

PRELUDE = f"""
local G = '{GROUP}'
local FORMAT = '{FORMAT}'
local MARKER = '{MARKER}'
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function ensure_stream(key)
  if redis.call('EXISTS', key) == 0 then
    redis.call('XGROUP', 'CREATE', key, G, '0', 'MKSTREAM')
  end
end
local function fields(list)
  local f = {{}}
  for j = 1, #list, 2 do f[list[j]] = list[j + 1] end
  return f
end
local function owns(key, id, consumer, count)
  local p = redis.call('XPENDING', key, G, id, id, 1)
  return #p == 1 and p[1][2] == consumer and p[1][4] == tonumber(count)
end
-- a run was added to a queue's stream: wake the workers waiting on it (once per script call).
-- Best effort, so pcall: a refused PUBLISH (an ACL without the channel) must not abort a script
-- after its writes; a worker that misses the wake-up claims after its visibility timeout
local woken = {{}}
local function wake(key)
  if not woken[key] then
    woken[key] = true
    redis.pcall('PUBLISH', key, '')
  end
end
local function entry_fields(key, id)
  local r = redis.call('XRANGE', key, id, id)
  if #r == 0 then return nil end
  return fields(r[1][2])
end
-- the dead letters' count of a queue (a hash field of NS .. 'dead-count') moved by `by`; a
-- queue whose count falls to nothing loses its field. HGET/HSET, not HINCRBY: beatd's ACL line
local function count_dead(key, queue, by)
  local n = (tonumber(redis.call('HGET', key, queue)) or 0) + by
  if n > 0 then redis.call('HSET', key, queue, n) else redis.call('HDEL', key, queue) end
end
"""

# The dead letters' counts per queue, made again from the stream when their sum is not its length
# (a namespace of format 2, or a dead letter an older beatd's worker wrote without counting): a
# pass over every letter, in a fresh take only; when they agree, an HGETALL and an XLEN
RECOUNT_DEAD = """
local function recount_dead(dead, counts)
  local sum = 0
  local held = redis.call('HGETALL', counts)
  for j = 2, #held, 2 do sum = sum + (tonumber(held[j]) or 0) end
  if sum == redis.call('XLEN', dead) then return end
  local by = {}
  local cursor = '-'
  repeat
    local page = redis.call('XRANGE', dead, cursor, '+', 'COUNT', 1000)
    for _, entry in ipairs(page) do
      local q = fields(entry[2])['queue'] or ''
      by[q] = (by[q] or 0) + 1
      cursor = '(' .. entry[1]
    end
  until #page < 1000
  redis.call('DEL', counts)
  for q, n in pairs(by) do redis.call('HSET', counts, q, n) end
end
"""

# KEYS lease, epoch, format marker, format version; ARGV node, token, ttl_ms, config, held token
# ('' for none), held epoch, min epoch, key prefix -> {token, epoch, format found} or nil, or
# the error FORMATNEWER <format> when the data is in a newer format than this beatd knows. A
# held lease is renewed only for its own token and epoch, whatever node name asks; a fresh take
# gets epoch max(last, min epoch) + 1, upgrades an older format (MIGRATIONS, each once: the
# version key records it) and (re)writes the version and the marker
ACQUIRE = (
    RECOUNT_DEAD
    + """
local found = tonumber(redis.call('GET', KEYS[4]) or redis.call('GET', KEYS[3]) or FORMAT) or 0
if found > tonumber(FORMAT) then return redis.error_reply('"""
    + FORMAT_NEWER
    + """ ' .. found) end
local held = redis.call('HMGET', KEYS[1], 'token', 'epoch')
if held[1] then
  if held[1] ~= ARGV[5] or held[2] ~= ARGV[6] then return false end
  redis.call('HSET', KEYS[1], 'config', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {held[1], held[2]}
end
local NS = ARGV[8]
"""
    + "\n".join(
        f"if found < {n + 2} then\n{migration}\nend" for n, migration in enumerate(MIGRATIONS)
    )
    + """
recount_dead(NS .. 'dead', NS .. 'dead-count')
local last = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local epoch = string.format('%d', math.max(last, tonumber(ARGV[7])) + 1)
redis.call('SET', KEYS[2], epoch)
redis.call('SET', KEYS[3], MARKER)
redis.call('SET', KEYS[4], FORMAT)
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'token', ARGV[2], 'epoch', epoch, 'config', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {ARGV[2], epoch, found}
"""
)

# KEYS lease; ARGV token, epoch, ttl_ms -> 1 extended, 0 not held
RENEW = """
local held = redis.call('HMGET', KEYS[1], 'token', 'epoch')
if held[1] ~= ARGV[1] or held[2] ~= ARGV[2] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS lease; ARGV token -> 1 released, 0 not held
RELEASE = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""

CHECK_LEASE = f"""
local function check_lease(key, token, epoch)
  local held = redis.call('HMGET', key, 'token', 'epoch', 'node')
  if held[1] == token and held[2] == epoch then return nil end
  local now = held[3] and ('node ' .. held[3] .. ' holds epoch ' .. held[2]) or 'nobody holds it'
  return redis.error_reply('{LEASE_LOST} ' .. now)
end
"""

# KEYS lease, state, queues, stream..., list...
# ARGV token, epoch, then three JSON arrays (a few big arguments parse far faster than
# thousands of small ones, on both sides): the queue names; the writes, flat, as
# (entry, expected, state)... where expected is '' for "no state yet", else the prefix
# '[<last_slot_us>,' of the stored state; the messages, flat, as (k, entry, id)... where k
# indexes KEYS; then the number of streams, and the messages' bodies joined by U+001E (no JSON
# text holds that character unescaped, so they need no escaping). KEYS[4 .. 3 + streams] are
# beatd's streams (XADD); the keys after them are kombu's lists of Celery queues (LPUSH, as
# kombu's Redis transport does); then the history's: NS ('' for none), the node, a JSON array
# of each message's record's p (redis_history_lua), '' for a message with no record, and one of
# missed slots as (entry, reason, first_us, last_us, total)...; then the controls'
# (redis_controls_lua: `commit_checks`): the key prefix, a JSON array of the guarded writes
# ('' for none) and one of the messages' due times ('' when the history's p give them)
# -> the rejected entry names; an error reply LEASELOST and nothing written
COMMIT = (
    CHECK_LEASE
    + COMMIT_HISTORY
    + """
local lost = check_lease(KEYS[1], ARGV[1], ARGV[2])
if lost then return lost end
local queues, writes, messages = cjson.decode(ARGV[3]), cjson.decode(ARGV[4]), cjson.decode(ARGV[5])
local rejected, skip = {}, {}
local guards, gnow = commit_checks(ARGV[12], messages, ARGV[10], ARGV[13], ARGV[14], skip, rejected)
for i = 1, #writes, 3 do
  local entry, expected = writes[i], writes[i + 1]
  local current = redis.call('HGET', KEYS[2], entry)
  local ok
  if skip[entry] then
    ok = false
  elseif expected == '' then
    ok = not current
  else
    ok = current and string.sub(current, 1, #expected) == expected
  end
  if ok then
    redis.call('HSET', KEYS[2], entry, writes[i + 2])
  else
    if not skip[entry] then rejected[#rejected + 1] = entry end
    skip[entry] = true
  end
end
local replaced = commit_applied(ARGV[12], messages, guards, skip, gnow)
local last_stream, bodies, at = 3 + tonumber(ARGV[6]), ARGV[7], 1
for k = 4, last_stream do ensure_stream(KEYS[k]) end
for _, queue in ipairs(queues) do redis.call('SADD', KEYS[3], queue) end
local NS, node = ARGV[8] or '', ARGV[9]
if NS ~= '' then
  local now, missed = now_us(), cjson.decode(ARGV[11])
  for i = 1, #missed, 5 do
    if not skip[missed[i]] then
      local m = missed
      missed_slots(NS, m[i], m[i + 1], m[i + 2], m[i + 3], m[i + 4], now, node, ARGV[2])
    end
  end
  for _, r in ipairs(replaced) do  -- held runs a hold replaced (the controls' commit_applied)
    missed_slots(NS, r[1], 'overlap', r[2], r[2], '1', now, node, ARGV[2])
  end
  if #messages > 0 then published(NS, ARGV[5], ARGV[10], skip, now, node) end
end
for i = 1, #messages, 3 do
  local stop = string.find(bodies, '\\30', at, true) or #bodies + 1
  if not skip[messages[i + 1]] then
    local k, body = messages[i], string.sub(bodies, at, stop - 1)
    if k > last_stream then
      redis.call('LPUSH', KEYS[k], body)
    else
      redis.call('XADD', KEYS[k], '*', 'id', messages[i + 2], 'body', body)
      wake(KEYS[k])
    end
  end
  at = stop + 1
end
return rejected
"""
)

# KEYS lease, state; ARGV token, epoch, entry...
FORGET = (
    CHECK_LEASE
    + """
local lost = check_lease(KEYS[1], ARGV[1], ARGV[2])
if lost then return lost end
for i = 3, #ARGV do redis.call('HDEL', KEYS[2], ARGV[i]) end
return 0
"""
)

# KEYS queues, target...; ARGV delay_ms, nqueues, queue..., (k, id, body-or-member)...
# target k is a stream (delay 0) or a delayed zset whose member is [band, id, body, nonce]
ENQUEUE = """
local delay, nqueues = tonumber(ARGV[1]), tonumber(ARGV[2])
for q = 3, 2 + nqueues do redis.call('SADD', KEYS[1], ARGV[q]) end
local ready = now_ms() + delay
for i = 3 + nqueues, #ARGV, 3 do
  local key = KEYS[tonumber(ARGV[i])]
  if delay > 0 then
    redis.call('ZADD', key, ready, ARGV[i + 2])
  else
    ensure_stream(key)
    redis.call('XADD', key, '*', 'id', ARGV[i + 1], 'body', ARGV[i + 2])
    wake(key)
  end
end
return 0
"""

# KEYS delayed(q1..qn), then streams band-major: KEYS[n + b*n + i] is queue i in band b (0..2),
# then dead and the dead letters' counts; ARGV consumer, idle_ms (RECLAIM_IDLE - visibility), n,
# reclaim_idle_ms, queue names, then the history's NS ('' for none), host and pid of the
# claimant, and a bound (0 for none): fold a batch of the history's logs first if the attempts'
# log is longer (redis_history_lua: `fold`)
# A delayed member that is not [band, id, body, nonce] is dead-lettered as it is, not claimed
# -> the ms until the soonest delayed retry is ready (-1: none) when nothing is ready, or
# {key index, entry id, message id, body, deliveries, pending count}; the message id
# and body are nil when the entry lacks them, and are bytes as stored (the caller decodes them)
CLAIM = """
local consumer, idle, n, reclaim = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local NS, host, pid = ARGV[5 + n] or '', ARGV[6 + n], ARGV[7 + n]
local bound = tonumber(ARGV[8 + n]) or 0
if NS ~= '' and bound > 0 and redis.call('LLEN', NS .. 'h:attempts') > bound then
  fold(NS, FOLD_BATCH, false)
end
local now = now_ms()
local function delayed_run(member)
  local ok, m = pcall(cjson.decode, member)
  if not ok or type(m) ~= 'table' then return nil end
  local b = m[1]
  if (b == 0 or b == 1 or b == 2) and type(m[2]) == 'string' and type(m[3]) == 'string' then
    return m
  end
  return nil
end
for i = 1, n do
  local due = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now, 'LIMIT', 0, 100)
  for _, member in ipairs(due) do
    local m = delayed_run(member)
    if m then
      local key = KEYS[n + m[1] * n + i]
      ensure_stream(key)
      redis.call('XADD', key, '*', 'id', m[2], 'body', m[3])
      wake(key)
    else
      redis.call('XADD', KEYS[#KEYS - 1], '*', 'id', '', 'queue', ARGV[4 + i], 'band', 1,
        'body', member, 'reason', 'a delayed retry that is not [band, id, body, nonce] JSON',
        'deliveries', 0, 'failed_at', now)
      count_dead(KEYS[#KEYS], ARGV[4 + i], 1)
    end
    redis.call('ZREM', KEYS[i], member)
  end
end
-- the group's last delivered id and pending count, or nil when there is no stream
local function group_info(key)
  if redis.call('EXISTS', key) == 0 then return nil end
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
    local info = fields(g)
    if info['name'] == G then return info['last-delivered-id'], info['pending'] end
  end
  redis.call('XGROUP', 'CREATE', key, G, '0')
  return '0-0', 0
end
local function older(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  if #am ~= #bm then return #am < #bm end
  if am ~= bm then return am < bm end
  return tonumber(as) < tonumber(bs)
end
local function hand_out(k, entry)
  local id = entry[1]
  redis.call('XCLAIM', KEYS[k], G, consumer, 0, id, 'IDLE', idle, 'JUSTID')
  local count = redis.call('XPENDING', KEYS[k], G, id, id, 1)[1][4]
  local f = fields(entry[2])
  claimed(NS, f['id'], consumer, host, pid)
  -- a missing field is nil (false): the caller dead-letters the entry instead of failing
  return {k, id, f['id'] or false, f['body'] or false, (tonumber(f['d']) or 0) + count, count}
end
for b = 0, 2 do
  local lasts = {}
  for i = 1, n do
    local k = n + b * n + i
    local pending
    lasts[i], pending = group_info(KEYS[k])
    if lasts[i] and pending > 0 then
      local cursor = '0-0'
      repeat
        local r = redis.call('XAUTOCLAIM', KEYS[k], G, consumer, reclaim, cursor, 'COUNT', 1)
        cursor = r[1]
        if r[2][1] then return hand_out(k, r[2][1]) end
      until cursor == '0-0'
    end
  end
  local best, best_k
  for i = 1, n do
    if lasts[i] then
      local k = n + b * n + i
      local head = redis.call('XRANGE', KEYS[k], '(' .. lasts[i], '+', 'COUNT', 1)[1]
      if head and (not best or older(head[1], best)) then best, best_k = head[1], k end
    end
  end
  if best then
    local key = KEYS[best_k]
    local r = redis.call('XREADGROUP', 'GROUP', G, consumer, 'COUNT', 1, 'STREAMS', key, '>')
    return hand_out(best_k, r[1][2][1])
  end
end
local soonest = -1
for i = 1, n do
  local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')[2]
  if first then
    local wait = math.max(0, tonumber(first) - now)
    if soonest < 0 or wait < soonest then soonest = wait end
  end
end
return soonest
"""

# KEYS stream; ARGV entry id, consumer, count, idle_ms -> 1 extended, 0 lost
EXTEND = """
if not owns(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('XCLAIM', KEYS[1], G, ARGV[2], 0, ARGV[1], 'IDLE', ARGV[4], 'JUSTID')
return 1
"""

# The settling scripts end the run's open attempt first (`settled`, redis_history_lua), from
# the ARGV that follow their own: NS ('' for none), run id, outcome, reason, error type, error.
# The final ones (ack, dead_letter) then free the entry the run keeps busy (`run_final`,
# redis_controls_lua), by the key prefix that follows those.

# KEYS stream; ARGV entry id, consumer, count, history... -> 1 removed, 0 not ours
ACK = """
if not owns(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
settled(4)
redis.call('XACK', KEYS[1], G, ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
run_final(ARGV[10], ARGV[4], ARGV[5])
return 1
"""

# KEYS stream; ARGV entry id, consumer, count, history... -> 1 given back, 0 not ours
RELEASE_CLAIM = """
if not owns(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
settled(4)
local f = entry_fields(KEYS[1], ARGV[1])
if f then
  local before = (tonumber(f['d']) or 0) + tonumber(ARGV[3]) - 1
  redis.call('XADD', KEYS[1], '*', 'id', f['id'] or '', 'body', f['body'] or '', 'd', before)
  wake(KEYS[1])
end
redis.call('XACK', KEYS[1], G, ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
"""

# KEYS stream, delayed; ARGV entry id, consumer, count, delay_ms, member [band, id, body, nonce],
# history...
RETRY = """
if not owns(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
settled(6)
local delay = tonumber(ARGV[4])
if delay > 0 then
  redis.call('ZADD', KEYS[2], now_ms() + delay, ARGV[5])
else
  local m = cjson.decode(ARGV[5])
  redis.call('XADD', KEYS[1], '*', 'id', m[2], 'body', m[3])
  wake(KEYS[1])
end
redis.call('XACK', KEYS[1], G, ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
"""

# KEYS stream, dead, dead letters' counts; ARGV entry id, consumer, count, queue, band, reason,
# deliveries, history...
DEAD_LETTER = """
if not owns(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
settled(8)
local f = entry_fields(KEYS[1], ARGV[1])
if f then
  redis.call('XADD', KEYS[2], '*', 'id', f['id'] or '', 'queue', ARGV[4], 'band', ARGV[5],
    'body', f['body'] or '', 'reason', ARGV[6], 'deliveries', ARGV[7], 'failed_at', now_ms())
  count_dead(KEYS[3], ARGV[4], 1)
end
redis.call('XACK', KEYS[1], G, ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
run_final(ARGV[14], ARGV[8], ARGV[9])
return 1
"""

# KEYS dead, queues, dead letters' counts, stream...; ARGV (dead entry id, k, queue)... -> how
# many moved
REQUEUE = """
local moved = 0
for i = 1, #ARGV, 3 do
  local f = entry_fields(KEYS[1], ARGV[i])
  if f then
    count_dead(KEYS[3], f['queue'] or '', -1)
    local key = KEYS[tonumber(ARGV[i + 1])]
    ensure_stream(key)
    redis.call('XADD', key, '*', 'id', f['id'] or '', 'body', f['body'] or '')
    wake(key)
    redis.call('SADD', KEYS[2], ARGV[i + 2])
    redis.call('XDEL', KEYS[1], ARGV[i])
    moved = moved + 1
  end
end
return moved
"""

# KEYS dead, dead letters' counts; ARGV dead entry ids -> how many went (an id already gone
# counts nothing, so a repeat deletes nothing)
DELETE_DEAD = """
local gone = 0
for i = 1, #ARGV do
  local f = entry_fields(KEYS[1], ARGV[i])
  if f then
    count_dead(KEYS[2], f['queue'] or '', -1)
    redis.call('XDEL', KEYS[1], ARGV[i])
    gone = gone + 1
  end
end
return gone
"""

# KEYS dead, dead letters' counts; ARGV (id, queue, body, reason, deliveries, failed_at ms)...,
# each added as it is in the normal band -> how many were added
ADD_DEAD = """
for i = 1, #ARGV, 6 do
  redis.call('XADD', KEYS[1], '*', 'id', ARGV[i], 'queue', ARGV[i + 1], 'band', 1,
    'body', ARGV[i + 2], 'reason', ARGV[i + 3], 'deliveries', ARGV[i + 4],
    'failed_at', ARGV[i + 5])
  count_dead(KEYS[2], ARGV[i + 1], 1)
end
return #ARGV / 6
"""


class _Script:
    def __init__(self, source: str) -> None:
        self.source = PRELUDE + HISTORY + HISTORY_LOG + CONTROLS + source
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


SCRIPTS = {
    name: _Script(source)
    for name, source in {
        "acquire": ACQUIRE,
        "renew": RENEW,
        "release": RELEASE,
        "commit": COMMIT,
        "forget": FORGET,
        "enqueue": ENQUEUE,
        "claim": CLAIM,
        "extend": EXTEND,
        "ack": ACK,
        "release_claim": RELEASE_CLAIM,
        "retry": RETRY,
        "dead_letter": DEAD_LETTER,
        "requeue": REQUEUE,
        "delete_dead": DELETE_DEAD,
        "add_dead": ADD_DEAD,
        "fold": FOLD,
        **HISTORY_SCRIPTS,
        **CONTROLS_SCRIPTS,
        **{name: ENTRIES + source for name, source in ENTRIES_SCRIPTS.items()},
        "register_files": CHECK_LEASE + ENTRIES + REGISTER_FILES,
        **NODES_SCRIPTS,
    }.items()
}
