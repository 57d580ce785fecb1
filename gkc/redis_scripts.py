"""The Lua scripts that change GKC's version registry (:mod:`gkc.redis_registry` runs them).

Each starts with :data:`PRELUDE`: ``DEL`` of a scratch key, a write Redis allows when it is out of memory
(``noeviction`` refuses only commands that may grow memory); a script that has already written may
finish, so registry changes keep working when Redis is full. ``now`` is Redis' ``TIME``: every process
and the two-phase deletion use one clock. KEYS[1] is always the scratch key; the comment above each
script names the rest.
"""

PRELUDE = """
redis.call('DEL', KEYS[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# pinned[number] = true for every live lease (KEYS[pinexp] given as `pk`)
PINNED = """
local function pinned_set(pk)
  local out = {}
  local all = redis.call('HGETALL', pk)
  for i = 1, #all, 2 do
    if tonumber(all[i + 1]) > now then out[string.match(all[i], '^(%d+)|')] = true end
  end
  return out
end
"""

# bases[number] = delta number, for every ready delta (KEYS[state], KEYS[record] given as `sk`, `rk`)
BASES = """
local function bases_of_ready(sk, rk)
  local out = {}
  local all = redis.call('HGETALL', sk)
  for i = 1, #all, 2 do
    if all[i + 1] == 'ready' then
      local raw = redis.call('HGET', rk, all[i])
      if raw then
        local rec = cjson.decode(raw)
        if type(rec['base']) == 'table' then out[tostring(rec['base']['number'])] = all[i] end
      end
    end
  end
  return out
end
"""

# KEYS scratch next epoch state record manifest updated; ARGV floor record manifest epoch
BEGIN = (
    PRELUDE
    + """
local n = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[1])
if n <= floor then n = floor + 1; redis.call('SET', KEYS[2], n) end
redis.call('SET', KEYS[3], ARGV[4], 'NX')
local v = tostring(n)
redis.call('HSET', KEYS[4], v, 'staging')
redis.call('HSET', KEYS[5], v, ARGV[2])
redis.call('HSET', KEYS[6], v, ARGV[3])
redis.call('HSET', KEYS[7], v, tostring(now))
return n
"""
)

# KEYS scratch state updated; ARGV number
HEARTBEAT = (
    PRELUDE
    + """
local st = redis.call('HGET', KEYS[2], ARGV[1])
if st ~= 'staging' then return st or 'missing' end
redis.call('HSET', KEYS[3], ARGV[1], tostring(now))
return 'ok'
"""
)

# KEYS scratch state record updated active reason pinexp; ARGV number max_ready record base_number
# base_publish_id (both '' for a full version). A delta goes ready only while its base is ready and the
# same publish; no base of a ready delta (nor this one's) is retired to make room.
FINISH = (
    PRELUDE
    + PINNED
    + BASES
    + """
local v = ARGV[1]
local st = redis.call('HGET', KEYS[2], v)
if st ~= 'staging' then return {'state', st or 'missing'} end
local protected = bases_of_ready(KEYS[2], KEYS[3])
if ARGV[4] ~= '' then
  local bst = redis.call('HGET', KEYS[2], ARGV[4])
  if bst ~= 'ready' then return {'base', bst or 'gone'} end
  local brec = cjson.decode(redis.call('HGET', KEYS[3], ARGV[4]))
  if brec['publish_id'] ~= ARGV[5] then return {'base', 'another publish (' .. brec['publish_id'] .. ')'} end
  protected[ARGV[4]] = v
end
local active = redis.call('GET', KEYS[5]) or v
local pinned = pinned_set(KEYS[7])
local all = redis.call('HGETALL', KEYS[2])
local ready = {}
for i = 1, #all, 2 do if all[i + 1] == 'ready' then table.insert(ready, tonumber(all[i])) end end
table.sort(ready)
local n = #ready + 1
local retire = {}
for _, r in ipairs(ready) do
  if n <= tonumber(ARGV[2]) then break end
  local s = tostring(r)
  if s ~= active and not pinned[s] and not protected[s] then table.insert(retire, s); n = n - 1 end
end
if n > tonumber(ARGV[2]) then return {'full'} end
redis.call('HSET', KEYS[2], v, 'ready')
redis.call('HSET', KEYS[3], v, ARGV[3])
redis.call('HSET', KEYS[4], v, tostring(now))
if not redis.call('GET', KEYS[5]) then redis.call('SET', KEYS[5], v) end
for _, s in ipairs(retire) do
  redis.call('HSET', KEYS[2], s, 'retiring')
  redis.call('HSET', KEYS[4], s, tostring(now))
  redis.call('HSET', KEYS[6], s, 'retired by the publish of v' .. v)
end
local out = {'ok'}
for _, s in ipairs(retire) do table.insert(out, s) end
return out
"""
)

# KEYS scratch state active; ARGV number
ACTIVATE = (
    PRELUDE
    + """
local st = redis.call('HGET', KEYS[2], ARGV[1])
if not st then return 'missing' end
if st ~= 'ready' then return st end
redis.call('SET', KEYS[3], ARGV[1])
return 'ok'
"""
)

# KEYS scratch state active updated reason pinexp record; ARGV number reason
RETIRE = (
    PRELUDE
    + PINNED
    + BASES
    + """
local st = redis.call('HGET', KEYS[2], ARGV[1])
if not st then return 'missing' end
if st == 'retiring' then return 'retiring' end
if redis.call('GET', KEYS[3]) == ARGV[1] then return 'active' end
if pinned_set(KEYS[6])[ARGV[1]] then return 'pinned' end
local delta = bases_of_ready(KEYS[2], KEYS[7])[ARGV[1]]
if delta then return 'base:' .. delta end
redis.call('HSET', KEYS[2], ARGV[1], 'retiring')
redis.call('HSET', KEYS[4], ARGV[1], tostring(now))
redis.call('HSET', KEYS[5], ARGV[1], ARGV[2])
return 'was:' .. st
"""
)

# KEYS scratch state updated reason; ARGV number reason from_state
MARK = (
    PRELUDE
    + """
local st = redis.call('HGET', KEYS[2], ARGV[1])
if st ~= ARGV[3] then return st or 'missing' end
redis.call('HSET', KEYS[2], ARGV[1], 'damaged')
redis.call('HSET', KEYS[3], ARGV[1], tostring(now))
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
return 'ok'
"""
)

# KEYS scratch state record updated reason next; ARGV number record reason
LOST = (
    PRELUDE
    + """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 and redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  return 'exists'
end
redis.call('HSET', KEYS[2], ARGV[1], 'damaged')
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[1], tostring(now))
redis.call('HSET', KEYS[5], ARGV[1], ARGV[3])
local n = tonumber(redis.call('GET', KEYS[6]) or '0')
if n < tonumber(ARGV[1]) then redis.call('SET', KEYS[6], ARGV[1]) end
return 'ok'
"""
)

# KEYS scratch state updated reason; ARGV lease_s
ABANDON = (
    PRELUDE
    + """
local all = redis.call('HGETALL', KEYS[2])
local out = {}
for i = 1, #all, 2 do
  if all[i + 1] == 'staging' then
    local ts = tonumber(redis.call('HGET', KEYS[3], all[i]) or '0')
    if ts < now - tonumber(ARGV[1]) then
      redis.call('HSET', KEYS[2], all[i], 'retiring')
      redis.call('HSET', KEYS[3], all[i], tostring(now))
      redis.call('HSET', KEYS[4], all[i], 'abandoned: no publisher heartbeat')
      table.insert(out, tonumber(all[i]))
    end
  end
end
return out
"""
)

# KEYS scratch state record manifest updated reason pins pinexp; ARGV number
FORGET = (
    PRELUDE
    + """
local st = redis.call('HGET', KEYS[2], ARGV[1])
if st and st ~= 'retiring' then return st end
for i = 2, 6 do redis.call('HDEL', KEYS[i], ARGV[1]) end
local prefix = ARGV[1] .. '|'
for i = 7, 8 do
  local names = redis.call('HKEYS', KEYS[i])
  for _, f in ipairs(names) do
    if string.sub(f, 1, #prefix) == prefix then redis.call('HDEL', KEYS[i], f) end
  end
end
return 'ok'
"""
)

# KEYS scratch state record pins pinexp; ARGV number holder ttl expected_publish_id ('' = any)
PIN = (
    PRELUDE
    + """
local st = redis.call('HGET', KEYS[2], ARGV[1])
if st ~= 'ready' then return {'state', st or 'missing'} end
local rec = cjson.decode(redis.call('HGET', KEYS[3], ARGV[1]))
if ARGV[4] ~= '' and rec['publish_id'] ~= ARGV[4] then return {'identity', rec['publish_id']} end
local field = ARGV[1] .. '|' .. ARGV[2]
local since = now
local old = redis.call('HGET', KEYS[4], field)
local exp = tonumber(redis.call('HGET', KEYS[5], field) or '0')
if old and exp > now then since = cjson.decode(old)['since'] end
local pin = {number = tonumber(ARGV[1]), holder = ARGV[2], publish_id = rec['publish_id'],
             since = since, heartbeat = now, expires = now + tonumber(ARGV[3])}
local body = cjson.encode(pin)
redis.call('HSET', KEYS[4], field, body)
redis.call('HSET', KEYS[5], field, tostring(now + tonumber(ARGV[3])))
return {'ok', body}
"""
)

# KEYS scratch epoch; ARGV new epoch
EPOCH = (
    PRELUDE
    + """
redis.call('SET', KEYS[2], ARGV[1], 'NX')
return redis.call('GET', KEYS[2])
"""
)

# KEYS scratch pins pinexp
EXPIRE_PINS = (
    PRELUDE
    + """
local all = redis.call('HGETALL', KEYS[3])
local n = 0
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) <= now then
    redis.call('HDEL', KEYS[2], all[i]); redis.call('HDEL', KEYS[3], all[i]); n = n + 1
  end
end
return n
"""
)
