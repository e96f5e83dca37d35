//! The Redis store: the cluster's shared chat state. Keys (all prefixed `syd:chat:`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `token:<token>` | string, expiry (`--token-ttl`, 90 days) refreshed on use | the user id |
//! | `users:used` | sorted set | `<user> <token>` of each user, scored by the token's last use (ms): [`ChatStore::forget_expired_users`] finds the users whose token expired; an older node's users are added when a node starts ([`ChatStore::index_users`]) |
//! | `room:<room>` | string (JSON) | [`RoomMeta`] |
//! | `rooms:public` | set | the public rooms' names |
//! | `rooms:public:by-name` | sorted set, every score 0 | the same names in order, for the room list's pages |
//! | `rooms:count` | string | how many rooms exist |
//! | `rooms:looks` | hash | a room's look ([`validate::look`]) → its name: one room per look; an older node's rooms are added when a node starts ([`ChatStore::index_looks`]) |
//! | `rooms:empty` | sorted set | the rooms without members, scored by when their last member left (ms): [`ChatStore::forget_empty_rooms`] deletes those empty for `--empty-room-ttl`; an older node's are added when a node starts ([`ChatStore::index_empty_rooms`]) |
//! | `members:<room>` | set | member user ids |
//! | `user:<user>:rooms` | set | the rooms the user is a member of |
//! | `history:<room>` | stream, `XADD MAXLEN ~ cap` | field `m`: a [`NewMessage`] as JSON |
//! | `rate:<user>`, `rate:<user>:<kind>` | string, expires when idle | a rate limit's arrival time (µs): messages, `join`/`leave` (`join`), `typing`, `history`, `rooms` |
//! | `rate:client:<address>:<kind>` | string, expires when idle | a client address's arrival time (µs): new users (`new-user`), `create` |
//! | `presence:<room>:<node>` | hash, expiry pushed by the node's heartbeat | socket id → [`PresenceEntry`] |
//! | `nodes` | sorted set | nodes that wrote presence (score: last write, ms), to find the hashes |
//! | `node:<node>:presence` | set, expiry pushed like the hashes' | the rooms where the node has a `presence` hash |
//! | `node:<node>:beat` | string, expiry pushed by the node's heartbeat | the heartbeat's last mark: another one means Redis lost its data ([`ChatStore::swap_beat_mark`]) |
//! | `health` | string, expires after a minute | nothing: written by each `/healthz` ([`ChatStore::check`]) |
//!
//! Message ids are the stream ids (`<ms>-<seq>`, ordered and unique per room).
//!
//! One key outside the prefix: a `send` appends its broadcast to the bus's stream of the
//! namespace (`syd:{<nsp>}:stream`, the cluster's log) in the script that posts it,
//! when the bus is on this server ([`POST_AND_APPEND`]); a `create`, the leave of the
//! sockets left over from a room of that name that Redis lost, in the script that creates
//! the room ([`CREATE_ROOM`]: without the stream on this server, no room is created).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;
use redis::{Pipeline, RedisError, Script, Value};

use super::{
    ChatStore, Created, Joined, JointEntry, Membership, Message, NewMessage, Online, Post, Posted,
    PresenceEntry, RoomLimits, RoomMeta, StoreError,
};
use crate::chat::now_ms;
use crate::chat::rate::RateLimit;
use crate::chat::validate;

const PREFIX: &str = "syd:chat:";
/// Nodes silent for this long are dropped from `nodes` (their hashes expired long ago).
const NODE_FORGET_MS: u64 = 24 * 3600 * 1000;
/// The stream field holding a message (also in [`POST`]).
const HISTORY_FIELD: &str = "m";

/// The GCRA step of [`RateLimit::admit`] as Lua statements, on Redis's clock:
/// `gcra_lua!(key, interval, tolerance, refused)`, given the Lua expressions of the state's
/// key and of the interval and tolerance in µs, runs `refused` for a message over the
/// limit; for one within it, it moves the arrival time kept in the key and goes on.
/// Statements rather than a function, and `%d` rather than `%.0f`: a closure per call and
/// the floating-point formatting were a measurable part of the post script's cost
/// (callgrind of redis-server under `bench chat`). Its first write is the `SET`: an error
/// before or in it leaves nothing written. A macro so that the scripts can `concat!` it.
macro_rules! gcra_lua {
    ($key:literal, $interval:literal, $tolerance:literal, $refused:literal) => {
        concat!(
            "
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local tat = tonumber(redis.call('GET', ",
            $key,
            ")) or now
if tat < now then tat = now end
if tat - now > tonumber(",
            $tolerance,
            ") then ",
            $refused,
            " end
local next = tat + ",
            $interval,
            "
redis.call('SET', ",
            $key,
            ", string.format('%d', next), 'PX', string.format('%d', (next - now) / 1000 + 1000))
"
        )
    };
}

/// [`ChatStore::admit`]. `KEYS[1]`: the state; ARGV: interval and tolerance in µs.
/// Returns 1 (admitted) or 0.
static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        gcra_lua!("KEYS[1]", "ARGV[1]", "ARGV[2]", "return 0"),
        "return 1\n"
    ))
});

/// [`ChatStore::post`]. KEYS: the room's members, the user's rate state, the room's
/// history. ARGV: `1` when membership is required, the user, interval and tolerance in µs,
/// the history cap, the message's JSON. Returns 0 (not a member), 1 (over the limit), or
/// the new entry's id.
static POST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        r"
if ARGV[1] == '1' and redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 0 then return 0 end
",
        gcra_lua!("KEYS[2]", "ARGV[3]", "ARGV[4]", "return 1"),
        r"
return redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'm', ARGV[6])
"
    ))
});

/// [`ChatStore::post_and_append`]: [`POST`], then the message's broadcast appended to the
/// bus's stream as the bus's own script appends and publishes it
/// ([`crate::bus::redis`]'s `APPEND`, the same trim, field and channel message), with the
/// message id spliced in. KEYS: [`POST`]'s, then the bus's stream. ARGV: [`POST`]'s, then
/// the trim strategy and threshold, the entry's bytes before the id and after it.
/// Returns 0 (not a member), 1 (over the limit), `<id> <entry id>` (one string: Redis
/// turns a table into a reply at a cost of its own; neither id has a space),
/// `{id, '', error}` when the stream refused the entry (the message is posted: the caller
/// appends it), or `{'', error}` when the post's own writes failed.
///
/// A script that stops on an error keeps the writes done before it, so every write after
/// the first (the rate limit's `SET`) runs under `redis.pcall` and the reply says how far
/// it got. An error reply therefore means that nothing was written (Redis refused the
/// script before it ran: a key the ACL does not let this client write, a replica, a
/// server loading; or it stopped before its first write); every key it writes is
/// declared, which is what has Redis check them all first.
static POST_AND_APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        r"
if ARGV[1] == '1' and redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 0 then return 0 end
",
        gcra_lua!("KEYS[2]", "ARGV[3]", "ARGV[4]", "return 1"),
        r"
local id = redis.pcall('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'm', ARGV[6])
if type(id) == 'table' then return {'', id.err} end
local entry = ARGV[9] .. id .. ARGV[10]
local entry_id = redis.pcall('XADD', KEYS[4], ARGV[7], '~', ARGV[8], '*', 'd', entry)
if type(entry_id) == 'table' then return {id, '', entry_id.err} end
local published = redis.pcall('PUBLISH', KEYS[4], entry_id .. ' ' .. entry)
if type(published) == 'table' then return {id, '', published.err} end
return id .. ' ' .. entry_id
"
    ))
});

/// Lua: `by_name(set, zset)` makes sure the sorted index of the public rooms (`zset`, all
/// scores 0, ordered by name) holds every room of the public room set (`set`): rooms
/// listed by a node from before the index was kept, even while such a node still runs
/// beside newer ones, are filled in. The index only ever holds rooms of the set (a
/// deleted room leaves both in one step), so equal sizes mean equal sets, and the check
/// costs two O(1) calls. A macro so that both scripts that touch the
/// index can `concat!` it.
macro_rules! by_name_lua {
    () => {
        r"
local function by_name(set, zset)
  if redis.call('ZCARD', zset) ~= redis.call('SCARD', set) then
    for _, room in ipairs(redis.call('SMEMBERS', set)) do
      redis.call('ZADD', zset, 0, room)
    end
  end
end
"
    };
}

/// [`ChatStore::public_rooms`]. KEYS: the public room set, its sorted index. ARGV: the
/// lower bound (`-`, or `(` and the name to start after), the count.
static PUBLIC_ROOMS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        by_name_lua!(),
        r"
by_name(KEYS[1], KEYS[2])
return redis.call('ZRANGEBYLEX', KEYS[2], ARGV[1], '+', 'LIMIT', 0, tonumber(ARGV[2]))
"
    ))
});

/// [`ChatStore::create_room`], atomic: the room, its place in the public list, the count
/// of rooms and the creator's membership change together or not at all (a room created
/// and never listed, a limit overshot by two nodes at once, or a room without its creator
/// would otherwise be possible). KEYS: the room, the public room set, the room count, the
/// public rooms' sorted index, the room's members, the creator's rooms, the rooms by look,
/// and for [`ChatStore::create_room_and_append`] the bus's stream. ARGV: the room's JSON,
/// `1` when public, the name, the room limit, the `SCAN MATCH` pattern of every room's
/// key, the creator, the membership limit, the room's look, the key prefix; with the
/// stream, the trim strategy and threshold and the entry. Returns 0 (the name is taken), 4 (another room
/// looks the same), 3 (the creator has too many memberships), 2 (the room limit is
/// reached), or, once the room is created, 1 or the entry's id.
///
/// The entry is appended and published as the bus's own script does (the same trim,
/// field and channel message) once every check has passed and before the room is
/// written: a stream that refuses it stops the script with an error and no room (a
/// script that stops keeps what it wrote, so the entry's append comes first; the room
/// count it may have filled in is the same either way).
static CREATE_ROOM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        by_name_lua!(),
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('HEXISTS', KEYS[7], ARGV[8]) == 1 then return 4 end
if redis.call('SCARD', KEYS[6]) >= tonumber(ARGV[7]) then return 3 end
local count = redis.call('GET', KEYS[3])
if not count then
  -- Rooms from before the count was kept (an older node's): counted once, by their keys,
  -- since the public list does not name the private ones. SCAN may repeat a key.
  local seen, cursor = {}, '0'
  count = 0
  repeat
    local reply = redis.call('SCAN', cursor, 'MATCH', ARGV[5], 'COUNT', 1000)
    cursor = reply[1]
    for _, k in ipairs(reply[2]) do
      if not seen[k] then
        seen[k] = true
        count = count + 1
      end
    end
  until cursor == '0'
  redis.call('SET', KEYS[3], count)
end
if tonumber(count) >= tonumber(ARGV[4]) then return 2 end
local created = 1
if KEYS[8] then
  local id = redis.pcall('XADD', KEYS[8], ARGV[10], '~', ARGV[11], '*', 'd', ARGV[12])
  if type(id) == 'table' then return redis.error_reply('the log refused the entry: ' .. id.err) end
  local published = redis.pcall('PUBLISH', KEYS[8], id .. ' ' .. ARGV[12])
  if type(published) == 'table' then
    return redis.error_reply('the entry was not published: ' .. published.err)
  end
  created = id
end
-- What an older node's join or post that crossed the deletion of a room of this name
-- left (it checks no room): none of it may pass to the new room.
for _, member in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  redis.call('SREM', ARGV[9] .. 'user:' .. member .. ':rooms', ARGV[3])
end
redis.call('DEL', KEYS[5], ARGV[9] .. 'history:' .. ARGV[3])
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[2] == '1' then
  by_name(KEYS[2], KEYS[4])
  redis.call('SADD', KEYS[2], ARGV[3])
  redis.call('ZADD', KEYS[4], 0, ARGV[3])
end
redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[7], ARGV[8], ARGV[3])
redis.call('SADD', KEYS[5], ARGV[6])
redis.call('SADD', KEYS[6], ARGV[3])
return created
"
    ))
});

/// [`ChatStore::add_member`], atomic: the checks of the room's creation and of the
/// user's memberships and the two `SADD`s are one step, so that joins on several nodes
/// at once cannot overshoot the limit, and a join cannot land in a room deleted (or
/// deleted and created again) since the joiner read its settings. KEYS: the room's
/// members, the user's rooms, the room, `rooms:empty`. ARGV: the user, the room, the
/// membership limit, the creation. Returns 3 (no such room, or another creation), 0
/// (already a member), 2 (too many memberships) or 1.
static ADD_MEMBER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local meta = redis.call('GET', KEYS[3])
if not meta then return 3 end
local ok, decoded = pcall(cjson.decode, meta)
if not ok or type(decoded) ~= 'table' then return 3 end
local creation = decoded.creation
if type(creation) ~= 'string' then creation = '' end
if creation ~= ARGV[4] then return 3 end
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[3]) then return 2 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
return 1
",
    )
});

/// Now on Redis's clock, in ms, as a Lua local `now` (a number; `%d` to write it).
macro_rules! now_ms_lua {
    () => {
        "
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
"
    };
}

/// [`ChatStore::index_looks`], one page of rooms: each room still there is indexed by its
/// look unless the look is. `HSETNX`: a look already indexed keeps its room, whether a
/// create or another node's backfill put it there. KEYS: `rooms:looks`. ARGV: the room
/// keys' prefix, then pairs room, look. Returns how many it indexed.
static INDEX_LOOKS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local added = 0
for i = 2, #ARGV - 1, 2 do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 1 then
    added = added + redis.call('HSETNX', KEYS[1], ARGV[i + 1], ARGV[i])
  end
end
return added
",
    )
});

/// [`ChatStore::remove_member`], atomic: both sides of the membership, and the room
/// marked empty from now when its last member left. KEYS: the room's members, the user's
/// rooms, the room, `rooms:empty`. ARGV: the user, the room. Returns 1 when the user was
/// a member, else 0.
static REMOVE_MEMBER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        now_ms_lua!(),
        r"
local removed = redis.call('SREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('SCARD', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[3]) == 1 then
  -- Empty from now when this was its last member; a room found empty without a mark
  -- (left on an older node) keeps any mark it has.
  if removed == 1 then
    redis.call('ZADD', KEYS[4], string.format('%d', now), ARGV[2])
  else
    redis.call('ZADD', KEYS[4], 'NX', string.format('%d', now), ARGV[2])
  end
end
return removed
"
    ))
});

/// [`ChatStore::forget_empty_rooms`], the first step: up to `ARGV[2]` rooms marked empty
/// for the TTL or longer, on Redis's clock. KEYS: `rooms:empty`. ARGV: the TTL (ms), the
/// most to answer.
static DUE_EMPTY_ROOMS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        now_ms_lua!(),
        r"
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf',
  string.format('%d', now - tonumber(ARGV[1])), 'LIMIT', 0, ARGV[2])
"
    ))
});

/// [`ChatStore::forget_empty_rooms`], the second step, atomic per room: each room still
/// marked empty for the TTL loses its mark, and is deleted unless it has members (a join
/// on an older node, which does not clear the mark): its settings, history, places in
/// the public list and its index, its look (if the look is still its), and one from the
/// count. KEYS: `rooms:empty`, `rooms:public`, `rooms:public:by-name`, `rooms:count`,
/// `rooms:looks`. ARGV: the TTL (ms), the key prefix, then pairs room, look. Returns how
/// many rooms it deleted.
static FORGET_EMPTY_ROOMS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        now_ms_lua!(),
        r"
local cutoff, prefix = now - tonumber(ARGV[1]), ARGV[2]
local deleted = 0
for i = 3, #ARGV - 1, 2 do
  local room, look = ARGV[i], ARGV[i + 1]
  local since = redis.call('ZSCORE', KEYS[1], room)
  if since and tonumber(since) <= cutoff then
    redis.call('ZREM', KEYS[1], room)
    if redis.call('SCARD', prefix .. 'members:' .. room) == 0
      and redis.call('DEL', prefix .. 'room:' .. room) == 1 then
      redis.call('DEL', prefix .. 'history:' .. room)
      redis.call('SREM', KEYS[2], room)
      redis.call('ZREM', KEYS[3], room)
      local count = redis.call('GET', KEYS[4])
      if count and tonumber(count) > 0 then redis.call('DECR', KEYS[4]) end
      if redis.call('HGET', KEYS[5], look) == room then redis.call('HDEL', KEYS[5], look) end
      deleted = deleted + 1
    end
  end
end
return deleted
"
    ))
});

/// [`ChatStore::index_empty_rooms`], one page of room keys: each room without members
/// and without a mark is marked empty from now. KEYS: `rooms:empty`. ARGV: the room
/// keys' prefix, the members keys' prefix, then the room keys. Returns how many it
/// marked.
static INDEX_EMPTY_ROOMS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        now_ms_lua!(),
        r"
local marked = 0
for i = 3, #ARGV do
  local room = string.sub(ARGV[i], #ARGV[1] + 1)
  if redis.call('SCARD', ARGV[2] .. room) == 0 and redis.call('EXISTS', ARGV[i]) == 1 then
    marked = marked + redis.call('ZADD', KEYS[1], 'NX', string.format('%d', now), room)
  end
end
return marked
"
    ))
});

/// [`ChatStore::user_for_token`]: the token's user, its expiry pushed to the TTL, and its
/// use recorded. KEYS: the token, `users:used`. ARGV: the TTL (ms), the token. Returns the
/// user or nil.
static USE_TOKEN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        now_ms_lua!(),
        r"
local user = redis.call('GET', KEYS[1])
if not user then return false end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], string.format('%d', now), user .. ' ' .. ARGV[2])
return user
"
    ))
});

/// [`ChatStore::touch_users`] and [`ChatStore::create_user`]: each token written (again:
/// a token never changes user) with the TTL, and its use recorded. KEYS: `users:used`.
/// ARGV: the TTL (ms), the token keys' prefix, then pairs user, token.
static TOUCH_USERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        now_ms_lua!(),
        r"
local used = string.format('%d', now)
for i = 3, #ARGV - 1, 2 do
  redis.call('SET', ARGV[2] .. ARGV[i + 1], ARGV[i], 'PX', ARGV[1])
  redis.call('ZADD', KEYS[1], used, ARGV[i] .. ' ' .. ARGV[i + 1])
end
"
    ))
});

/// [`ChatStore::forget_expired_users`]: up to `ARGV[2]` users whose recorded use is older
/// than the TTL. One whose token is still there was kept in use by a node that does not
/// record uses (an older one): its use is recorded as the token's expiry says, and it is
/// kept. The others' memberships end. KEYS: `users:used`. ARGV: the TTL (ms), the most
/// to look at, the key prefix. Returns how many were due (each is either kept with a
/// newer use or removed: none is due again) and how many were forgotten.
static FORGET_EXPIRED_USERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        now_ms_lua!(),
        r"
local ttl, prefix = tonumber(ARGV[1]), ARGV[3]
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('(%d', now - ttl),
  'LIMIT', 0, ARGV[2])
local forgotten = 0
for _, entry in ipairs(due) do
  local space = string.find(entry, ' ', 1, true)
  local left = -2
  if space then left = redis.call('PTTL', prefix .. 'token:' .. string.sub(entry, space + 1)) end
  if left == -1 then
    redis.call('ZADD', KEYS[1], string.format('%d', now), entry)
  elseif left > 0 then
    redis.call('ZADD', KEYS[1], string.format('%d', now - math.max(ttl - left, 0)), entry)
  else
    if space then
      local user = string.sub(entry, 1, space - 1)
      local rooms = prefix .. 'user:' .. user .. ':rooms'
      for _, room in ipairs(redis.call('SMEMBERS', rooms)) do
        local members = prefix .. 'members:' .. room
        if redis.call('SREM', members, user) == 1 and redis.call('SCARD', members) == 0
          and redis.call('EXISTS', prefix .. 'room:' .. room) == 1 then
          redis.call('ZADD', prefix .. 'rooms:empty', string.format('%d', now), room)
        end
      end
      redis.call('DEL', rooms)
      forgotten = forgotten + 1
    end
    redis.call('ZREM', KEYS[1], entry)
  end
end
return {#due, forgotten}
"
    ))
});

/// [`ChatStore::index_users`], one page of token keys: each token's use recorded (unless
/// it is already), as its remaining TTL says. KEYS: `users:used`. ARGV: the TTL (ms), the
/// token keys' prefix, then the token keys. Returns how many it recorded.
static INDEX_USERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        now_ms_lua!(),
        r"
local ttl, prefix = tonumber(ARGV[1]), ARGV[2]
local added = 0
for i = 3, #ARGV do
  local user = redis.call('GET', ARGV[i])
  if user then
    local left = redis.call('PTTL', ARGV[i])
    local used = now
    if left > 0 then used = now - math.max(ttl - left, 0) end
    added = added + redis.call('ZADD', KEYS[1], 'NX', string.format('%d', used),
      user .. ' ' .. string.sub(ARGV[i], #prefix + 1))
  end
end
return added
"
    ))
});

/// [`ChatStore::presence_refresh`], atomic: every presence hash of the node is replaced
/// by what it holds now (a hash only ever gets what the node's latest heartbeat or a later
/// add wrote, so a socket that left cannot be kept alive by later heartbeats), and the
/// hashes of rooms where it holds nothing are deleted.
/// KEYS: `nodes`, the node's room set. ARGV: the node, now (ms), the score under which
/// nodes are forgotten, the TTL (ms), the presence key prefix, then per room: the room,
/// the number of sockets `n`, and `n` pairs socket id, entry JSON. Returns whether the
/// room set was there (1 or 0).
static REFRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local node, ttl, prefix = ARGV[1], ARGV[4], ARGV[5]
local had = redis.call('EXISTS', KEYS[2])
redis.call('ZADD', KEYS[1], ARGV[2], node)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local keep = {}
local i = 6
while i <= #ARGV do
  local room, n = ARGV[i], tonumber(ARGV[i + 1])
  local hash = prefix .. room .. ':' .. node
  redis.call('DEL', hash)
  for j = 0, n - 1 do
    redis.call('HSET', hash, ARGV[i + 2 + 2 * j], ARGV[i + 3 + 2 * j])
  end
  redis.call('PEXPIRE', hash, ttl)
  keep[room] = true
  i = i + 2 + 2 * n
end
for _, room in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if not keep[room] then
    redis.call('DEL', prefix .. room .. ':' .. node)
  end
end
redis.call('DEL', KEYS[2])
for room in pairs(keep) do
  redis.call('SADD', KEYS[2], room)
end
redis.call('PEXPIRE', KEYS[2], ttl)
return had
",
    )
});

fn key(parts: &[&str]) -> String {
    let mut key = String::from(PREFIX);
    key.push_str(&parts.join(":"));
    key
}

fn redis_error(error: RedisError) -> StoreError {
    StoreError::Redis(error.to_string())
}

/// The error of a write that is not to be repeated (a post): [`StoreError::NoReply`] when
/// the command may have reached Redis. A response timeout leaves it in Redis's input (a
/// stalled server runs it when it resumes); a connection that broke while the command
/// waited may have broken after Redis ran it (redis-rs reports a command it never sent,
/// on a connection it had not yet found closed, the same way: that one is taken as sent
/// too). Only a refused connection says for sure that it was not.
fn write_error(error: RedisError) -> StoreError {
    let in_flight =
        error.is_timeout() || (error.is_connection_dropped() && !error.is_connection_refusal());
    if in_flight {
        StoreError::NoReply(error.to_string())
    } else {
        redis_error(error)
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A store on Redis; clones share the connection.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    /// The address it connected to: a bus stream on another server is not appended to
    /// from here ([`ChatStore::post_and_append`]).
    url: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to Redis at `url` (it must answer now).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let conn = crate::bus::redis::open(url).await.map_err(redis_error)?;
        Ok(Self {
            conn,
            url: url.to_owned(),
        })
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn).await.map_err(redis_error)
    }

    async fn run<T: redis::FromRedisValue>(&self, pipe: &Pipeline) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        pipe.query_async(&mut conn).await.map_err(redis_error)
    }

    /// Runs `script` on every key that starts with `prefix`, a page of keys at a time (SCAN:
    /// no step blocks Redis for long, however many keys it holds): `script_key` as its one
    /// key, `args` then the page's keys as its arguments. Answers the sum of its answers.
    async fn per_key_page(
        &self,
        prefix: &str,
        script: &Script,
        script_key: &str,
        args: &[String],
    ) -> Result<u64, StoreError> {
        let pattern = format!("{}*", glob_escape(prefix));
        let mut total = 0;
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = self.scan_page(cursor, &pattern).await?;
            if !keys.is_empty() {
                let mut invocation = script.key(script_key);
                for arg in args {
                    invocation.arg(arg);
                }
                for k in &keys {
                    invocation.arg(k.as_slice());
                }
                let mut conn = self.conn.clone();
                let page: u64 = invocation
                    .invoke_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                total += page;
            }
            cursor = next;
            if cursor == 0 {
                return Ok(total);
            }
        }
    }

    /// One page of the keys matching `pattern` from `cursor` on: the next cursor (0 at the
    /// end) and the keys.
    async fn scan_page<T: redis::FromRedisValue>(
        &self,
        cursor: u64,
        pattern: &str,
    ) -> Result<(u64, Vec<T>), StoreError> {
        self.query(
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000),
        )
        .await
    }
}

/// `raw` matching itself in a `SCAN MATCH` pattern.
fn glob_escape(raw: &str) -> String {
    let mut escaped = String::with_capacity(raw.len());
    for c in raw.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The greatest stream id below `(ms, seq)`; `None` below `0-0`.
fn id_before((ms, seq): (u64, u64)) -> Option<(u64, u64)> {
    match (ms, seq) {
        (0, 0) => None,
        (ms, 0) => Some((ms - 1, u64::MAX)),
        (ms, seq) => Some((ms, seq - 1)),
    }
}

/// The history entry of `message`: its JSON.
fn history_json(room: &str, message: &NewMessage) -> Result<String, StoreError> {
    serde_json::to_string(message).map_err(|e| StoreError::Corrupt {
        key: key(&["history", room]),
        reason: e.to_string(),
    })
}

/// [`POST`]'s keys and arguments for `post`: [`POST_AND_APPEND`] begins with the same.
fn post_invocation<'s>(
    script: &'s Script,
    post: &Post<'_>,
) -> Result<redis::ScriptInvocation<'s>, StoreError> {
    let json = history_json(post.room, post.message)?;
    let required = match post.membership {
        Membership::Required => "1",
        Membership::Open => "0",
    };
    let mut invocation = script.prepare_invoke();
    invocation
        .key(key(&["members", post.room]))
        .key(key(&["rate", &post.message.user]))
        .key(key(&["history", post.room]))
        .arg(required)
        .arg(&post.message.user)
        .arg(post.limit.interval_us())
        .arg(post.limit.tolerance_us())
        .arg(post.cap.max(1))
        .arg(json);
    Ok(invocation)
}

/// Whether Redis answered `error` (rather than the connection failing: then the script
/// may have run).
fn refused(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
    )
}

/// A string reply's text.
fn reply_text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

/// What [`POST_AND_APPEND`] answered, as [`ChatStore::post_and_append`] answers.
fn joint_reply(reply: Value) -> Result<(Posted, Option<String>), StoreError> {
    let unexpected = |reply: &Value| {
        StoreError::Redis(format!("unexpected reply to the post script: {reply:?}"))
    };
    let parts = match &reply {
        Value::Int(0) => return Ok((Posted::NotMember, None)),
        Value::Int(1) => return Ok((Posted::RateLimited, None)),
        Value::Array(parts) => parts,
        _ => {
            return match reply_text(&reply).and_then(|ids| ids.split_once(' ')) {
                Some((id, entry_id)) if !id.is_empty() && !entry_id.is_empty() => {
                    Ok((Posted::Appended(id.to_owned()), Some(entry_id.to_owned())))
                }
                _ => Err(unexpected(&reply)),
            }
        }
    };
    let texts: Option<Vec<&str>> = parts.iter().map(reply_text).collect();
    match texts.as_deref() {
        Some(["", error]) => Err(StoreError::Redis((*error).to_owned())),
        Some([id, "", error]) if !id.is_empty() => {
            crate::bus::redis::bus_error();
            tracing::warn!(%error, "the bus's stream refused a message's broadcast; it waits in the bus's queue");
            Ok((Posted::Appended((*id).to_owned()), None))
        }
        _ => Err(unexpected(&reply)),
    }
}

/// [`CREATE_ROOM`]'s keys and arguments, without the stream.
fn create_invocation(
    room: &str,
    meta: &RoomMeta,
    limits: RoomLimits,
) -> Result<redis::ScriptInvocation<'static>, StoreError> {
    let json = serde_json::to_string(meta).map_err(|e| StoreError::Corrupt {
        key: key(&["room", room]),
        reason: e.to_string(),
    })?;
    let mut invocation = CREATE_ROOM.prepare_invoke();
    invocation
        .key(key(&["room", room]))
        .key(key(&["rooms", "public"]))
        .key(key(&["rooms", "count"]))
        .key(key(&["rooms", "public", "by-name"]))
        .key(key(&["members", room]))
        .key(key(&["user", &meta.created_by, "rooms"]))
        .key(key(&["rooms", "looks"]))
        .arg(json)
        .arg(if meta.private { "0" } else { "1" })
        .arg(room)
        .arg(limits.max_rooms)
        .arg(format!("{}*", glob_escape(&key(&["room", ""]))))
        .arg(&meta.created_by)
        .arg(limits.max_memberships)
        .arg(validate::look(room))
        .arg(PREFIX);
    Ok(invocation)
}

/// What [`CREATE_ROOM`] answered: what it did, and the id of the entry it appended.
fn created_reply(reply: &Value) -> Result<(Created, Option<String>), StoreError> {
    Ok(match reply {
        Value::Int(0) => (Created::Exists, None),
        Value::Int(2) => (Created::Full, None),
        Value::Int(3) => (Created::TooManyMemberships, None),
        Value::Int(4) => (Created::LooksLike, None),
        Value::Int(1) => (Created::Created, None),
        other => match reply_text(other) {
            Some(id) if !id.is_empty() => (Created::Created, Some(id.to_owned())),
            _ => {
                return Err(StoreError::Redis(format!(
                    "unexpected reply to the create script: {other:?}"
                )))
            }
        },
    })
}

fn parse_meta(key: &str, json: &str) -> Result<RoomMeta, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

#[async_trait]
impl ChatStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn check(&self) -> Result<(), StoreError> {
        let mut set = redis::cmd("SET");
        set.arg(key(&["health"])).arg(1).arg("PX").arg(60_000);
        self.query(&set).await
    }

    async fn user_for_token(
        &self,
        token: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        USE_TOKEN
            .key(key(&["token", token]))
            .key(key(&["users", "used"]))
            .arg(ttl_ms(ttl))
            .arg(token)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)
    }

    async fn touch_users(
        &self,
        users: &[(String, String)],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let prefix = key(&["token", ""]);
        // Bounded steps: however many users a node has, Redis is never blocked for long.
        for chunk in users.chunks(500) {
            let mut invocation = TOUCH_USERS.key(key(&["users", "used"]));
            invocation.arg(ttl_ms(ttl)).arg(&prefix);
            for (user, token) in chunk {
                invocation.arg(user).arg(token);
            }
            let mut conn = self.conn.clone();
            let () = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error)?;
        }
        Ok(())
    }

    async fn forget_expired_users(&self, ttl: Duration) -> Result<u64, StoreError> {
        // A batch at a time, so that Redis is never blocked for long.
        const BATCH: usize = 100;
        let mut forgotten = 0;
        loop {
            let mut conn = self.conn.clone();
            let (due, batch): (usize, u64) = FORGET_EXPIRED_USERS
                .key(key(&["users", "used"]))
                .arg(ttl_ms(ttl))
                .arg(BATCH)
                .arg(PREFIX)
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error)?;
            forgotten += batch;
            if due < BATCH {
                return Ok(forgotten);
            }
        }
    }

    async fn forget_empty_rooms(&self, ttl: Duration) -> Result<u64, StoreError> {
        // A batch at a time, so that Redis is never blocked for long. The looks are
        // computed here (Lua has no Unicode tables), between the two steps; the second
        // checks again what the first found, atomically per room.
        const BATCH: usize = 100;
        // Not `ttl_ms`: a TTL of 0 is meant here (everything empty now), not 1 ms.
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut deleted = 0;
        loop {
            let mut conn = self.conn.clone();
            let due: Vec<String> = DUE_EMPTY_ROOMS
                .key(key(&["rooms", "empty"]))
                .arg(ttl)
                .arg(BATCH)
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error)?;
            if due.is_empty() {
                return Ok(deleted);
            }
            let mut invocation = FORGET_EMPTY_ROOMS.prepare_invoke();
            invocation
                .key(key(&["rooms", "empty"]))
                .key(key(&["rooms", "public"]))
                .key(key(&["rooms", "public", "by-name"]))
                .key(key(&["rooms", "count"]))
                .key(key(&["rooms", "looks"]))
                .arg(ttl)
                .arg(PREFIX);
            for room in &due {
                invocation.arg(room).arg(validate::look(room));
            }
            let batch: u64 = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error)?;
            deleted += batch;
            // Every room the first step found lost its mark in the second, unless Redis's
            // clock went back in between: then stop, the next sweep goes on.
            if due.len() < BATCH || batch == 0 {
                return Ok(deleted);
            }
        }
    }

    async fn index_empty_rooms(&self) -> Result<u64, StoreError> {
        let prefix = key(&["room", ""]);
        let args = [prefix.clone(), key(&["members", ""])];
        self.per_key_page(
            &prefix,
            &INDEX_EMPTY_ROOMS,
            &key(&["rooms", "empty"]),
            &args,
        )
        .await
    }

    async fn index_users(&self, ttl: Duration) -> Result<u64, StoreError> {
        let prefix = key(&["token", ""]);
        let args = [ttl_ms(ttl).to_string(), prefix.clone()];
        self.per_key_page(&prefix, &INDEX_USERS, &key(&["users", "used"]), &args)
            .await
    }

    async fn create_room(
        &self,
        room: &str,
        meta: &RoomMeta,
        limits: RoomLimits,
    ) -> Result<Created, StoreError> {
        let mut conn = self.conn.clone();
        let reply: Value = create_invocation(room, meta, limits)?
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(created_reply(&reply)?.0)
    }

    async fn create_room_and_append(
        &self,
        room: &str,
        meta: &RoomMeta,
        limits: RoomLimits,
        entry: Option<JointEntry<'_>>,
    ) -> Result<(Created, Option<String>), StoreError> {
        let Some(entry) = entry.filter(|e| e.target.server == self.url) else {
            return Err(StoreError::NoLog(
                "the bus's log is not on the store's server, or the bus is unreachable".into(),
            ));
        };
        let (strategy, threshold) = &entry.target.trim;
        let mut invocation = create_invocation(room, meta, limits)?;
        invocation
            .key(&entry.target.key)
            .arg(*strategy)
            .arg(threshold)
            .arg([entry.head, entry.tail].concat());
        let mut conn = self.conn.clone();
        // Not repeated on a lost reply: the room and its entry may be in (see
        // `write_error`).
        let reply: Value = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(write_error)?;
        created_reply(&reply)
    }

    async fn index_looks(&self) -> Result<u64, StoreError> {
        // The rooms' keys, a page at a time (SCAN: no step blocks Redis for long, however
        // many keys it holds), each page's looks in one script, which indexes only the
        // rooms still there: a room deleted since the page was read must not leave its
        // look behind for good.
        let prefix = key(&["room", ""]);
        let pattern = format!("{}*", glob_escape(&prefix));
        let mut added = 0;
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = self.scan_page(cursor, &pattern).await?;
            let mut invocation = INDEX_LOOKS.key(key(&["rooms", "looks"]));
            invocation.arg(&prefix);
            let mut any = false;
            // A key this code did not write (not UTF-8) names no room it could create.
            for room in keys.into_iter().filter_map(|k| String::from_utf8(k).ok()) {
                if let Some(room) = room.strip_prefix(&prefix) {
                    invocation.arg(room).arg(validate::look(room));
                    any = true;
                }
            }
            if any {
                let mut conn = self.conn.clone();
                let page: u64 = invocation
                    .invoke_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                added += page;
            }
            cursor = next;
            if cursor == 0 {
                return Ok(added);
            }
        }
    }

    async fn room(&self, room: &str) -> Result<Option<RoomMeta>, StoreError> {
        let key = key(&["room", room]);
        let json: Option<String> = self.query(redis::cmd("GET").arg(&key)).await?;
        json.map(|json| parse_meta(&key, &json)).transpose()
    }

    async fn rooms(&self, rooms: &[String]) -> Result<BTreeMap<String, RoomMeta>, StoreError> {
        if rooms.is_empty() {
            return Ok(BTreeMap::new());
        }
        let keys: Vec<String> = rooms.iter().map(|r| key(&["room", r])).collect();
        let metas: Vec<Option<String>> = self.query(redis::cmd("MGET").arg(&keys)).await?;
        let mut found = BTreeMap::new();
        for ((room, key), json) in rooms.iter().zip(&keys).zip(metas) {
            if let Some(json) = json {
                found.insert(room.clone(), parse_meta(key, &json)?);
            }
        }
        Ok(found)
    }

    async fn public_rooms(&self, after: &str, count: usize) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        PUBLIC_ROOMS
            .key(key(&["rooms", "public"]))
            .key(key(&["rooms", "public", "by-name"]))
            .arg(if after.is_empty() {
                "-".to_owned()
            } else {
                format!("({after}")
            })
            .arg(count)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)
    }

    async fn add_member(
        &self,
        room: &str,
        user: &str,
        creation: &str,
        max_memberships: usize,
    ) -> Result<Joined, StoreError> {
        let mut conn = self.conn.clone();
        let reply: i64 = ADD_MEMBER
            .key(key(&["members", room]))
            .key(key(&["user", user, "rooms"]))
            .key(key(&["room", room]))
            .key(key(&["rooms", "empty"]))
            .arg(user)
            .arg(room)
            .arg(max_memberships)
            .arg(creation)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(match reply {
            0 => Joined::Already,
            2 => Joined::TooManyMemberships,
            3 => Joined::NoSuchRoom,
            _ => Joined::Added,
        })
    }

    async fn remove_member(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let removed: i64 = REMOVE_MEMBER
            .key(key(&["members", room]))
            .key(key(&["user", user, "rooms"]))
            .key(key(&["room", room]))
            .key(key(&["rooms", "empty"]))
            .arg(user)
            .arg(room)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(removed == 1)
    }

    async fn is_member(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        self.query(
            redis::cmd("SISMEMBER")
                .arg(key(&["members", room]))
                .arg(user),
        )
        .await
    }

    async fn rooms_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        self.query(redis::cmd("SMEMBERS").arg(key(&["user", user, "rooms"])))
            .await
    }

    async fn append(
        &self,
        room: &str,
        message: &NewMessage,
        cap: usize,
    ) -> Result<String, StoreError> {
        let json = history_json(room, message)?;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(key(&["history", room]))
            .arg("MAXLEN")
            .arg("~")
            .arg(cap.max(1))
            .arg("*")
            .arg(HISTORY_FIELD)
            .arg(json);
        self.query(&cmd).await
    }

    async fn history(
        &self,
        room: &str,
        before: Option<(u64, u64)>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let key = key(&["history", room]);
        // The newest id strictly before the cursor, as an inclusive end: Redis refuses
        // the exclusive `(0-0` (nothing can precede it), and nothing is older than it.
        let end = match before {
            None => "+".to_owned(),
            Some(cursor) => match id_before(cursor) {
                Some((ms, seq)) => format!("{ms}-{seq}"),
                None => return Ok(Vec::new()),
            },
        };
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(&key)
            .arg(end)
            .arg("-")
            .arg("COUNT")
            .arg(limit.max(1));
        let reply: StreamRangeReply = self.query(&cmd).await?;
        let mut page = Vec::with_capacity(reply.ids.len());
        for entry in reply.ids.into_iter().rev() {
            let json: Option<String> = entry.get(HISTORY_FIELD);
            let parsed = json
                .as_deref()
                .map(serde_json::from_str::<NewMessage>)
                .transpose()
                .ok()
                .flatten();
            match parsed {
                Some(message) => page.push(Message::new(entry.id, room, message)),
                // Something else wrote to our stream: skip the entry, keep the room usable.
                None => tracing::warn!(%key, id = %entry.id, "unreadable history entry"),
            }
        }
        Ok(page)
    }

    async fn admit(&self, bucket: &str, limit: &RateLimit) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let admitted: i64 = ADMIT
            .key(key(&["rate", bucket]))
            .arg(limit.interval_us())
            .arg(limit.tolerance_us())
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(admitted == 1)
    }

    async fn post(&self, post: Post<'_>) -> Result<Posted, StoreError> {
        let mut conn = self.conn.clone();
        let reply: Value = post_invocation(&POST, &post)?
            .invoke_async(&mut conn)
            .await
            .map_err(write_error)?;
        match reply {
            Value::Int(0) => Ok(Posted::NotMember),
            Value::Int(1) => Ok(Posted::RateLimited),
            Value::BulkString(id) => String::from_utf8(id)
                .map(Posted::Appended)
                .map_err(|e| StoreError::Redis(format!("message id: {e}"))),
            Value::SimpleString(id) => Ok(Posted::Appended(id)),
            other => Err(StoreError::Redis(format!(
                "unexpected reply to the post script: {other:?}"
            ))),
        }
    }

    async fn post_and_append(
        &self,
        post: Post<'_>,
        entry: Option<JointEntry<'_>>,
    ) -> Result<(Posted, Option<String>), StoreError> {
        let Some(entry) = entry.filter(|e| e.target.server == self.url) else {
            return Ok((self.post(post).await?, None));
        };
        let (strategy, threshold) = &entry.target.trim;
        let mut conn = self.conn.clone();
        let reply: Result<Value, RedisError> = post_invocation(&POST_AND_APPEND, &post)?
            .key(&entry.target.key)
            .arg(*strategy)
            .arg(threshold)
            .arg(entry.head)
            .arg(entry.tail)
            .invoke_async(&mut conn)
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            // Refused before it ran (see the script): nothing is written, and the two
            // steps do what they did before the script joined them (say the bus's stream
            // is not writable: the message is posted, and waits in the bus's queue).
            Err(error) if refused(&error) => {
                tracing::debug!(%error, "joint post refused; posting, then appending");
                return Ok((self.post(post).await?, None));
            }
            Err(error) => return Err(write_error(error)),
        };
        joint_reply(reply)
    }

    async fn presence_add(
        &self,
        node: &str,
        room: &str,
        sid: &str,
        entry: &PresenceEntry,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let hash = key(&["presence", room, node]);
        let json = serde_json::to_string(entry).unwrap_or_default();
        let mut pipe = redis::pipe();
        let rooms = key(&["node", node, "presence"]);
        pipe.atomic()
            .cmd("HSET")
            .arg(&hash)
            .arg(sid)
            .arg(json)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&hash)
            .arg(ttl_ms(ttl))
            .ignore()
            .cmd("SADD")
            .arg(&rooms)
            .arg(room)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&rooms)
            .arg(ttl_ms(ttl))
            .ignore()
            .cmd("ZADD")
            .arg(key(&["nodes"]))
            .arg(now_ms())
            .arg(node)
            .ignore();
        self.run(&pipe).await
    }

    async fn presence_remove(&self, node: &str, room: &str, sid: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .query(
                redis::cmd("HDEL")
                    .arg(key(&["presence", room, node]))
                    .arg(sid),
            )
            .await?;
        Ok(())
    }

    async fn presence_refresh(
        &self,
        node: &str,
        entries: &BTreeMap<String, Vec<(String, PresenceEntry)>>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut invocation = REFRESH.prepare_invoke();
        invocation
            .key(key(&["nodes"]))
            .key(key(&["node", node, "presence"]))
            .arg(node)
            .arg(now)
            .arg(now.saturating_sub(NODE_FORGET_MS))
            .arg(ttl_ms(ttl))
            .arg(key(&["presence", ""]));
        for (room, sockets) in entries {
            if sockets.is_empty() {
                continue;
            }
            invocation.arg(room).arg(sockets.len());
            for (sid, entry) in sockets {
                invocation
                    .arg(sid)
                    .arg(serde_json::to_string(entry).unwrap_or_default());
            }
        }
        let mut conn = self.conn.clone();
        invocation
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|had| had == 1)
            .map_err(redis_error)
    }

    async fn swap_beat_mark(
        &self,
        node: &str,
        mark: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        let key = key(&["node", node, "beat"]);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("GETSET")
            .arg(&key)
            .arg(mark)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl_ms(ttl))
            .ignore();
        let (previous,): (Option<String>,) = self.run(&pipe).await?;
        Ok(previous)
    }

    async fn presence_forget(&self, node: &str) -> Result<(), StoreError> {
        // The room set may be missing (an earlier version did not keep it, or it
        // expired): the hashes are found by name too. Once, when a node starts.
        let prefix = key(&["presence", ""]);
        let suffix = format!(":{node}");
        let pattern = format!("{}*{}", glob_escape(&prefix), glob_escape(&suffix));
        let mut doomed = vec![key(&["node", node, "presence"])];
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self.scan_page(cursor, &pattern).await?;
            // Room names have no `:`: `presence:<room>:<node>` is this node's hash, not
            // that of a node whose id ends with `:<node>`.
            doomed.extend(keys.into_iter().filter(|k| {
                k.strip_prefix(&prefix)
                    .and_then(|rest| rest.strip_suffix(&suffix))
                    .is_some_and(|room| !room.contains(':'))
            }));
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        for chunk in doomed.chunks(500) {
            let _: i64 = self.query(redis::cmd("DEL").arg(chunk)).await?;
        }
        Ok(())
    }

    async fn presence(&self, rooms: &[String]) -> Result<BTreeMap<String, Online>, StoreError> {
        let nodes: Vec<String> = self
            .query(redis::cmd("ZRANGE").arg(key(&["nodes"])).arg(0).arg(-1))
            .await?;
        let mut online: BTreeMap<String, Online> =
            rooms.iter().map(|r| (r.clone(), Vec::new())).collect();
        if nodes.is_empty() || rooms.is_empty() {
            return Ok(online);
        }
        let mut pipe = redis::pipe();
        for room in rooms {
            for node in &nodes {
                pipe.cmd("HVALS").arg(key(&["presence", room, node]));
            }
        }
        let values: Vec<Vec<String>> = self.run(&pipe).await?;
        let mut values = values.into_iter();
        for room in rooms {
            let Some(list) = online.get_mut(room) else {
                continue;
            };
            for _ in &nodes {
                for json in values.next().unwrap_or_default() {
                    if let Ok(entry) = serde_json::from_str::<PresenceEntry>(&json) {
                        list.push(entry);
                    }
                }
            }
        }
        Ok(online)
    }

    async fn presence_nodes(&self) -> Result<BTreeSet<String>, StoreError> {
        // A node's room set expires with the last of its hashes, on Redis's clock: it is
        // there exactly while the node has entries (the `nodes` scores are the nodes'
        // clocks, and outlive them by a day).
        let nodes: Vec<String> = self
            .query(redis::cmd("ZRANGE").arg(key(&["nodes"])).arg(0).arg(-1))
            .await?;
        if nodes.is_empty() {
            return Ok(BTreeSet::new());
        }
        let mut pipe = redis::pipe();
        for node in &nodes {
            pipe.cmd("EXISTS").arg(key(&["node", node, "presence"]));
        }
        let exists: Vec<bool> = self.run(&pipe).await?;
        Ok(nodes
            .into_iter()
            .zip(exists)
            .filter_map(|(node, live)| live.then_some(node))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_before_a_cursor_is_the_greatest_smaller_one() {
        assert_eq!(id_before((0, 0)), None);
        assert_eq!(id_before((0, 1)), Some((0, 0)));
        assert_eq!(id_before((5, 0)), Some((4, u64::MAX)));
        assert_eq!(id_before((5, 7)), Some((5, 6)));
        assert_eq!(
            id_before((u64::MAX, u64::MAX)),
            Some((u64::MAX, u64::MAX - 1))
        );
    }

    #[test]
    fn the_joint_scripts_replies_are_read() {
        let bulk = |text: &str| Value::BulkString(text.as_bytes().to_vec());
        assert_eq!(
            joint_reply(bulk("5-0 7-1")),
            Ok((Posted::Appended("5-0".to_owned()), Some("7-1".to_owned())))
        );
        assert_eq!(joint_reply(Value::Int(0)), Ok((Posted::NotMember, None)));
        assert_eq!(joint_reply(Value::Int(1)), Ok((Posted::RateLimited, None)));
        let refused = Value::Array(vec![bulk("5-0"), bulk(""), bulk("WRONGTYPE")]);
        assert_eq!(
            joint_reply(refused),
            Ok((Posted::Appended("5-0".to_owned()), None))
        );
        let failed = Value::Array(vec![bulk(""), bulk("OOM")]);
        assert!(joint_reply(failed).is_err());
        for malformed in ["5-0", "5-0 ", " 7-1", ""] {
            assert!(joint_reply(bulk(malformed)).is_err(), "{malformed:?}");
        }
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\d"), "a\\*b\\?\\[c\\]\\\\d");
        assert_eq!(glob_escape(":n1"), ":n1");
    }
}
