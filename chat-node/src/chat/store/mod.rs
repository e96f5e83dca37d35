//! Where the chat's state lives: users and their tokens, rooms and their invites,
//! memberships, each room's history, presence, and the rate limit's state.
//!
//! - [`ChatStore`]: the operations the chat needs, each one atomic on its own.
//! - [`RedisStore`] (`redis`): the cluster's store, every key prefixed `syd:chat:`.
//! - [`MemoryStore`] (`memory`): the embedded default, the same behaviour inside one
//!   process (share one between in-process nodes and they behave like a cluster).
//!
//! Presence is kept per node and per room with an expiry that the node's heartbeat pushes
//! forward (see [`crate::chat::presence`]): the entries of a node that dies without
//! cleaning up vanish after the TTL.

mod memory;
mod redis;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;
use super::rate::RateLimit;
use crate::bus::StreamTarget;

/// A store failure (Redis unreachable, a corrupt entry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Redis did not answer or refused the command: it did not run.
    #[error("redis: {0}")]
    Redis(String),
    /// A write whose reply never came (the response timed out, the connection broke
    /// while it was on its way): Redis may have run it, now or later (a stalled server
    /// runs what it has buffered when it resumes).
    #[error("redis: no reply, the write may have run: {0}")]
    NoReply(String),
    /// A step that must append to the bus's log in the same atomic step as its write
    /// cannot ([`ChatStore::create_room_and_append`]): no log to append to on this
    /// server. Nothing was written.
    #[error("redis: {0}")]
    NoLog(String),
    /// An entry the store holds is not what this code writes.
    #[error("corrupt entry {key}: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// A room's settings, fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMeta {
    /// Only members see it; joining needs the invite.
    pub private: bool,
    /// The invite of a private room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite: Option<String>,
    /// The user id of its creator (empty for `lobby`).
    #[serde(default)]
    pub created_by: String,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub created_at: u64,
    /// This creation of the room, random ([`secret::creation`]): a room created again
    /// under the same name, after Redis lost the first one, has another, which tells the
    /// new room's sockets from those left over from the old one (see `crate::chat`'s
    /// documentation). Empty for `lobby`, and for rooms an older node created.
    ///
    /// [`secret::creation`]: crate::chat::secret::creation
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub creation: String,
}

/// A message as it is stored, without its id and room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    /// The sender's display name when it sent the message.
    pub from: String,
    /// The sender's user id.
    pub user: String,
    /// The text.
    pub text: String,
    /// Milliseconds since the epoch.
    pub ts: u64,
}

/// A stored message: the `message` event's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Its id in the room's history: `<ms>-<seq>`, ordered.
    pub id: String,
    /// The room.
    pub room: String,
    /// The sender's display name.
    pub from: String,
    /// The sender's user id.
    pub user: String,
    /// The text.
    pub text: String,
    /// Milliseconds since the epoch.
    pub ts: u64,
}

impl Message {
    /// The stored `message` with its id and room.
    pub fn new(id: String, room: &str, message: NewMessage) -> Self {
        Self {
            id,
            room: room.to_owned(),
            from: message.from,
            user: message.user,
            text: message.text,
            ts: message.ts,
        }
    }
}

/// One socket online in one room.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PresenceEntry {
    /// The user id.
    pub user: String,
    /// The display name the socket connected with.
    pub name: String,
}

/// Who is online in a room: one entry per socket, on every node.
pub type Online = Vec<PresenceEntry>;

/// What [`ChatStore::post`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    /// The message is in the history with this id.
    Appended(String),
    /// The user is not a member of the room (or the room does not exist): nothing changed.
    NotMember,
    /// The user is over the rate limit: nothing changed.
    RateLimited,
}

/// Who may post to a room: [`ChatStore::post`] checks the membership or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Members only.
    Required,
    /// Everyone (`lobby`, whose members are not stored).
    Open,
}

/// A message for [`ChatStore::post`], with what it is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Post<'a> {
    /// The room.
    pub room: &'a str,
    /// Whether the sender (`message.user`) must be a member.
    pub membership: Membership,
    /// The message.
    pub message: &'a NewMessage,
    /// The sender's rate limit.
    pub limit: &'a RateLimit,
    /// The history's cap, as for [`ChatStore::append`].
    pub cap: usize,
}

/// A bus entry for [`ChatStore::post_and_append`]: the broadcast of the message, whose id
/// goes between `head` and `tail`, and where to append it.
#[derive(Debug, Clone, Copy)]
pub struct JointEntry<'a> {
    /// The bus's stream, as the bus would append to it.
    pub target: &'a StreamTarget,
    /// The entry's bytes before the message id.
    pub head: &'a [u8],
    /// The entry's bytes after it.
    pub tail: &'a [u8],
}

/// What [`ChatStore::create_room`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The room exists now, its creator a member.
    Created,
    /// The name is taken.
    Exists,
    /// The room limit is reached.
    Full,
    /// The creator is a member of as many rooms as it may be.
    TooManyMemberships,
    /// Another room looks the same ([`crate::chat::validate::look`]).
    LooksLike,
}

/// What [`ChatStore::add_member`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// The user is a member now.
    Added,
    /// The user was a member already (whatever its number of memberships).
    Already,
    /// The user is a member of as many rooms as it may be: nothing changed.
    TooManyMemberships,
    /// The room does not exist, or is not the creation the joiner checked (deleted, and
    /// perhaps created again, since): nothing changed.
    NoSuchRoom,
}

/// The bounds [`ChatStore::create_room`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomLimits {
    /// How many rooms may exist.
    pub max_rooms: usize,
    /// How many rooms the creator may be a member of, the new one included.
    pub max_memberships: usize,
}

/// The chat's state. Every method is one atomic step; the chat composes them.
#[async_trait]
pub trait ChatStore: Send + Sync + 'static {
    /// What the store is (`redis`, `memory`), for logs.
    fn kind(&self) -> &'static str;

    /// Whether it can serve the chat now, for `/healthz`: a write, not a ping. A Redis
    /// that answers but refuses writes (over `maxmemory` with `noeviction`, an ACL, a
    /// read-only replica) can post nothing, and its store connection, kept apart from the
    /// bus's, may still be reconnecting when the bus's PING passes again.
    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The user that `token` identifies, unless the token went unused for `ttl`; marks it
    /// in use now.
    async fn user_for_token(
        &self,
        token: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError>;
    /// Records a new user with its token, in use now: as [`touch_users`] does for a
    /// connected user.
    ///
    /// [`touch_users`]: ChatStore::touch_users
    async fn create_user(&self, user: &str, token: &str, ttl: Duration) -> Result<(), StoreError> {
        self.touch_users(&[(user.to_owned(), token.to_owned())], ttl)
            .await
    }
    /// Marks the tokens of connected users (user, token) in use now: a user stays known
    /// however long its connections last. Writes a token again if the store lost it.
    async fn touch_users(
        &self,
        users: &[(String, String)],
        ttl: Duration,
    ) -> Result<(), StoreError>;
    /// Forgets the users whose token expired, unused for the TTL its last use gave it (it
    /// names nobody any more; `ttl` is the TTL now): their memberships end. Answers how many it forgot. Idempotent, and safe beside
    /// other nodes doing the same; its work comes in bounded steps.
    async fn forget_expired_users(&self, ttl: Duration) -> Result<u64, StoreError>;
    /// Records when each user created before the store kept that record (by an older
    /// node) last used its token, so that [`forget_expired_users`] finds them too;
    /// answers how many it added. Idempotent; its work comes in bounded steps. The
    /// default has nothing to record.
    ///
    /// [`forget_expired_users`]: ChatStore::forget_expired_users
    async fn index_users(&self, ttl: Duration) -> Result<u64, StoreError> {
        let _ = ttl;
        Ok(0)
    }

    /// Deletes the rooms that have had no member for `ttl`: their settings and invite,
    /// history, place in the room list and look, so that their names can be created again
    /// and they no longer count against the room limit. A room is empty from the moment
    /// its last member leaves or is forgotten ([`forget_expired_users`]); a join ends
    /// it. Answers how many it deleted. Idempotent, and safe beside other nodes doing the
    /// same and joins: a room deleted has no member at that moment, and a join after it
    /// finds no room ([`Joined::NoSuchRoom`]). Its work comes in bounded steps.
    ///
    /// [`forget_expired_users`]: ChatStore::forget_expired_users
    async fn forget_empty_rooms(&self, ttl: Duration) -> Result<u64, StoreError>;
    /// Marks empty from now the rooms without members that the store does not know to be
    /// empty (left by their last member on an older node), so that
    /// [`forget_empty_rooms`](ChatStore::forget_empty_rooms) finds them too; answers how
    /// many it marked. Idempotent; its work comes in bounded steps. The default has
    /// nothing to mark.
    async fn index_empty_rooms(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Creates a room and makes its creator (`meta.created_by`) a member, unless the name
    /// is taken, another room looks the same ([`crate::chat::validate::look`]), the
    /// creator is a member of `limits.max_memberships` rooms already, or `limits.max_rooms`
    /// rooms exist already (checked in that order). One step: nodes creating rooms at once
    /// cannot overshoot either limit nor make two rooms of one look, and no room is ever
    /// left without its creator.
    async fn create_room(
        &self,
        room: &str,
        meta: &RoomMeta,
        limits: RoomLimits,
    ) -> Result<Created, StoreError>;
    /// [`create_room`](ChatStore::create_room), and when the room is created, `entry`
    /// appended to the bus's log in the same atomic step: the leave entry that takes out
    /// of the room's Socket.IO room the sockets left over from a room of that name the
    /// store lost (see `crate::chat`'s documentation), which must be in the log before
    /// anything of the new room can be. Answers the entry's id when the store appended
    /// it; `None` when the caller is to append it.
    ///
    /// The default creates the room and leaves the append to the caller: a store that
    /// keeps its data as long as its nodes run (in process) has no room whose sockets
    /// outlived it (a room it deletes has had no member, hence no socket, for its TTL). A store that may lose its data under running nodes (Redis) appends
    /// the entry itself, or creates nothing ([`StoreError::NoLog`]: no `entry`, or the
    /// log is on another server).
    async fn create_room_and_append(
        &self,
        room: &str,
        meta: &RoomMeta,
        limits: RoomLimits,
        entry: Option<JointEntry<'_>>,
    ) -> Result<(Created, Option<String>), StoreError> {
        let _ = entry;
        Ok((self.create_room(room, meta, limits).await?, None))
    }
    /// Indexes by look ([`crate::chat::validate::look`]) the rooms created before the
    /// store kept that index (by an older node), so that
    /// [`create_room`](ChatStore::create_room) refuses their look-alikes too; answers how
    /// many it added. Idempotent, and safe beside other nodes doing the same and creating
    /// rooms: a look keeps the first room indexed under it. Its work comes in bounded
    /// steps. The default has nothing to index.
    async fn index_looks(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
    /// A room's settings, if it exists.
    async fn room(&self, room: &str) -> Result<Option<RoomMeta>, StoreError>;
    /// The settings of each of `rooms` that exists.
    async fn rooms(&self, rooms: &[String]) -> Result<BTreeMap<String, RoomMeta>, StoreError>;
    /// The names of the public rooms that sort after `after` (byte order; `""`: from the
    /// first), at most `count`, in order: a page of the room list costs its own length,
    /// not the number of rooms.
    async fn public_rooms(&self, after: &str, count: usize) -> Result<Vec<String>, StoreError>;

    /// Makes `user` a member of `room`, unless it already is, or is a member of
    /// `max_memberships` rooms already, or the room is gone or is no longer the creation
    /// `creation` ([`RoomMeta::creation`]) whose settings the joiner checked (one step:
    /// joins on several nodes at once cannot overshoot the limit, and a join that checked
    /// a room's invite cannot become a membership of a room created again under its name).
    async fn add_member(
        &self,
        room: &str,
        user: &str,
        creation: &str,
        max_memberships: usize,
    ) -> Result<Joined, StoreError>;
    /// Ends `user`'s membership of `room`; `false` when it was not a member. A room left
    /// without members is marked empty from now ([`forget_empty_rooms`]).
    ///
    /// [`forget_empty_rooms`]: ChatStore::forget_empty_rooms
    async fn remove_member(&self, room: &str, user: &str) -> Result<bool, StoreError>;
    /// Whether `user` is a member of `room`.
    async fn is_member(&self, room: &str, user: &str) -> Result<bool, StoreError>;
    /// The rooms `user` is a member of.
    async fn rooms_of(&self, user: &str) -> Result<Vec<String>, StoreError>;

    /// Appends a message to the room's history, trimmed to about `cap` messages; its id.
    async fn append(
        &self,
        room: &str,
        message: &NewMessage,
        cap: usize,
    ) -> Result<String, StoreError>;
    /// Up to `limit` messages older than `before` (the newest ones without it), oldest
    /// first.
    async fn history(
        &self,
        room: &str,
        before: Option<(u64, u64)>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError>;

    /// Counts one event against `limit` in `bucket` (a user id for messages, see
    /// [`rate::bucket`](crate::chat::rate::bucket) for the others); `false` when it is
    /// over the limit.
    async fn admit(&self, bucket: &str, limit: &RateLimit) -> Result<bool, StoreError>;

    /// A `send` in one step (one round trip to Redis): checks that the sender is a member
    /// of the room (unless [`Membership::Open`]), then counts the message against the
    /// limit like [`admit`](ChatStore::admit), then appends it like
    /// [`append`](ChatStore::append). A check that fails leaves everything as it was.
    async fn post(&self, post: Post<'_>) -> Result<Posted, StoreError>;

    /// [`post`](ChatStore::post), and when the message is appended, `entry` (its
    /// broadcast, the message id spliced in) appended to the bus's stream in the same
    /// step: one round trip to Redis for both instead of two. Answers the entry's id when
    /// the store appended it; `None` when the caller is to append it, as after `post`:
    /// a store that cannot (the default), one on another server than the bus, and when
    /// the stream refused the entry (the message stays posted, as it would have).
    async fn post_and_append(
        &self,
        post: Post<'_>,
        entry: Option<JointEntry<'_>>,
    ) -> Result<(Posted, Option<String>), StoreError> {
        let _ = entry;
        Ok((self.post(post).await?, None))
    }

    /// Records socket `sid` of node `node` as online in `room`, until `ttl` from now
    /// unless refreshed.
    async fn presence_add(
        &self,
        node: &str,
        room: &str,
        sid: &str,
        entry: &PresenceEntry,
        ttl: Duration,
    ) -> Result<(), StoreError>;
    /// Forgets socket `sid` of node `node` in `room`.
    async fn presence_remove(&self, node: &str, room: &str, sid: &str) -> Result<(), StoreError>;
    /// The heartbeat: replaces everything node `node` holds with `entries`, grouped by
    /// room (entries not among them, in these rooms or others, are removed: a socket that
    /// left while a heartbeat was on its way, or one of an earlier process with the same
    /// node id), and moves their expiry to `ttl` from now. Answers whether the node had
    /// entries until then: `false` after a beat with none, or when they were lost (Redis
    /// restarted without its data) or expired (the beat came too late).
    async fn presence_refresh(
        &self,
        node: &str,
        entries: &BTreeMap<String, Vec<(String, PresenceEntry)>>,
        ttl: Duration,
    ) -> Result<bool, StoreError>;
    /// Removes every entry of node `node`, wherever it is: a node starting forgets what an
    /// earlier process with its id left.
    async fn presence_forget(&self, node: &str) -> Result<(), StoreError>;
    /// Replaces node `node`'s beat mark with `mark`, kept for `ttl`, and answers the mark it
    /// had (`None`: none, or it expired). Only the node's heartbeat writes it: a mark other
    /// than the one the heartbeat wrote last means the store lost its data since (restarted
    /// empty, flushed, or restored from an older snapshot), which nothing else written
    /// meanwhile can hide.
    async fn swap_beat_mark(
        &self,
        node: &str,
        mark: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError>;
    /// Who is online in each of `rooms`, on every live node.
    async fn presence(&self, rooms: &[String]) -> Result<BTreeMap<String, Online>, StoreError>;
    /// The nodes that have presence entries now (not expired): a node that drops out
    /// without removing its sockets (killed, or its entries lost with Redis's data) has
    /// changed the presence of its rooms without telling them.
    async fn presence_nodes(&self) -> Result<BTreeSet<String>, StoreError>;
}
