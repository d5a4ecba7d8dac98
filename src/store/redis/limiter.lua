-- crewthrottle: one shared limiter budget on Redis (issue 7).
--
-- One script decides everything about a budget atomically, on the Redis server's clock: the
-- concurrency slots (leases that their live holders renew), the exact sliding windows of
-- requests and tokens, the pacing (GCRA), the pause, and the first-come-first-served queue of
-- waiters of every process. It is the Redis counterpart of src/core/limiter.rs (the budget)
-- and src/core/gate.rs (the queue): the same answers to the same questions — grant now, not
-- before T, or not until a release. Callers (src/store/redis/) only wait and talk.
--
-- Times are microseconds of the server's clock (TIME). Every key shares the budget's hash
-- tag, so the script runs on one node of a cluster.
--
-- Every acquire and every release runs this script, and each redis.call costs the server ~1-2
-- µs: the common calls do only the work they need (benches/RESULTS.md, "Shared budgets on
-- Redis"). Config and state are read in one HMGET each and the state written back in one HSET
-- of the fields that changed; prune runs only when a lease is due (`state.due`); the keys'
-- deadline is pushed back only when it comes near (`keep_alive`); a release with nothing else
-- to do frees its slot and returns.
--
-- KEYS: 1 config, 2 state, 3 requests window, 4 tokens window, 5 token amounts, 6 holders,
--       7 queue, 8 queued requests, 9 queue leases, 10 handed grants, 11 reaped grants
-- ARGV: 1 op, 2 config digest, 3 max_concurrent, 4 rpm, 5 tpm, 6 window_us, 7 margin_us,
--       8 burst, 9 lease_us, 10 replace ("1": these limits replace stored ones), 11 epoch the
--       caller knows ("" if none), 12 channel, 13 adaptive ("1": limits not given are learned),
--       14.. the op's arguments

local K_CONFIG, K_STATE, K_REQS, K_TOKS, K_AMOUNTS, K_HOLDERS = 1, 2, 3, 4, 5, 6
local K_QUEUE, K_QINFO, K_QLEASE, K_HANDED, K_REAPED = 7, 8, 9, 10, 11

local ENTRY_CAP = 18014398509481984 -- 2^54, as src/core/sliding_window.rs (exact in a double)

local op = ARGV[1]
local now
do
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Numbers go to Redis as whole decimals: Lua would write 1.7966697618924e+15 (14 digits).
-- '%d' is exact for whole numbers below 2^53 and costs a third of '%.0f' (used for the rest).
local function int(n)
  if n == math.floor(n) and n < 9007199254740992 and n > -9007199254740992 then
    return string.format('%d', n)
  end
  return string.format('%.0f', n)
end

-- A number as read (false: absent).
local function num(v, default)
  return tonumber(v) or default
end

-- The stored limits' digest. It spells out every limit (src/store/redis/script.rs), so when
-- it is the caller's, the stored limits are the caller's (ARGV 3-8, 13): only it is read.
local digest = redis.call('HGET', KEYS[K_CONFIG], 'digest')

-- The state hash: pacing, pause, ids, learning, the queue's last announcement, `due` (see
-- `prune`), `expires` (see `keep_alive`), the limits in force (see `record_limits`), and the
-- two counters every grant moves (the other counters `stats` reports move on rare events, by
-- HINCRBY: see `count`). Only `rate_limited` needs `f_event`: it reads it itself.
local STATE_FIELDS = {'tat', 'paused_until', 'recovering_until', 'next_id', 'tok_used', 'epoch',
  'announced', 'l_rpm', 'l_tpm', 'factor', 'f_step', 'limits', 'discovering', 'due', 'expires',
  'acquired', 'tokens_charged'}

-- The state as read, in the order of STATE_FIELDS (false: absent).
local stored
local function read_state()
  stored = redis.call('HMGET', KEYS[K_STATE], unpack(STATE_FIELDS))
end

-- Keys expire when the budget is idle, all at one deadline (`expires` in the state, ms of the
-- server's clock): two windows or three leases, and a minute, after the latest call. Pushing
-- it back costs a PEXPIREAT per key, so it is pushed back only when it came within half that
-- minute (or a caller with longer leases needs more): a busy budget pays for it every 30 s,
-- not at every call, and an idle one still outlives its windows and leases by 30 s. A key
-- created in between (see `mark`) gets the same deadline.
local SLACK_MS, REFRESH_MS = 60000, 30000

local function deadline_ms(counted_us)
  return math.floor((now + math.max(2 * counted_us, 3 * tonumber(ARGV[9]))) / 1000) + SLACK_MS
end

-- Whether the deadline must be pushed back.
local function expiry_stale(expires, counted_us)
  return not expires or expires < deadline_ms(counted_us) - REFRESH_MS
end

local NO_HEAD = '-1;-1' -- announced: nobody queued

-- The common release first, before the rest of the script is even defined (creating its
-- functions costs the server more than this release does). ARGV 14: grant id. When these
-- limits are the stored ones, nobody is queued (nobody to serve), nothing is due (so this
-- grant's lease is live if it is held: `prune` would reap nothing), the last announcement
-- said so and the keys' deadline is fresh, the full path below would only free the slot: do
-- just that. Its windows stay as they are (a release never touches them).
if op == 'release' and digest == ARGV[2] then
  local counted_us = tonumber(ARGV[6]) + tonumber(ARGV[7])
  -- Only the three fields this needs (each field read costs the server ~0.3 µs).
  local due, announced, expires = unpack(redis.call('HMGET', KEYS[K_STATE], 'due', 'announced',
    'expires'))
  if now < num(due, 0) and announced == NO_HEAD and not expiry_stale(num(expires, nil), counted_us)
      and not redis.call('ZRANGE', KEYS[K_QUEUE], 0, 0)[1] then
    return {'R', redis.call('ZREM', KEYS[K_HOLDERS], ARGV[14])}
  end
end

read_state()

-- Keys this call may have created (a written key that was empty, hence absent): they get the
-- budget's deadline in `finish` (see `keep_alive`), so that every key expires when idle.
local fresh = {}
local function mark(k)
  fresh[k] = true
end

-- The caller's limits (ARGV 3-8, 13) against the stored ones: a budget met for the first time
-- takes the caller's; one that may have been lost starts conservatively (`recovering_until`);
-- different limits that do not replace the stored ones are a conflict. Rare (the digest is
-- the caller's at every other call), so its helpers are defined here, only when needed.
if digest ~= ARGV[2] then
  local function store_config(epoch)
    mark(K_CONFIG)
    mark(K_STATE)
    redis.call('HSET', KEYS[K_CONFIG], 'digest', ARGV[2], 'max_concurrent', ARGV[3],
      'rpm', ARGV[4], 'tpm', ARGV[5], 'window_us', ARGV[6], 'margin_us', ARGV[7],
      'burst', ARGV[8], 'adaptive', ARGV[13])
    if epoch then redis.call('HSET', KEYS[K_STATE], 'epoch', epoch) end
    -- Learning starts over with these limits: an adaptive budget missing a rate limit starts
    -- conservatively (issue 8).
    local discovering = ARGV[13] == '1' and (tonumber(ARGV[4]) <= 0 or tonumber(ARGV[5]) <= 0)
    redis.call('HSET', KEYS[K_STATE], 'l_rpm', -1, 'l_tpm', -1, 'factor', 1000,
      'discovering', discovering and 1 or 0, 'limits', '', 'limits_at', int(now))
  end

  -- When a budget the server does not know may have been lost, so that its last window may
  -- have been full: no rate grant before this instant (0: none).
  local function recovering_until()
    local counted = tonumber(ARGV[6]) + tonumber(ARGV[7])
    -- The caller knew the budget: its state was lost (a flush, an eviction, a restart).
    if ARGV[11] ~= '' then return now + counted end
    -- A server that started less than a window ago cannot tell a new budget from one it lost
    -- in its restart, whoever asks first: count from its start, taken at its latest. Uptime
    -- is the difference of two whole-second clocks, so it reads 1 as early as a few ms after
    -- a start that straddled a second: the server may be up to 1 s younger than it says.
    local info = redis.call('INFO', 'server')
    local uptime = tonumber(string.match(info, 'uptime_in_seconds:(%d+)') or '')
    if uptime then
      local youngest = math.max(uptime - 1, 0) * 1000000
      if youngest < counted then return now - youngest + counted end
    end
    return 0
  end

  if not digest then
    store_config(int(now))
    local until_ = recovering_until()
    if until_ > now then
      redis.call('HSET', KEYS[K_STATE], 'recovering_until', int(until_))
    end
  elseif ARGV[10] == '1' then
    store_config(nil)
  else
    local v = redis.call('HMGET', KEYS[K_CONFIG], 'digest', 'max_concurrent', 'rpm', 'tpm',
      'window_us', 'margin_us', 'burst', 'adaptive')
    return {'CONFLICT', v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8] or '0'}
  end
  read_state() -- as `store_config` reset it
end

-- The budget's configuration: the caller's limits, which are now the stored ones. The limits
-- in force (`apply_learning`) may be lower than those configured.
local cfg = {max_concurrent = tonumber(ARGV[3]), rpm = tonumber(ARGV[4]),
  tpm = tonumber(ARGV[5]), window_us = tonumber(ARGV[6]), margin_us = tonumber(ARGV[7]),
  burst = tonumber(ARGV[8]), adaptive = ARGV[13] == '1'}
cfg.counted_us = cfg.window_us + cfg.margin_us
cfg.configured = {cfg.max_concurrent, cfg.rpm, cfg.tpm}

-- Pacing for the rpm in force.
local function pace()
  if cfg.rpm > 0 then
    cfg.interval_us = math.floor(cfg.window_us / cfg.rpm)
    if cfg.interval_us < 1 then cfg.interval_us = 1 end
    local burst = math.min(cfg.burst, cfg.rpm)
    cfg.tolerance_us = cfg.interval_us * (burst - 1)
    cfg.lateness_us = math.min(math.floor(cfg.interval_us / 4), 2000)
  end
end

-- The state, decoded. Assignments to it are noted, so that `save_state` writes only the fields
-- that changed.
local values, changed = {}, {}
local state = setmetatable({}, {__index = values, __newindex = function(_, name, value)
  if values[name] ~= value then
    values[name] = value
    changed[name] = true
  end
end})

-- Decoded inline: a call per field would cost ~0.15 µs each.
do
  local v, s = values, stored
  v.tat = tonumber(s[1])
  v.paused_until = tonumber(s[2]) or 0
  v.recovering_until = tonumber(s[3]) or 0
  v.next_id = tonumber(s[4]) or 1
  v.tok_used = tonumber(s[5]) or 0
  v.epoch = s[6] or ''
  v.announced = s[7] or ''
  v.l_rpm = tonumber(s[8]) or -1
  v.l_tpm = tonumber(s[9]) or -1
  v.factor = tonumber(s[10]) or 1000
  v.f_step = tonumber(s[11]) or 0
  v.limits = s[12] or ''
  v.discovering = s[13] == '1'
  v.due = tonumber(s[14]) or 0 -- unknown: prune at once
  v.expires = tonumber(s[15])
  v.acquired = tonumber(s[16]) or 0
  v.tokens_charged = tonumber(s[17]) or 0
end

-- What the processes of the budget learned from the provider (issue 8), shared: the limits
-- its headers reported (which only ever lower the configured ones), an AIMD factor lowered by
-- a 429 nothing explained and raised again step by step, and an adaptive budget's cautious
-- start before anyone saw the provider's limits. As src/core/adaptive.rs, on the server.
local FULL, DECREASE, STEP, MIN_FACTOR = 1000, 700, 50, 100

local function step_us()
  return math.max(math.floor(cfg.window_us / 10), 1)
end

local function in_force(configured, learned)
  local limit = configured
  if learned > 0 and (limit <= 0 or learned < limit) then limit = learned end
  if limit <= 0 then return -1 end
  return math.max(math.floor(limit * state.factor / FULL), 1)
end

-- Records the limits in force and why, for `status` (python/crewthrottle/_status.py), which
-- reads the state hash: "max_concurrent rpm tpm reason" (-1: no limit), with the reasons and
-- their precedence of src/py/adaptive.rs, and `limits_at`, when they last changed; '' when
-- they are the configured ones. Written only when they change (`save_state`): since the AIMD
-- recovery is computed at each call (`apply_learning`), this is what the latest call computed.
local function record_limits()
  local reason = ''
  if state.factor < FULL then
    reason = '429'
  elseif cfg.adaptive and state.discovering then
    reason = 'conservative'
  elseif cfg.max_concurrent ~= cfg.configured[1] or cfg.rpm ~= cfg.configured[2]
      or cfg.tpm ~= cfg.configured[3] then
    reason = 'headers'
  end
  local limits = ''
  if reason ~= '' then
    limits = int(cfg.max_concurrent) .. ' ' .. int(cfg.rpm) .. ' ' .. int(cfg.tpm) .. ' ' .. reason
  end
  if limits ~= state.limits then
    state.limits = limits
    state.limits_at = now
  end
end

-- Puts the limits in force: learned, lowered, or cautious (one at a time, one a second).
local function apply_learning()
  if state.factor < FULL then
    -- The additive increase that time without a 429 earned.
    local steps = math.floor((now - state.f_step) / step_us())
    if steps > 0 then
      state.factor = math.min(FULL, state.factor + STEP * steps)
      state.f_step = state.f_step + steps * step_us()
    end
  end
  -- From the configured limits each time (`learn` and `rate_limited` apply it twice). Nothing
  -- learned nor lowered (the common case): they stand as they are (>= 1 or -1: none), without
  -- in_force's arithmetic.
  cfg.max_concurrent = cfg.configured[1]
  if state.factor < FULL or state.l_rpm > 0 or state.l_tpm > 0 then
    cfg.rpm = in_force(cfg.configured[2], state.l_rpm)
    cfg.tpm = in_force(cfg.configured[3], state.l_tpm)
  else
    cfg.rpm, cfg.tpm = cfg.configured[2], cfg.configured[3]
  end
  if cfg.adaptive and state.discovering then
    if cfg.max_concurrent <= 0 or cfg.max_concurrent > 1 then cfg.max_concurrent = 1 end
    local one_a_second = math.max(math.ceil(cfg.window_us / 1000000), 1)
    if cfg.rpm <= 0 or cfg.rpm > one_a_second then cfg.rpm = one_a_second end
  end
  pace()
  record_limits()
end

local function count(name, by)
  by = by or 1
  if by == 0 then return end
  if name == 'acquired' or name == 'tokens_charged' then
    state[name] = state[name] + by
  else
    redis.call('HINCRBY', KEYS[K_STATE], name, int(by))
  end
end

local function encode(value)
  if value == true then return '1' end
  if value == false then return '0' end
  if type(value) == 'string' then return value end
  return int(value)
end

-- Writes the fields that changed, in one HSET.
local function save_state()
  local fields = {}
  for name in pairs(changed) do
    if values[name] ~= nil then
      fields[#fields + 1] = name
      fields[#fields + 1] = encode(values[name])
    end
  end
  if #fields > 0 then redis.call('HSET', KEYS[K_STATE], unpack(fields)) end
end

local function new_id()
  local id = state.next_id
  state.next_id = id + 1
  return id
end

-- Sliding windows --------------------------------------------------------------------------

local function expire_windows()
  local cutoff = now - cfg.counted_us
  if cfg.rpm > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[K_REQS], '-inf', int(cutoff))
  end
  if cfg.tpm > 0 then
    local old = redis.call('ZRANGEBYSCORE', KEYS[K_TOKS], '-inf', int(cutoff))
    for _, id in ipairs(old) do
      state.tok_used = state.tok_used - num(redis.call('HGET', KEYS[K_AMOUNTS], id), 0)
      redis.call('HDEL', KEYS[K_AMOUNTS], id)
    end
    if #old > 0 then
      redis.call('ZREMRANGEBYSCORE', KEYS[K_TOKS], '-inf', int(cutoff))
    end
    if state.tok_used < 0 then state.tok_used = 0 end
  end
end

-- The first instant at which one more request fits in the requests window, and how many
-- requests it holds.
local function requests_ready()
  local used = redis.call('ZCARD', KEYS[K_REQS])
  if used < cfg.rpm then return now, used end
  local oldest = redis.call('ZRANGE', KEYS[K_REQS], used - cfg.rpm, used - cfg.rpm, 'WITHSCORES')
  return tonumber(oldest[2]) + cfg.counted_us, used
end

-- The first instant at which `tokens` more fit in the tokens window.
local function tokens_ready(tokens)
  local over = state.tok_used + tokens - cfg.tpm
  if over <= 0 then return now end
  local entries = redis.call('ZRANGE', KEYS[K_TOKS], 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    over = over - num(redis.call('HGET', KEYS[K_AMOUNTS], entries[i]), 0)
    if over <= 0 then return tonumber(entries[i + 1]) + cfg.counted_us end
  end
  return now + cfg.counted_us
end

-- Adds to entry `id` of the tokens window (`held`: what it holds, if known).
local function add_tokens(id, amount, held)
  held = held or num(redis.call('HGET', KEYS[K_AMOUNTS], id), 0)
  local added = math.min(amount, ENTRY_CAP - held)
  redis.call('HSET', KEYS[K_AMOUNTS], id, int(held + added))
  mark(K_AMOUNTS)
  state.tok_used = state.tok_used + added
end

-- Pacing (GCRA), as src/core/pacer.rs -------------------------------------------------------

local function pacer_ready()
  if cfg.rpm <= 0 or not state.tat then return now end
  return math.max(now, state.tat - cfg.tolerance_us)
end

local function pacer_record()
  if cfg.rpm <= 0 then return end
  local start = now
  if state.tat and now <= state.tat + cfg.lateness_us then start = state.tat end
  state.tat = start + cfg.interval_us
end

-- Grants -------------------------------------------------------------------------------------

-- Leases (and reaped grants' records) fall due: `state.due` is never later than the first of
-- them, so that `prune` has nothing to do before it. Every ZADD to holders, queue leases or
-- reaped lowers it.
local NEVER = 9007199254740992 -- 2^53 µs: nothing to prune until something is added

local function lower_due(at)
  if at < state.due then state.due = at end
end

-- The later of a hold (`ready`, by the limit `by`) and the hold of limit `name` until `at`.
-- (A function of its arguments only: a closure over try_take's locals would be created at
-- each call.)
local function later(ready, by, at, name)
  if at > ready then return at, name end
  return ready, by
end

-- Grants `tokens` now, or says when to ask again: {true, grant id} or {false, retry_at or -1,
-- the limit that holds it}.
local function try_take(tokens, lease_us)
  local holding = -1 -- holders' count, if read
  if cfg.max_concurrent >= 0 then
    holding = redis.call('ZCARD', KEYS[K_HOLDERS])
    if holding >= cfg.max_concurrent then return {false, -1, 'max_concurrent'} end
  end
  local ready, by = later(now, nil, state.paused_until, 'pause')
  ready, by = later(ready, by, state.recovering_until, 'recovering')
  local requests = 0
  if cfg.rpm > 0 then
    ready, by = later(ready, by, pacer_ready(), 'pacing')
    local at
    at, requests = requests_ready()
    ready, by = later(ready, by, at, 'rpm')
  end
  if cfg.tpm > 0 and tokens > 0 then ready, by = later(ready, by, tokens_ready(tokens), 'tpm') end
  if ready > now then return {false, ready, by} end
  local id = new_id()
  pacer_record()
  redis.call('ZADD', KEYS[K_HOLDERS], int(now + lease_us), id)
  lower_due(now + lease_us)
  if holding <= 0 then mark(K_HOLDERS) end
  if cfg.rpm > 0 then
    redis.call('ZADD', KEYS[K_REQS], int(now), id)
    if requests == 0 then mark(K_REQS) end
  end
  if cfg.tpm > 0 and tokens > 0 then
    redis.call('ZADD', KEYS[K_TOKS], int(now), id)
    mark(K_TOKS)
    add_tokens(id, tokens, 0) -- a new id holds nothing yet
  end
  state.acquired = state.acquired + 1 -- as `count`, without its calls
  if tokens > 0 then state.tokens_charged = state.tokens_charged + tokens end
  return {true, id}
end

local handed_now = {}
local head_retry = -1
local head_ticket = -1

-- Serves the queue in order while the head can be granted; grants are kept for their
-- waiters, who take them with `poll`. Notes the head's retry instant for the announcement.
-- Returns whether the queue is empty.
local function dispatch()
  while true do
    local head = redis.call('ZRANGE', KEYS[K_QUEUE], 0, 0)[1]
    if not head then return true end
    local info = redis.call('HGET', KEYS[K_QINFO], head)
    local tokens, since = string.match(info or '0 0', '^(%d+) (%d+)')
    tokens = tonumber(tokens)
    local lease_us = redis.call('ZSCORE', KEYS[K_QLEASE], head)
    lease_us = math.max(num(lease_us, now) - now, 1000000)
    local r = try_take(tokens, lease_us)
    if not r[1] then
      head_ticket, head_retry = tonumber(head), r[2]
      return false
    end
    redis.call('ZREM', KEYS[K_QUEUE], head)
    redis.call('HDEL', KEYS[K_QINFO], head)
    redis.call('HSET', KEYS[K_HANDED], head,
      int(r[2]) .. ' ' .. int(tokens) .. ' ' .. int(now) .. ' ' .. since)
    mark(K_HANDED)
    handed_now[#handed_now + 1] = head
  end
end

-- Tells every process what changed for waiters: grants handed (to be taken by their owners)
-- and the head of the queue with the time it may be served (-1: at a release). Said only when
-- it changed, so idle waiters hear nothing.
local function announce()
  if #handed_now == 0 and head_ticket < 0 and state.announced == NO_HEAD then return end
  local head = int(head_ticket) .. ';' .. int(head_retry)
  if #handed_now == 0 and head == state.announced then return end
  state.announced = head
  local retry = -1
  if head_retry >= 0 then retry = math.max(head_retry - now, 0) end
  redis.call('PUBLISH', ARGV[12],
    table.concat(handed_now, ',') .. ';' .. int(head_ticket) .. ';' .. int(retry))
end

-- Plans the keys' deadline (before `save_state`, which stores it); the keys to give it.
local function keep_alive()
  if expiry_stale(state.expires, cfg.counted_us) then
    state.expires = deadline_ms(cfg.counted_us)
    return KEYS
  end
  local keys = {}
  for k in pairs(fresh) do keys[#keys + 1] = KEYS[k] end
  return keys
end

local function expire(keys)
  for _, key in ipairs(keys) do
    redis.call('PEXPIREAT', key, int(state.expires))
  end
end

-- After the state is written: a new state hash exists only then.
local function finish(reply)
  announce()
  local keys = keep_alive()
  save_state()
  expire(keys)
  return reply
end

local function retry_in(ticket)
  if head_ticket == ticket and head_retry >= 0 then return head_retry - now end
  return -1
end

-- Helpers only the rare ops and the rare moments of the common ones need (a lease due, a grant
-- given back): defined only for a call that may need them, since defining a function costs
-- every call that runs past its definition (~0.3 µs each on the server, benches/RESULTS.md).
local give_back, refund_tokens, prune
if now >= state.due or not (op == 'acquire' or op == 'release' or op == 'poll') then
  -- Takes back up to `amount` tokens from entry `id`; what it took.
  function refund_tokens(id, amount)
    local held = num(redis.call('HGET', KEYS[K_AMOUNTS], id), nil)
    if not held then return 0 end
    local taken = math.min(amount, held)
    redis.call('HSET', KEYS[K_AMOUNTS], id, int(held - taken))
    state.tok_used = state.tok_used - taken
    return taken
  end

  -- Gives back a grant that was never used: its slot, its windows, its pacing (GCRA's refund).
  function give_back(id, tokens)
    if redis.call('ZREM', KEYS[K_HOLDERS], id) == 0 then return end
    if cfg.rpm > 0 then
      if state.tat then state.tat = state.tat - cfg.interval_us end
      redis.call('ZREM', KEYS[K_REQS], id)
    end
    if cfg.tpm > 0 and tokens > 0 then
      count('tokens_refunded', refund_tokens(id, tokens))
    end
  end

  local function lowest(k)
    local first = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
    return tonumber(first[2] or NEVER)
  end

  -- Leases: holders and queued waiters of a process that stopped renewing them are dropped,
  -- once one is due.
  function prune()
    if now < state.due then return end
    local dead = redis.call('ZRANGEBYSCORE', KEYS[K_HOLDERS], '-inf', int(now))
    for _, id in ipairs(dead) do
      redis.call('ZADD', KEYS[K_REAPED], int(now), id)
      mark(K_REAPED)
    end
    if #dead > 0 then
      redis.call('ZREMRANGEBYSCORE', KEYS[K_HOLDERS], '-inf', int(now))
      count('reaped', #dead)
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[K_REAPED], '-inf', int(now - 2 * cfg.counted_us))
    local lost = redis.call('ZRANGEBYSCORE', KEYS[K_QLEASE], '-inf', int(now))
    for _, ticket in ipairs(lost) do
      redis.call('ZREM', KEYS[K_QUEUE], ticket)
      redis.call('HDEL', KEYS[K_QINFO], ticket)
      local handed = redis.call('HGET', KEYS[K_HANDED], ticket)
      if handed then
        local gid, tokens = string.match(handed, '^(%d+) (%d+)')
        give_back(gid, tonumber(tokens))
        redis.call('HDEL', KEYS[K_HANDED], ticket)
      end
    end
    if #lost > 0 then
      redis.call('ZREMRANGEBYSCORE', KEYS[K_QLEASE], '-inf', int(now))
      count('cancelled', #lost)
    end
    state.due = math.min(lowest(K_HOLDERS), lowest(K_QLEASE),
      lowest(K_REAPED) + 2 * cfg.counted_us)
  end
else
  prune = function() end -- nothing is due (the test above)
end

-- The ops ------------------------------------------------------------------------------------

apply_learning()
local epoch_changed = (ARGV[11] ~= '' and ARGV[11] ~= state.epoch) and 1 or 0

if op == 'stats' then
  expire_windows()
  prune()
  local keys = keep_alive() -- a budget only ever read must expire too
  save_state()
  expire(keys)
  local COUNTERS = {'acquired', 'tokens_charged', 'tokens_refunded', 'cancelled', 'reaped',
    'total_wait_us', 'timeouts'}
  local c = {}
  for i, v in ipairs(redis.call('HMGET', KEYS[K_STATE], unpack(COUNTERS))) do
    c[COUNTERS[i]] = num(v, 0)
  end
  return {'S', redis.call('ZCARD', KEYS[K_HOLDERS]), redis.call('ZCARD', KEYS[K_QUEUE]),
    cfg.rpm > 0 and redis.call('ZCARD', KEYS[K_REQS]) or -1,
    cfg.tpm > 0 and state.tok_used or -1,
    math.max(state.paused_until, state.recovering_until, now) - now,
    c.acquired, c.tokens_charged, c.tokens_refunded, c.cancelled, c.reaped, c.total_wait_us,
    c.timeouts, state.epoch, cfg.max_concurrent, cfg.rpm, cfg.tpm, cfg.window_us,
    cfg.margin_us, cfg.burst, state.l_rpm, state.l_tpm, state.factor,
    state.discovering and 1 or 0, cfg.configured[1], cfg.configured[2], cfg.configured[3]}
end

if op == 'learn' then
  -- ARGV 14: the rpm, 15: the tpm the provider's headers reported (-1: none), 16: "0" once
  -- the provider's limits have been seen (the cautious start ends).
  local rpm, tpm = tonumber(ARGV[14]), tonumber(ARGV[15])
  if rpm > 0 then state.l_rpm = rpm end
  if tpm > 0 then state.l_tpm = tpm end
  if ARGV[16] == '0' then state.discovering = false end
  apply_learning()
  expire_windows()
  prune()
  dispatch() -- the limits may have risen: serve whoever now fits
  return finish({'L', cfg.max_concurrent, cfg.rpm, cfg.tpm, state.factor})
end

if op == 'rate_limited' then
  -- A 429 nothing explained: the multiplicative decrease, at most once a step.
  values.f_event = num(redis.call('HGET', KEYS[K_STATE], 'f_event'), nil)
  if not state.f_event or now - state.f_event >= step_us() then
    state.f_event = now
    state.factor = math.max(math.floor(state.factor * DECREASE / FULL), MIN_FACTOR)
    state.f_step = now
    apply_learning()
  end
  return finish({'L', cfg.max_concurrent, cfg.rpm, cfg.tpm, state.factor})
end

expire_windows()
prune()
local queue_empty = dispatch()

if op == 'acquire' then
  -- ARGV 14: tokens, 15: lease_us, 16: "1" to queue when not granted at once
  local tokens, lease_us = tonumber(ARGV[14]), tonumber(ARGV[15])
  local first = queue_empty
  local r = {false, -1, 'queue'}
  if first then
    r = try_take(tokens, lease_us)
    if r[1] then
      return finish({'G', r[2], tokens, 0, state.epoch, epoch_changed, int(now)})
    end
  end
  if ARGV[16] ~= '1' then
    local retry = -1
    if r[2] >= 0 then retry = r[2] - now end
    return finish({'N', retry, r[3] or 'max_concurrent', state.epoch, epoch_changed})
  end
  local ticket = new_id()
  redis.call('ZADD', KEYS[K_QUEUE], int(ticket), int(ticket))
  redis.call('HSET', KEYS[K_QINFO], int(ticket), int(tokens) .. ' ' .. int(now))
  redis.call('ZADD', KEYS[K_QLEASE], int(now + lease_us), int(ticket))
  lower_due(now + lease_us)
  mark(K_QUEUE)
  mark(K_QINFO)
  mark(K_QLEASE)
  if first then head_ticket, head_retry = ticket, r[2] end
  return finish({'Q', ticket, retry_in(ticket), state.epoch, epoch_changed})
end

if op == 'poll' then
  -- ARGV 14: ticket, 15: lease_us
  local ticket, lease_us = tonumber(ARGV[14]), tonumber(ARGV[15])
  -- The grant handed to the ticket, if it is still held: {'G', grant id, tokens, waited_us,
  -- epoch, epoch changed, the server time it was granted}.
  local handed = redis.call('HGET', KEYS[K_HANDED], ticket)
  if handed then
    redis.call('HDEL', KEYS[K_HANDED], ticket)
    local gid, tokens, granted, since = string.match(handed, '^(%d+) (%d+) (%d+) (%d+)')
    if redis.call('ZSCORE', KEYS[K_HOLDERS], gid) then
      redis.call('ZADD', KEYS[K_HOLDERS], 'XX', int(now + lease_us), gid)
      lower_due(now + lease_us)
      local waited = now - tonumber(since)
      count('total_wait_us', waited)
      return finish({'G', tonumber(gid), tonumber(tokens), waited, state.epoch, epoch_changed,
        granted})
    end
  end
  if redis.call('ZSCORE', KEYS[K_QUEUE], ticket) then
    redis.call('ZADD', KEYS[K_QLEASE], 'XX', int(now + lease_us), ticket)
    lower_due(now + lease_us)
    return finish({'W', retry_in(ticket)})
  end
  return finish({'U'})
end

if op == 'abandon' then
  -- ARGV 14: ticket, 15: "timeout" or "cancelled"
  local ticket = ARGV[14]
  local handed = redis.call('HGET', KEYS[K_HANDED], ticket)
  local known = false
  if handed then
    local gid, tokens = string.match(handed, '^(%d+) (%d+)')
    give_back(gid, tonumber(tokens))
    redis.call('HDEL', KEYS[K_HANDED], ticket)
    known = true
  elseif redis.call('ZREM', KEYS[K_QUEUE], ticket) == 1 then
    redis.call('HDEL', KEYS[K_QINFO], ticket)
    redis.call('ZREM', KEYS[K_QLEASE], ticket)
    known = true
  end
  if known then
    count(ARGV[15] == 'timeout' and 'timeouts' or 'cancelled')
    dispatch()
  end
  return finish({'A', known and 1 or 0})
end

if op == 'release' then
  -- ARGV 14: grant id. Refused (0) when its lease expired and the slot was reaped: a late
  -- release never frees a slot twice.
  local released = redis.call('ZREM', KEYS[K_HOLDERS], ARGV[14])
  if released == 1 then dispatch() end
  return finish({'R', released})
end

if op == 'settle' then
  -- ARGV 14: grant id, 15: tokens charged so far, 16: actual tokens. Refused (0) for a
  -- grant reaped with its lease.
  local gid, charged, actual = ARGV[14], tonumber(ARGV[15]), tonumber(ARGV[16])
  if redis.call('ZSCORE', KEYS[K_REAPED], gid) then return finish({'R', 0}) end
  if cfg.tpm > 0 then
    local in_window = redis.call('ZSCORE', KEYS[K_TOKS], gid)
    if actual < charged then
      count('tokens_refunded', refund_tokens(gid, charged - actual))
    elseif actual > charged then
      if not in_window then
        redis.call('ZADD', KEYS[K_TOKS], int(now), gid)
        mark(K_TOKS)
      end
      add_tokens(gid, actual - charged)
      count('tokens_charged', actual - charged)
    end
  elseif actual > charged then
    count('tokens_charged', actual - charged)
  else
    count('tokens_refunded', charged - actual)
  end
  dispatch()
  return finish({'R', 1})
end

if op == 'redate' then
  -- ARGV 14: grant id, 15: microseconds later than recorded that it really started.
  local gid, later = ARGV[14], tonumber(ARGV[15])
  for _, key in ipairs({KEYS[K_REQS], KEYS[K_TOKS]}) do
    local at = redis.call('ZSCORE', key, gid)
    if at then redis.call('ZADD', key, 'XX', int(tonumber(at) + later), gid) end
  end
  return finish({'R', 1})
end

if op == 'pause' then
  -- ARGV 14: microseconds
  local started = state.paused_until <= now
  state.paused_until = math.max(state.paused_until, now + tonumber(ARGV[14]))
  return finish({'P', (started and state.paused_until > now) and 1 or 0})
end

if op == 'resume' then
  state.paused_until = 0
  dispatch()
  return finish({'P', 1})
end

if op == 'renew' then
  -- ARGV 14: lease_us, 15: count of grant ids, then grant ids, then tickets.
  -- Extends the leases of a live process's holders and queued waiters. Grants unknown here
  -- after the state was lost (a new epoch) are adopted again; reaped ones are reported lost.
  -- Handed tickets are reported so that the process takes them (a lost announcement).
  local lease_us, n = tonumber(ARGV[14]), tonumber(ARGV[15])
  local lost, handed = {}, {}
  lower_due(now + lease_us)
  for i = 16, 15 + n do
    local gid = ARGV[i]
    if redis.call('ZADD', KEYS[K_HOLDERS], 'XX', 'CH', int(now + lease_us), gid) == 0
        and not redis.call('ZSCORE', KEYS[K_HOLDERS], gid) then
      if epoch_changed == 1 and not redis.call('ZSCORE', KEYS[K_REAPED], gid) then
        redis.call('ZADD', KEYS[K_HOLDERS], int(now + lease_us), gid)
        mark(K_HOLDERS)
      else
        lost[#lost + 1] = gid
      end
    end
  end
  for i = 16 + n, #ARGV do
    local ticket = ARGV[i]
    if redis.call('HEXISTS', KEYS[K_HANDED], ticket) == 1 then
      handed[#handed + 1] = ticket
    elseif redis.call('ZADD', KEYS[K_QLEASE], 'XX', 'CH', int(now + lease_us), ticket) == 0
        and not redis.call('ZSCORE', KEYS[K_QLEASE], ticket) then
      lost[#lost + 1] = 't' .. ticket
    end
  end
  dispatch()
  return finish({'N', table.concat(lost, ','), table.concat(handed, ','), head_ticket,
    retry_in(head_ticket), state.epoch})
end

return redis.error_reply('crewthrottle: unknown op ' .. tostring(op))
