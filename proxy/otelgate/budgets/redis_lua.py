"""Lua scripts of the Redis ledger. Each runs atomically inside Redis, so replicas never interleave a
check with an update. The arithmetic mirrors ``sqlite.py`` line for line; the shared test suite keeps them
equal. Keys are built from ARGV[1] (the prefix), so these scripts assume one Redis (not Cluster)."""

PRELUDE = r"""
local P = ARGV[1]
local F = {'su','st','sc','ru','rt','rc'}

local function n(x) return string.format('%.0f', x) end

-- Expiry is garbage collection only (logic uses the instants passed in), so never in the server's past.
-- The server's clock, read once per script run (a script runs atomically: it does not move meanwhile).
local server_now = nil
local function expire_at(k, exp)
  if server_now == nil then server_now = tonumber(redis.call('TIME')[1]) end
  redis.call('EXPIREAT', k, math.ceil(math.max(exp, server_now + 60)))
end

local function hget6(k)
  local v = redis.call('HMGET', k, 'su','st','sc','ru','rt','rc')
  for i = 1, 6 do v[i] = tonumber(v[i]) or 0 end
  return v
end

local function roll(ref, now)
  local tk = P .. 'c:' .. ref.k
  local zk = tk .. ':z'
  local cutoff = math.floor((now - ref.W) / ref.Z) * ref.Z
  local old = redis.call('ZRANGEBYSCORE', zk, '-inf', '(' .. n(cutoff))
  for _, b in ipairs(old) do
    local bk = tk .. ':b:' .. b
    local v = hget6(bk)
    for i = 1, 6 do
      if v[i] ~= 0 then redis.call('HINCRBY', tk, F[i], n(-v[i])) end
    end
    redis.call('DEL', bk)
  end
  if #old > 0 then redis.call('ZREMRANGEBYSCORE', zk, '-inf', '(' .. n(cutoff)) end
  return cutoff
end

local function read(ref, now)
  local tk = P .. 'c:' .. ref.k
  if ref.r == 1 then
    roll(ref, now)
  elseif ref.s > 0 then
    local x = tonumber(redis.call('HGET', tk, 'x'))
    if x and x < now then redis.call('DEL', tk) end  -- an idle session past its TTL starts afresh
  end
  return hget6(tk)
end

local function add(k, d)
  for i = 1, 6 do
    if d[i] ~= 0 then
      local v = redis.call('HINCRBY', k, F[i], n(d[i]))
      if i > 3 and v < 0 then redis.call('HSET', k, F[i], 0) end
    end
  end
end

local function apply(ref, d, now)
  local tk = P .. 'c:' .. ref.k
  local exp
  if ref.r == 1 then
    local cutoff = roll(ref, now)
    if ref.b < cutoff then return end
    exp = now + ref.W + ref.Z + 60
    local b = n(ref.b)
    local bk = tk .. ':b:' .. b
    add(bk, d)
    add(tk, d)
    redis.call('ZADD', tk .. ':z', b, b)
    expire_at(bk, exp)
    expire_at(tk .. ':z', exp)
  else
    add(tk, d)
    if ref.s > 0 then
      exp = now + ref.s
      redis.call('HSET', tk, 'x', string.format('%.6f', exp))
    else
      exp = ref.e
    end
  end
  expire_at(tk, exp)
end

local function register(ref, now)
  local exp
  if ref.s > 0 then exp = now + ref.s else exp = math.max(ref.e, now + ref.W) end
  redis.call('SET', P .. 'l:' .. ref.rk, ref.L)
  expire_at(P .. 'l:' .. ref.rk, exp)
  redis.call('ZADD', P .. 'lidx', exp, ref.rk)
end

local function drop(id, now)
  local k = P .. 'r:' .. id
  local body = redis.call('HGET', k, 'body')
  if body then
    local p = cjson.decode(body)
    local a = p.amt
    for _, ref in ipairs(p.refs) do apply(ref, {0, 0, 0, -a[1], -a[2], -a[3]}, now) end
    redis.call('DEL', k)
  end
  redis.call('ZREM', P .. 'rexp', id)
  return body
end

local function sweep(now)
  local ids = redis.call('ZRANGEBYSCORE', P .. 'rexp', '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(ids) do drop(id, now) end
end

local function rolling_reset(ref, u, allowed)
  if allowed < 0 then return -1 end
  local tk = P .. 'c:' .. ref.k
  local v = hget6(tk)
  local cur = v[u] + v[u + 3]
  local bs = redis.call('ZRANGE', tk .. ':z', 0, -1)
  for _, b in ipairs(bs) do
    local bv = hget6(tk .. ':b:' .. b)
    cur = cur - bv[u] - bv[u + 3]
    if cur <= allowed then return tonumber(b) + ref.Z + ref.W end
  end
  return -1
end
"""

# Token buckets of one key, shared by RATE and a reserve with a folded rate limit.
# rate_check(key, rpm (-1 none), tpm (-1 none), tokens, now) -> levels or {0, unit, level}; rate_take writes.
RATE_FUNCS = r"""
local RATE_UNITS = {'requests', 'tokens'}

local function rate_check(key, caps, needs, now)
  local levels = {}
  for u = 1, 2 do
    if caps[u] >= 0 then
      local v = redis.call('HMGET', P .. 'q:' .. key .. '|' .. RATE_UNITS[u], 'lv', 'at')
      local lv = tonumber(v[1])
      local at = tonumber(v[2])
      if lv == nil or at == nil then lv = caps[u]
      else lv = math.min(caps[u], lv + math.max(0, now - at) * caps[u] / 60) end
      levels[u] = lv
      if needs[u] > lv then return nil, {0, u, string.format('%.6f', lv)} end
    end
  end
  return levels, nil
end

local function rate_take(key, caps, needs, levels, now)
  for u = 1, 2 do
    if caps[u] >= 0 then
      local k = P .. 'q:' .. key .. '|' .. RATE_UNITS[u]
      redis.call('HSET', k, 'lv', string.format('%.6f', levels[u] - needs[u]), 'at', string.format('%.6f', now))
      redis.call('EXPIRE', k, 120)
    end
  end
end
"""

# ARGV: prefix, now, id, reservation ttl, payload {refs, amt}, rate key id ('' none), rpm (-1 none), tpm (-1 none),
# tokens, register ('0': the caller registered these limits within the last minute): with a rate key the rate
# limit is checked first and taken only when the budgets admit too.
# -> {1, exp} | {2} settled | {0, ref, unit, current, reset} | {3, unit, level} rate refused
RESERVE = PRELUDE + RATE_FUNCS + r"""
local now = tonumber(ARGV[2])
local id = ARGV[3]
local ttl = tonumber(ARGV[4])
sweep(now)
local rk = P .. 'r:' .. id
local held = redis.call('HGET', rk, 'exp')
if held then return {1, held} end
if redis.call('EXISTS', P .. 'd:' .. id) == 1 then return {2} end
local rkey = ARGV[6]
if rkey == '' then rkey = nil end
local rcaps, rneeds, rlevels
if rkey then
  rcaps = {tonumber(ARGV[7]), tonumber(ARGV[8])}
  rneeds = {1, tonumber(ARGV[9])}
  local refused
  rlevels, refused = rate_check(rkey, rcaps, rneeds, now)
  if refused then return {3, refused[2], refused[3]} end
end
local p = cjson.decode(ARGV[5])
local a = p.amt
for i, ref in ipairs(p.refs) do
  local v = read(ref, now)
  local lims = {ref.lu, ref.lt, ref.lc}
  for u = 1, 3 do
    if lims[u] >= 0 and v[u] + v[u + 3] + a[u] > lims[u] then
      local reset = -1
      if ref.r == 1 then reset = rolling_reset(ref, u, lims[u] - a[u]) end
      return {0, i, u, n(v[u] + v[u + 3]), n(reset)}
    end
  end
end
if rkey then rate_take(rkey, rcaps, rneeds, rlevels, now) end
local again = ARGV[10] ~= '0'  -- the caller registered these limits recently: skip rewriting the registry
for _, ref in ipairs(p.refs) do
  apply(ref, {0, 0, 0, a[1], a[2], a[3]}, now)
  if again then register(ref, now) end
end
local exp = string.format('%.6f', now + ttl)
redis.call('HSET', rk, 'body', ARGV[5], 'exp', exp)
expire_at(rk, now + ttl + 3600)
redis.call('ZADD', P .. 'rexp', exp, id)
return {1, exp}
"""

# ARGV: prefix, now, id, settled ttl, actual [u,t,c], fallback payload {refs}
# -> {0} already settled | {1, reservation body, '=' (its refs are the fallback's) or '' (none), six numbers per ref}
SETTLE = PRELUDE + r"""
local now = tonumber(ARGV[2])
local id = ARGV[3]
if redis.call('EXISTS', P .. 'd:' .. id) == 1 then return {0} end
local k = P .. 'r:' .. id
local body = redis.call('HGET', k, 'body')
local refs, a
if body then
  local p = cjson.decode(body)
  refs, a = p.refs, p.amt
else
  refs, a = cjson.decode(ARGV[6]).refs, {0, 0, 0}
end
local x = cjson.decode(ARGV[5])
local out = {1, body or ''}
-- The reservation's references are exactly the caller's own (same day or month): say so instead of sending
-- them back for the caller to decode.
local fb = ARGV[6]
if body and string.sub(body, 1, #fb - 1) == string.sub(fb, 1, #fb - 1) and string.sub(body, #fb, #fb) == ',' then
  out[2] = '='
end
for _, ref in ipairs(refs) do
  apply(ref, {x[1], x[2], x[3], -a[1], -a[2], -a[3]}, now)
  if not body then register(ref, now) end
  local v = hget6(P .. 'c:' .. ref.k)
  for i = 1, 6 do out[#out + 1] = n(v[i]) end
end
redis.call('DEL', k)
redis.call('ZREM', P .. 'rexp', id)
redis.call('SET', P .. 'd:' .. id, '1', 'EX', ARGV[4])
return out
"""

# ARGV: prefix, now, id
RELEASE = PRELUDE + r"""
local body = drop(ARGV[3], tonumber(ARGV[2]))
if body then return 1 end
return 0
"""

# ARGV: prefix, now, payload {refs}  -> six numbers per ref
READ = PRELUDE + r"""
local now = tonumber(ARGV[2])
local out = {}
for _, ref in ipairs(cjson.decode(ARGV[3]).refs) do
  local v = read(ref, now)
  for i = 1, 6 do out[#out + 1] = n(v[i]) end
end
return out
"""

# ARGV: prefix, now, payload {refs}: settled spend goes to zero, reservations stay held
RESET = PRELUDE + r"""
local now = tonumber(ARGV[2])
for _, ref in ipairs(cjson.decode(ARGV[3]).refs) do
  local tk = P .. 'c:' .. ref.k
  if redis.call('EXISTS', tk) == 1 then redis.call('HSET', tk, 'su', 0, 'st', 0, 'sc', 0) end
  if ref.r == 1 then
    for _, b in ipairs(redis.call('ZRANGE', tk .. ':z', 0, -1)) do
      redis.call('HSET', tk .. ':b:' .. b, 'su', 0, 'st', 0, 'sc', 0)
    end
  end
end
return 1
"""

# ARGV: prefix, now, key id, rpm (-1 none), tpm (-1 none), tokens -> {ok, unit, level}
RATE = r"""
local P = ARGV[1]
""" + RATE_FUNCS + r"""
local now = tonumber(ARGV[2])
local caps = {tonumber(ARGV[4]), tonumber(ARGV[5])}
local needs = {1, tonumber(ARGV[6])}
local levels, refused = rate_check(ARGV[3], caps, needs, now)
if refused then return refused end
rate_take(ARGV[3], caps, needs, levels, now)
return {1}
"""
