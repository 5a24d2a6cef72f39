"""The operator controls' Lua (beatd.backends.redis_controls has the keys): `CONTROLS`, the
helpers the commit and the final settling scripts call in their own atomic step, and the scripts
of the `Controls` role.

Every helper takes `P`, the key prefix ("beatd:"), and `H`, the history's prefix ('' with the
history off: no record is written). Times are microseconds as decimal strings (exact: Lua's
numbers are doubles, which hold today's microseconds exactly, but cjson prints 14 digits).
  P .. 'ctl:pause'      hash  entry -> JSON [at, until ('' for none), reason, by]
  P .. 'ctl:lifted'     hash  entry -> JSON [[at, until, reason, by]...]: pauses resumed or
                        replaced that the entry's horizon has not passed (beatd.controls.lift)
  P .. 'ctl:busy'       hash  entry -> JSON [run id, since]
  P .. 'ctl:busy-run'   hash  run id -> entry (which entry a final outcome frees: one HGET)
  P .. 'ctl:held'       hash  entry -> JSON [run id, slot, due, kind, queue, body, audit id,
                        celery '1'/'0', priority ('' none), the key it is published to] (held
                        before the last three were kept: a beatd run in the normal band)
  P .. 'ctl:audit'      hash  id -> JSON [at, action, entry, by, detail, before, after, form]
  P .. 'ctl:audit-at'   zset  audit ids by at; P .. 'ctl:audit:' .. entry, the entry's;
  P .. 'ctl:audit-ctl'  zset  those of every action but a runtime entry's change (entry.*)
  P .. 'ctl:keys'       hash  key US entry -> JSON [status, run id, detail, audit id, at]
  P .. 'ctl:keys-at'    zset  the keys' fields by at
`form` 'pause' says before and after are a pause's stored JSON (or null), converted on read.
"""

from __future__ import annotations

from beatd.celery_amqp import OUTBOX_QUEUE

TTL_US = 7 * 24 * 3600 * 1_000_000  # beatd.controls.IDEMPOTENCY_KEY_TTL

CONTROLS = f"""
local KEY_TTL = {TTL_US}
local function us(n) return string.format('%d', n) end
local function add_audit(P, id, at, entry, rest)
  redis.call('HSET', P .. 'ctl:audit', id, '["' .. at .. '",' .. string.sub(rest, 2))
  redis.call('ZADD', P .. 'ctl:audit-at', at, id)
  if string.sub(rest, 1, 8) ~= '["entry.' then redis.call('ZADD', P .. 'ctl:audit-ctl', at, id) end
  if entry ~= '' then redis.call('ZADD', P .. 'ctl:audit:' .. entry, at, id) end
end
local function set_busy(P, entry, run_id, at)
  local old = redis.call('HGET', P .. 'ctl:busy', entry)
  if old then redis.call('HDEL', P .. 'ctl:busy-run', cjson.decode(old)[1]) end
  redis.call('HSET', P .. 'ctl:busy', entry, cjson.encode({{run_id, at}}))
  redis.call('HSET', P .. 'ctl:busy-run', run_id, entry)
end
local function busy_now(P, entry, timeout, now)
  local b = redis.call('HGET', P .. 'ctl:busy', entry)
  if not b then return nil end
  b = cjson.decode(b)
  if tonumber(now) - tonumber(b[2]) < tonumber(timeout) then return b[1] end
  return nil
end
-- the entry's pause lifted at `now` (resumed or replaced) kept in ctl:lifted, with the lifted
-- ones before it, less those that end at or before the entry's horizon (beatd.controls.lift)
local function lift(P, entry, now)
  local state = redis.call('HGET', P .. 'state', entry)
  local horizon = state and tonumber(string.match(state, '^%[(%-?%d+),'))
  local kept = {{}}
  local function keep(p)
    if not horizon or p[2] == '' or tonumber(p[2]) > horizon then kept[#kept + 1] = p end
  end
  local old = redis.call('HGET', P .. 'ctl:lifted', entry)
  if old then
    for _, p in ipairs(cjson.decode(old)) do keep(p) end
  end
  local raw = redis.call('HGET', P .. 'ctl:pause', entry)
  if raw then
    local p = cjson.decode(raw)
    local ending = now
    if p[2] ~= '' and tonumber(p[2]) < tonumber(now) then ending = p[2] end
    if tonumber(ending) > tonumber(p[1]) then keep({{p[1], ending, p[3], p[4]}}) end
  end
  if #kept == 0 then
    redis.call('HDEL', P .. 'ctl:lifted', entry)
  else
    redis.call('HSET', P .. 'ctl:lifted', entry, cjson.encode(kept))
  end
end
local function covers(p, due)
  local t = tonumber(due)
  return t >= tonumber(p[1]) and (p[2] == '' or t < tonumber(p[2]))
end
-- a run published without a lease: its record (node '', epoch 0) unless one is stored
local function publish_run(P, H, key, is_list, entry, id, body, p, audit, at)
  if is_list then
    redis.call('LPUSH', key, body)
  else
    ensure_stream(key)
    redis.call('XADD', key, '*', 'id', id, 'body', body)
    wake(key)
  end
  if H == '' or redis.call('EXISTS', H .. 'h:run:' .. id) == 1 then return end
  if audit ~= '' then
    redis.call('HSET', H .. 'h:run:' .. id, 'p', p, 'e', entry, 'N', '', 'a', audit)
  else
    redis.call('HSET', H .. 'h:run:' .. id, 'p', p, 'e', entry, 'N', '')
  end
  redis.call('ZADD', H .. 'h:entry:' .. entry, at, id)
  redis.call('ZADD', H .. 'h:runs', at, id)
end
-- the commit's checks, before its first write: entries whose messages a pause covers, and
-- guarded writes that mistake busy, join `skip` and `rejected`; the guards (a JSON array of
-- [entry, timeout_us, busy '1'/'0', hold JSON or '']) by entry, or nil for none
local function commit_checks(P, messages, plist, guards, dues, skip, rejected)
  if not P or P == '' then return nil end  -- a caller that passes no controls' arguments
  if redis.call('EXISTS', P .. 'ctl:pause') == 1 then
    local ps, ds = {{}}, dues ~= '' and cjson.decode(dues) or cjson.decode(plist)
    for i = 1, #messages, 3 do
      local entry = messages[i + 1]
      if ps[entry] == nil then
        ps[entry] = decoded(redis.call('HGET', P .. 'ctl:pause', entry)) or false
      end
      local due, j = nil, (i + 2) / 3
      if dues ~= '' then due = ds[j] elseif ds[j] ~= '' then
        local p = cjson.decode(ds[j])
        due = us(tonumber(p[1]) + tonumber(p[2]))
      end
      if ps[entry] and due and due ~= '' and not skip[entry] and covers(ps[entry], due) then
        skip[entry] = true
        rejected[#rejected + 1] = entry
      end
    end
  end
  if guards == '' then return nil end
  local by, now = {{}}, now_us()
  for _, g in ipairs(cjson.decode(guards)) do
    by[g[1]] = g
    local busy = busy_now(P, g[1], g[2], now) ~= nil
    if busy ~= (g[3] == '1') and not skip[g[1]] then
      skip[g[1]] = true
      rejected[#rejected + 1] = g[1]
    end
  end
  return by, now
end
-- an applied guarded write: its last run marks the entry busy; its hold is kept, unless a held
-- manual run is (beatd.controls.replaced_held). Returns the slots to record missed (overlap): the
-- held runs a hold replaced, or the hold a held manual run kept out, as {{entry, slot}}...
local function commit_applied(P, messages, by, skip, now)
  local replaced = {{}}
  if not P or not by then return replaced end
  local last = {{}}
  for i = 1, #messages, 3 do
    if by[messages[i + 1]] then last[messages[i + 1]] = messages[i + 2] end
  end
  for entry, g in pairs(by) do
    if not skip[entry] then
      if last[entry] then set_busy(P, entry, last[entry], now) end
      if g[4] ~= '' then
        local old, new = decoded(redis.call('HGET', P .. 'ctl:held', entry)), cjson.decode(g[4])
        if old and old[1] ~= new[1] and old[4] == 'manual' then
          replaced[#replaced + 1] = {{entry, new[2]}}  -- a held manual run stays held
        else
          if old and old[1] ~= new[1] then replaced[#replaced + 1] = {{entry, old[2]}} end
          redis.call('HSET', P .. 'ctl:held', entry, g[4])
        end
      end
    end
  end
  return replaced
end
-- a held run's slot missed outside a commit, as COMMIT_HISTORY's missed_slots
-- (redis_history_lua) writes it, node '' and epoch 0 (H '': the history is off)
local function missed_unleased(H, entry, reason, slot, now)
  if H == '' then return end
  local field = entry .. '\\31' .. reason .. '\\31' .. slot
  local value = cjson.encode({{entry, reason, slot, slot, '1', now, '', '0', ''}})
  if not redis.call('HGET', H .. 'h:missed', field) then
    redis.call('HSET', H .. 'h:missed', field, value)
    redis.call('ZADD', H .. 'h:missed-at', now, field)
  end
end
-- run `id` reached a final outcome: clear the busy mark it holds and publish the entry's held
-- run (dropped as missed, reason paused, when a pause covers now)
local function run_final(P, H, id)
  if P == '' or type(id) ~= 'string' then return end
  local entry = redis.call('HGET', P .. 'ctl:busy-run', id)
  if not entry then return end
  redis.call('HDEL', P .. 'ctl:busy-run', id)
  redis.call('HDEL', P .. 'ctl:busy', entry)
  local held = decoded(redis.call('HGET', P .. 'ctl:held', entry))
  if not held then return end
  redis.call('HDEL', P .. 'ctl:held', entry)
  local now = now_us()
  local pause = decoded(redis.call('HGET', P .. 'ctl:pause', entry))
  if pause and covers(pause, now) and held[4] ~= 'manual' then
    missed_unleased(H, entry, 'paused', held[2], now)
    return
  end
  local celery = held[8] == '1'
  local key = held[10] or (P .. 'queue:' .. held[5] .. ':normal')
  if not celery then redis.call('SADD', P .. 'queues', held[5]) end
  local offset = us(tonumber(held[3]) - tonumber(held[2]))
  local task = celery or held[5] == '{OUTBOX_QUEUE}'  -- the AMQP outbox's runs are Celery's too
  local p = cjson.encode({{held[2], offset, held[4], task and '1' or '0', '0'}})
  publish_run(P, H, key, celery, entry, held[1], held[6], p, held[7], now)
  set_busy(P, entry, held[1], now)
end
"""

# ARGV P, reason, until ('' none, '+N' N us from now, else at us), by, (entry, audit id)...
# -> the audit records written, as stored
PAUSE = """
local P, reason, until_, by = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = now_us()
if string.sub(until_, 1, 1) == '+' then
  until_ = us(tonumber(now) + tonumber(string.sub(until_, 2)))
end
local value = cjson.encode({now, until_, reason, by})
local out = {}
for i = 5, #ARGV, 2 do
  local entry, id = ARGV[i], ARGV[i + 1]
  local before = redis.call('HGET', P .. 'ctl:pause', entry) or cjson.null
  lift(P, entry, now)
  redis.call('HSET', P .. 'ctl:pause', entry, value)
  add_audit(P, id, now, entry, cjson.encode({'pause', entry, by, {}, before, value, 'pause'}))
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', P .. 'ctl:audit', id)
end
return out
"""

# ARGV P, by, (entry, audit id)... -> the audit records written (entries with a pause only)
RESUME = """
local P, by = ARGV[1], ARGV[2]
local now = now_us()
local out = {}
for i = 3, #ARGV, 2 do
  local entry, id = ARGV[i], ARGV[i + 1]
  local before = redis.call('HGET', P .. 'ctl:pause', entry)
  if before then
    lift(P, entry, now)
    redis.call('HDEL', P .. 'ctl:pause', entry)
    add_audit(P, id, now, entry,
      cjson.encode({'resume', entry, by, {}, before, cjson.null, 'pause'}))
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGET', P .. 'ctl:audit', id)
  end
end
return out
"""

# KEYS target (stream or Celery list), queues; ARGV P, H, entry, run id, queue, body, request
# id, by, overlap ('' none, skip, buffer_one), timeout_us, idempotency key ('' none), force
# '1'/'0', audit id, celery '1'/'0', priority ('' none) -> JSON [status, run id, detail, audit
# id ('' none)]; a refused_paused's detail is the pause as stored (the client describes it)
TRIGGER = """
local P, H, entry, rid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local queue, body, request, by = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local overlap, timeout, key, force = ARGV[9], ARGV[10], ARGV[11], ARGV[12] == '1'
local audit, celery, priority = ARGV[13], ARGV[14] == '1', ARGV[15]
local now = now_us()
local function remembered(k)
  local r = decoded(redis.call('HGET', P .. 'ctl:keys', k .. '\\31' .. entry))
  if r and tonumber(now) - tonumber(r[5]) < KEY_TTL then return r end
  return nil
end
local function remember(k, r)
  local field = k .. '\\31' .. entry
  redis.call('HSET', P .. 'ctl:keys', field, cjson.encode({r[1], r[2], r[3], r[4], now}))
  redis.call('ZADD', P .. 'ctl:keys-at', now, field)
end
local r = remembered('request:' .. request)
if r then return cjson.encode({r[1], r[2], r[3], r[4]}) end
local used = key ~= '' and remembered('key:' .. key)
if used then
  r = {'duplicate', used[2], '', used[4]}
else
  local pause = decoded(redis.call('HGET', P .. 'ctl:pause', entry))
  local busy = overlap ~= '' and not force and busy_now(P, entry, timeout, now)
  local held = busy and decoded(redis.call('HGET', P .. 'ctl:held', entry))
  if not force and pause and covers(pause, now) then
    r = {'refused_paused', rid, redis.call('HGET', P .. 'ctl:pause', entry), ''}
  elseif busy and overlap == 'skip' then
    r = {'refused_busy', rid, busy, ''}
  elseif held and held[4] == 'manual' then
    r = {'refused_held', rid, held[1], ''}  -- buffer_one keeps one run: never an operator's lost
  else
    -- a guarded, unforced trigger not held publishes over a stale busy mark: its run id said
    local mark = overlap ~= '' and not force and not busy
      and decoded(redis.call('HGET', P .. 'ctl:busy', entry))
    r = {busy and 'held' or 'published', rid, mark and mark[1] or '', audit}
    local detail = {run_id = rid, status = r[1], force = force, request_id = request,
      idempotency_key = key ~= '' and key or cjson.null}
    if mark then detail['dropped_busy'] = mark[1] end
    add_audit(P, audit, now, entry, cjson.encode({'trigger', entry, by, detail, cjson.null,
      cjson.null, ''}))
    if busy then
      if held then missed_unleased(H, entry, 'overlap', held[2], now) end  -- a slot gives way
      redis.call('HSET', P .. 'ctl:held', entry,
        cjson.encode({rid, now, now, 'manual', queue, body, audit, ARGV[14], priority, KEYS[1]}))
    else
      if not celery then redis.call('SADD', KEYS[2], queue) end
      local task = celery or queue == '%OUTBOX%'  -- the AMQP outbox's runs are Celery's too
      local p = cjson.encode({now, '0', 'manual', task and '1' or '0', '0'})
      publish_run(P, H, KEYS[1], celery, entry, rid, body, p, audit, now)
      if overlap ~= '' then set_busy(P, entry, rid, now) end
    end
    if key ~= '' then remember('key:' .. key, r) end
  end
end
remember('request:' .. request, r)
return cjson.encode(r)
""".replace("%OUTBOX%", OUTBOX_QUEUE)

# KEYS queues, target...; ARGV P, H, entry, audit id, the audit record's rest (JSON [action,
# entry, by, detail, null, null, '']), then (k, run id, p, body, celery '1'/'0', queue)... ->
# {the ids published, the audit record as stored}
BACKFILL = """
local P, H, entry, audit = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
-- a slot at or before the newest one a trim took the record of: refused, nothing written
local bound = redis.call('HGET', H .. 'h:trimmed', entry)
if bound then
  for i = 6, #ARGV, 6 do
    local p = ARGV[i + 2] ~= '' and cjson.decode(ARGV[i + 2])
    if p and tonumber(p[1]) <= tonumber(bound) then return {'trimmed', bound} end
  end
end
local now = now_us()
local ids, seen = {}, {}
for i = 6, #ARGV, 6 do
  local id = ARGV[i + 1]
  if not seen[id] and redis.call('EXISTS', H .. 'h:run:' .. id) == 0 then
    seen[id] = true
    local celery = ARGV[i + 4] == '1'
    if not celery then redis.call('SADD', KEYS[1], ARGV[i + 5]) end
    publish_run(P, H, KEYS[tonumber(ARGV[i])], celery, entry, id, ARGV[i + 3], ARGV[i + 2],
      audit, now)
    ids[#ids + 1] = id
  end
end
-- a held slot it published is no longer held: the busy run's end must not publish it again
local held = decoded(redis.call('HGET', P .. 'ctl:held', entry))
if held and seen[held[1]] then redis.call('HDEL', P .. 'ctl:held', entry) end
-- the detail says what this step did (beatd.controls.backfill_detail)
local rest = cjson.decode(ARGV[5])
rest[4]['published'] = #ids
rest[4]['already_there'] = (#ARGV - 5) / 6 - #ids
add_audit(P, audit, now, entry, cjson.encode(rest))
return {ids, redis.call('HGET', P .. 'ctl:audit', audit)}
"""

# ARGV P, id, at_us, entry ('' none), the record's rest -> 0
RECORD_AUDIT = """
add_audit(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
return 0
"""

# ARGV P, max_age_us, limit -> how many audit records and keys went
TRIM_AUDIT = """
local P, limit = ARGV[1], tonumber(ARGV[3])
local now = tonumber(now_us())
local gone = 0
local old = redis.call('ZRANGEBYSCORE', P .. 'ctl:audit-at', '-inf',
  '(' .. us(now - tonumber(ARGV[2])), 'LIMIT', 0, limit)
for _, id in ipairs(old) do
  local r = decoded(redis.call('HGET', P .. 'ctl:audit', id))
  if r and type(r[3]) == 'string' then redis.call('ZREM', P .. 'ctl:audit:' .. r[3], id) end
  redis.call('HDEL', P .. 'ctl:audit', id)
  redis.call('ZREM', P .. 'ctl:audit-at', id)
  redis.call('ZREM', P .. 'ctl:audit-ctl', id)
  gone = gone + 1
end
if gone < limit then
  local stale = redis.call('ZRANGEBYSCORE', P .. 'ctl:keys-at', '-inf',
    us(now - KEY_TTL), 'LIMIT', 0, limit - gone)
  for _, field in ipairs(stale) do
    redis.call('HDEL', P .. 'ctl:keys', field)
    redis.call('ZREM', P .. 'ctl:keys-at', field)
    gone = gone + 1
  end
end
return gone
"""

# ARGV P, JSON [[entry, pause, busy, held, lifted]...] ('' for none),
# JSON [[id, at_us, entry, rest]...],
# JSON [[field, value, at_us]...] -> how many were added
IMPORT_CONTROLS = """
local P = ARGV[1]
local added = 0
for _, c in ipairs(cjson.decode(ARGV[2])) do
  local e = c[1]
  local here = redis.call('HGET', P .. 'ctl:pause', e)
    or redis.call('HGET', P .. 'ctl:busy', e)
    or redis.call('HGET', P .. 'ctl:held', e)
    or redis.call('HGET', P .. 'ctl:lifted', e)
  if not here then
    if c[2] ~= '' then redis.call('HSET', P .. 'ctl:pause', e, c[2]) end
    if c[3] ~= '' then
      redis.call('HSET', P .. 'ctl:busy', e, c[3])
      redis.call('HSET', P .. 'ctl:busy-run', cjson.decode(c[3])[1], e)
    end
    if c[4] ~= '' then redis.call('HSET', P .. 'ctl:held', e, c[4]) end
    if c[5] and c[5] ~= '' then redis.call('HSET', P .. 'ctl:lifted', e, c[5]) end
    added = added + 1
  end
end
for _, a in ipairs(cjson.decode(ARGV[3])) do
  if not redis.call('HGET', P .. 'ctl:audit', a[1]) then
    add_audit(P, a[1], a[2], a[3], a[4])
    added = added + 1
  end
end
for _, k in ipairs(cjson.decode(ARGV[4])) do
  if not redis.call('HGET', P .. 'ctl:keys', k[1]) then
    redis.call('HSET', P .. 'ctl:keys', k[1], k[2])
    redis.call('ZADD', P .. 'ctl:keys-at', k[3], k[1])
    added = added + 1
  end
end
return added
"""

# ARGV P, H, run id -> 0 (a final outcome outside a settling script: a Celery run's)
RUN_FINAL = """
run_final(ARGV[1], ARGV[2], ARGV[3])
return 0
"""

CONTROLS_SCRIPTS = {
    "pause": PAUSE,
    "resume": RESUME,
    "trigger": TRIGGER,
    "backfill": BACKFILL,
    "record_audit": RECORD_AUDIT,
    "trim_audit": TRIM_AUDIT,
    "import_controls": IMPORT_CONTROLS,
    "run_final": RUN_FINAL,
}
