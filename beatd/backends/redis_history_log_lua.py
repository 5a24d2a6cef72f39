"""The run history's logs on Redis, in Lua (`HISTORY_LOG`, after redis_history_lua's `HISTORY`,
whose record helpers it uses): what the commit, claim and settling scripts append instead of
writing the records, and `fold`, which moves the logs into the records in order, a batch at a
time, each record and summary it touches read and written once (docs/redis.md: Commit): the
starts and ends first, taking their runs' published records off the published log as they need
them, so a run published, claimed and settled between two folds costs one write.

Who folds: every reader of the records first (redis_link: `_fold_log`); the scripts that read a
record to write it (they reply FOLD_MORE, having done nothing else, while the logs hold more than
a batch: redis_link `_eval_folded`); and a worker's claim while the attempts' log is past a bound
(redis_queue).
"""

from __future__ import annotations

FOLD_MORE = "FOLDMORE"  # the reply of a script that needs the logs folded first: call it again
FOLD_BATCH = 1000  # starts and ends one fold call takes (and about as many published runs)

HISTORY_LOG = (
    f"""
local FOLD_MORE, FOLD_BATCH = '{FOLD_MORE}', {FOLD_BATCH}
local LOG_SIZE = {{P = 6, S = 6, E = 7}}  -- a log record's elements, its tag included
"""
    + r"""
-- The logs (lists): what the hot paths append instead of writing the records, folded into them
-- in order, a batch at a time (`fold`): NS .. 'h:published' the commits' records, NS ..
-- 'h:attempts' the claims' and settling steps'. A run's start is logged after its commit, so
-- a start or end whose run has no record yet finds it in a published record still logged: the
-- fold takes those off the published log as the starts and ends need them, which keeps each
-- run's order and writes a run claimed and settled since the last fold once, published record
-- and attempt together. Their records, as elements:
--   P, published_us, node, the commit's messages and their p as the commit got them (JSON
--     [k, entry, id, ...] and [p, ...]: nothing is formatted per run), the entries whose
--     writes were not applied (JSON, '' for none: their runs have no record)
--   S, run id, consumer, host, pid, at_us (a claim: an attempt starts)
--   E, run id, at_us, outcome, reason, error type, error (a settling step: the attempt ends)
-- Appended with pcall: a user whose ACL lacks RPUSH loses the record, not the run.
local function log_published(NS, messages, plist, skip, at, node)
  if not string.find(plist, '"[', 1, true) then return end  -- every p '': no record
  local skipped = {}
  for entry in pairs(skip) do skipped[#skipped + 1] = entry end
  skipped = #skipped > 0 and cjson.encode(skipped) or ''
  redis.pcall('RPUSH', NS .. 'h:published', 'P', at, node, messages, plist, skipped)
end
local function claimed(NS, id, consumer, host, pid)
  if NS == '' or type(id) ~= 'string' then return end
  redis.pcall('RPUSH', NS .. 'h:attempts', 'S', id, consumer, host, pid, now_us())
end
-- ARGV[i ..] NS, run id, outcome, reason, error type, error: end the run's open attempt now
local function settled(i)
  local NS = ARGV[i] or ''  -- none: a caller that writes no history
  if NS == '' then return end
  redis.pcall('RPUSH', NS .. 'h:attempts', 'E', ARGV[i + 1], now_us(), ARGV[i + 2], ARGV[i + 3],
    ARGV[i + 4], ARGV[i + 5])
end
-- The batch's pool: the runs of the published records pulled off the log's head that no
-- record has yet, by id ({entry, p, at, node}), and per record pulled {at, node, ids}. A start
-- or an end takes its run from the pool (`from_pool`), so a run published, claimed and settled
-- between two folds is written once, whole. A P record's new runs: one variadic ZADD NX of the
-- global index per chunk, scored `at`, says how many are new; when fewer than asked (an id
-- published before keeps its record), the new ones are those scored `at` (no other record has
-- that time; a run pushed back below is scored `at` already, so it counts as new again)
local function pool_published(B, at, node, mtext, ptext, skipped)
  local index, ids, recs = B.NS .. 'h:runs', {}, {}
  local messages, ps, skip = decoded(mtext) or {}, decoded(ptext) or {}, {}
  for _, entry in ipairs(decoded(skipped) or {}) do skip[entry] = true end
  for j, p in ipairs(ps) do
    local entry, id = messages[3 * j - 1], messages[3 * j]
    local known = type(id) == 'string' and B.runs[id]
    if p ~= '' and type(id) == 'string' and type(entry) == 'string' and type(p) == 'string'
        and not skip[entry] and not (known and known.slot) and not recs[id] and not B.pool[id] then
      ids[#ids + 1] = id
      recs[id] = {entry, p, at, node}
    end
  end
  local pulled = {at = at, node = node, ids = {}}
  B.pulled[#B.pulled + 1] = pulled
  for first = 1, #ids, 500 do
    local chunk, add = {}, {}
    for j = first, math.min(first + 499, #ids) do
      chunk[#chunk + 1] = ids[j]
      add[#add + 1] = at
      add[#add + 1] = ids[j]
    end
    local new = redis.call('ZADD', index, 'NX', unpack(add)) == #chunk
    local scores = (not new) and redis.call('ZMSCORE', index, unpack(chunk))
    for j, id in ipairs(chunk) do
      if new or tonumber(scores[j]) == tonumber(at) then
        B.pool[id] = recs[id]
        pulled.ids[#pulled.ids + 1] = id
      end
    end
  end
  return #ids
end
-- take whole P records off the head of the published log into the pool, up to about 100 runs
-- (one at least) -> whether one was taken (false: the log holds none). An element that is not
-- a record's head is skipped, never an error
local function pull(B)
  local key, got, taken = B.NS .. 'h:published', 0, 0
  local items = redis.call('LRANGE', key, 0, 95)
  local i = 1
  while i <= #items and got < 100 do
    if items[i] ~= 'P' then
      i = i + 1
    elseif i + 5 > #items then
      break
    else
      local n = pool_published(B, unpack(items, i + 1, i + 5))
      got, i = got + math.max(1, n), i + 6
    end
  end
  taken = i - 1
  if taken > 0 then redis.call('LTRIM', key, taken, -1) end
  B.pulls = B.pulls - got
  return taken > 0
end
-- a pooled run into the batch's records (new: flush writes it whole, and its entry's index)
local function from_pool(B, id)
  local r = B.pool[id]
  B.pool[id] = nil
  local run = {key = B.NS .. 'h:run:' .. id, f = {p = r[2], e = r[1], N = r[4]}, n = 0,
    slot = slot_of(r[2]), entry = r[1], dirty = {p = true, e = true, N = true}, a = {},
    at = r[3], id = id}
  B.runs[id] = run
  B.order[#B.order + 1] = run
  return run
end
-- the run a start or an end names: pooled, held, or in a published record still in the log
-- (pulled while the pull budget lasts) -> the run; nil when it has no record (the published
-- log is empty); false when the budget ran out first (the record waits for the next batch)
local function logged_run(B, id)
  while true do
    if B.pool[id] then return from_pool(B, id) end
    local run = held_run(B, id)
    if run then return run end
    if B.pulls <= 0 then return false end
    if not pull(B) then return nil end
  end
end
-- the pooled runs no start or end took: into the records (`keep`), or (false) back to the head
-- of the published log as the records they came in, in order, for a later batch's starts
local function leave_pool(B, keep)
  local key = B.NS .. 'h:published'
  for k = #B.pulled, 1, -1 do
    local pulled, messages, ps = B.pulled[k], {}, {}
    for _, id in ipairs(pulled.ids) do
      local r = B.pool[id]
      if r and keep then
        from_pool(B, id)
      elseif r then
        messages[#messages + 1] = 0
        messages[#messages + 1] = r[1]
        messages[#messages + 1] = id
        ps[#ps + 1] = r[2]
      end
    end
    if #ps > 0 then
      redis.call('LPUSH', key, '', cjson.encode(ps), cjson.encode(messages), pulled.node,
        pulled.at, 'P')
    end
  end
  B.pool, B.pulled = {}, {}
end
-- apply the starts and ends at the head of the attempts' log to the batch, up to `limit`, in the
-- order they were appended, fetched `chunk` elements at a time, and take them off the list ->
-- how many were applied, and whether a record waits for a published record not pulled yet. An
-- element that is not a record's head is skipped, never an error
local function fold_attempts(B, limit, chunk)
  local key = B.NS .. 'h:attempts'
  local done, taken, waits = 0, 0, false
  while done < limit and not waits do
    local items = redis.call('LRANGE', key, taken, taken + chunk - 1)
    local i = 1
    while i <= #items and done < limit do
      local tag = items[i]
      local size = tag ~= 'P' and LOG_SIZE[tag]
      if not size then
        i = i + 1
      elseif i + size - 1 > #items then
        break
      else
        local v1, v2, v3, v4, v5, v6 = unpack(items, i + 1, i + size - 1)
        local run = logged_run(B, v1)
        if run == false then
          waits = true
          break
        elseif run and tag == 'S' then
          start_attempt(B, run, v2, v3, v4, v5)
        elseif run then
          local a = open_attempt(run)
          if a then end_attempt(B, run, a, v3, v4, v5, v6, v2) end
        end
        done = done + 1
        i = i + size
      end
    end
    taken = taken + i - 1
    if #items < chunk then break end
  end
  if taken > 0 then redis.call('LTRIM', key, taken, -1) end
  return done, waits
end
-- fold a batch of the logs into the records: up to `limit` starts and ends, taking their runs'
-- published records off the published log as they are needed (up to about `limit` runs); the
-- runs pulled that no start or end took go back to the log's head while starts and ends are
-- left (they will likely come), else into the records, with more published runs up to the
-- budget. Each record and summary the batch touches is written once. With `ends_only`, nothing
-- unless a start or an end is logged (the summaries change with nothing else) -> how many
-- records the logs still hold
local function fold(NS, limit, ends_only)
  local published, attempts = NS .. 'h:published', NS .. 'h:attempts'
  if ends_only and redis.call('LLEN', attempts) == 0 then return 0 end
  local B = batch(NS)
  B.pool, B.pulled, B.pulls = {}, {}, limit
  local _, waits = fold_attempts(B, limit, 7 * limit)
  local left = redis.call('LLEN', attempts)
  leave_pool(B, waits or left == 0)
  while left == 0 and B.pulls > 0 and pull(B) do leave_pool(B, true) end
  flush(B)
  return redis.call('LLEN', published) + left
end
-- fold a batch; false when the log still holds records (the caller replies FOLD_MORE)
local function caught_up(NS) return NS == '' or fold(NS, FOLD_BATCH, false) == 0 end
"""
)

# ARGV NS, "1" to fold only when a start or an end is logged -> how many log records are left
# after folding a batch (0: the logs are folded, or with "1": the summaries are current)
FOLD = """
return fold(ARGV[1], FOLD_BATCH, ARGV[2] == '1')
"""
