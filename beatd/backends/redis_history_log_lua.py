"""The run history's logs on Redis, in Lua (`HISTORY_LOG`, after redis_history_lua's `HISTORY`,
whose record helpers it uses): what the commit, claim and settling scripts append instead of
writing the records, and `fold`, which moves the logs into the records in order, a batch at a
time, each record and summary it touches read and written once (docs/redis.md: Commit).

Who folds: every reader of the records first (redis_link: `_fold_log`); the scripts that read a
record to write it (they reply FOLD_MORE, having done nothing else, while the logs hold more than
a batch: redis_link `_eval_folded`); and a worker's claim while the attempts' log is past a bound
(redis_queue).
"""

from __future__ import annotations

FOLD_MORE = "FOLDMORE"  # the reply of a script that needs the logs folded first: call it again
FOLD_BATCH = 1000  # log records (a published run, a start, an end) one fold call takes

HISTORY_LOG = (
    f"""
local FOLD_MORE, FOLD_BATCH = '{FOLD_MORE}', {FOLD_BATCH}
local LOG_SIZE = {{P = 6, S = 6, E = 7}}  -- a log record's elements, its tag included
"""
    + r"""
-- The logs (lists): what the hot paths append instead of writing the records, folded into them
-- in order, a batch at a time (`fold`): NS .. 'h:published' the commits' records, NS ..
-- 'h:attempts' the claims' and settling steps'. A run's start is logged after its commit, so
-- folding every published record first keeps each run's order. Their records, as elements:
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
-- a P record's runs that have no record yet: one variadic ZADD NX of the global index per
-- chunk, scored `at`, says how many are new; when fewer than asked (an id published before
-- keeps its record), the new ones are those scored `at` (no other record has that time)
local function fold_published(B, at, node, mtext, ptext, skipped)
  local index, ids, recs = B.NS .. 'h:runs', {}, {}
  local messages, ps, skip = decoded(mtext) or {}, decoded(ptext) or {}, {}
  for _, entry in ipairs(decoded(skipped) or {}) do skip[entry] = true end
  for j, p in ipairs(ps) do
    local entry, id = messages[3 * j - 1], messages[3 * j]
    local known = type(id) == 'string' and B.runs[id]
    if p ~= '' and type(id) == 'string' and not skip[entry] and not (known and known.slot)
        and not recs[id] then
      ids[#ids + 1] = id
      recs[id] = {entry, p}
    end
  end
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
        local r = recs[id]
        local run = {key = B.NS .. 'h:run:' .. id, f = {p = r[2], e = r[1], N = node}, n = 0,
          slot = slot_of(r[2]), entry = r[1], dirty = {p = true, e = true, N = true}, a = {},
          at = at, id = id}
        B.runs[id] = run
        B.order[#B.order + 1] = run
      end
    end
  end
  return #ids
end
-- apply the records at the head of the list `key` to the batch, up to `limit` (a published run
-- counts one, a start or an end one), in the order they were appended, fetched `chunk` elements
-- at a time, and take them off the list -> how many were applied. An element that is not a
-- record's head is skipped, never an error
local function fold_list(B, key, limit, chunk)
  local done, taken = 0, 0
  while done < limit do
    local items = redis.call('LRANGE', key, taken, taken + chunk - 1)
    local i = 1
    while i <= #items and done < limit do
      local tag = items[i]
      local size = LOG_SIZE[tag]
      if not size then
        i = i + 1
      elseif i + size - 1 > #items then
        break
      else
        local v1, v2, v3, v4, v5, v6 = unpack(items, i + 1, i + size - 1)
        if tag == 'P' then
          done = done + math.max(1, fold_published(B, v1, v2, v3, v4, v5))
        else
          local run = held_run(B, v1)
          if run and tag == 'S' then
            start_attempt(B, run, v2, v3, v4, v5)
          elseif run then
            local a = open_attempt(run)
            if a then end_attempt(B, run, a, v3, v4, v5, v6, v2) end
          end
          done = done + 1
        end
        i = i + size
      end
    end
    taken = taken + i - 1
    if #items < chunk then break end
  end
  if taken > 0 then redis.call('LTRIM', key, taken, -1) end
  return done
end
-- fold up to `limit` log records into the records: the published runs' first, then (once
-- none is left) the attempts' starts and ends, each record and summary the batch touches
-- written once; with `ends_only`, nothing unless a start or an end is logged (the summaries
-- change with nothing else) -> how many records the logs still hold
local function fold(NS, limit, ends_only)
  local published, attempts = NS .. 'h:published', NS .. 'h:attempts'
  if ends_only and redis.call('LLEN', attempts) == 0 then return 0 end
  local B = batch(NS)
  local done = fold_list(B, published, limit, 96)
  if done < limit then done = done + fold_list(B, attempts, limit - done, 7 * limit) end
  flush(B)
  return redis.call('LLEN', published) + redis.call('LLEN', attempts)
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
