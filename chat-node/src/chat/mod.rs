//! The chat application on namespace `/`: users with display names and secret tokens,
//! public and private rooms with invites, messages with a history per room, typing
//! notices and presence across nodes. The public contract is `docs/chat-api.md`.
//!
//! # Layout
//! - this module: registration ([`register`]), the connect hook (identity, rejoining the
//!   user's rooms, `welcome`), the disconnect clean-up, and the indexing by look of the
//!   rooms older nodes created (`index_looks`).
//! - [`handlers`]: one function per client event (`rooms`, `create`, `join`, `leave`,
//!   `send`, `typing`, `history`), each answering its ack.
//! - [`validate`]: checks of names, room names, text and cursors.
//! - [`error`]: [`ChatError`], the ack's `error` strings.
//! - [`config`]: the settings, [`ChatConfig`].
//! - [`rate`]: the per-user rate limit (GCRA).
//! - [`presence`]: presence counting and the heartbeat that keeps this node's entries alive.
//! - [`secret`]: tokens, invites and user ids.
//! - [`users`]: connected users' tokens kept in use, expired users forgotten, rooms empty
//!   for `--empty-room-ttl` deleted.
//! - [`store`]: where the state lives ([`ChatStore`]): Redis or memory.
//!
//! Private rooms are enforced here, for every event: the Socket.IO room of a chat room
//! only ever holds sockets of its members (a socket joins it after the membership check),
//! and every request naming a room checks the membership in the store first. A socket's
//! connection-state recovery goes only to the same user (the token's user id is recorded
//! with the state) and brings back only the rooms it is still a member of, and their
//! missed broadcasts only (`may_recover`). The one way a socket outlives its membership
//! is Redis losing its data: the store forgets the room and its members, the sockets stay
//! in its Socket.IO room. So creating a room takes every socket that is not the new
//! room's out of its Socket.IO room, on every node, before anything of the new room can
//! reach one (see "A room created again").
//!
//! # A room created again
//!
//! Each creation of a room has a random id
//! ([`RoomMeta::creation`](store::RoomMeta::creation)), and a socket in a chat room's
//! Socket.IO room (`#<room>`) is also in its creation's (`%<creation>/<room>`,
//! [`creation_room`]), put in both in one step. `create` runs the store's creation of the
//! room with the leave, from `#<room>`, of every socket *not* in the new creation's room
//! (`create_emptied`), and a store that may lose its data (Redis) appends the leave's
//! entry to the cluster's log in the script that creates the room, or creates none
//! ([`ChatStore::create_room_and_append`]). Why:
//! - Nothing of the new room comes before the leave in the log: its messages, `presence`,
//!   `system` notices and join entries all follow the room's creation, so its leave, and
//!   every node applies the log in order (the creating node too: it applies its own leave
//!   once its reader has reached it). The sockets left over from the lost room leave
//!   before any of the new room's events reach their node, and do not come back: every
//!   way in checks the membership, which the store no longer has.
//! - Only the `create` that makes the room appends a leave: one that finds the name taken
//!   writes nothing. A leave from each `create` that found the name free, appended before
//!   it knew whether it would win, could come in the log after the winner's socket, or an
//!   early joiner's, had entered, and take it out.
//! - The leave spares every socket of the new room whenever a node applies it: a joiner's
//!   socket that enters on a node whose reader has not reached the leave yet is marked as
//!   the new creation's, as is the creator's.
//!
//! # Leaving a room on every node
//!
//! Every socket is also in its user's Socket.IO room ([`user_room`]). `leave` ends the
//! membership in the store, then takes every socket of the user room out of the chat
//! room, on every node, through the adapter ([`crate::cluster`]: a leave entry in the
//! namespace's log, which every node applies in the log's order, and a node delivers even
//! its own broadcasts in that order). Why no socket of the user receives a message sent
//! after the `leave` ack:
//! - The message's broadcast is appended to the log after the leave entry (the ack waits
//!   for the leave's append), so every node applies the leave before it delivers it.
//! - A socket that was not in the room when its node applied the leave cannot enter it
//!   afterwards: each way in (the connect hook, `join`, `create`, a late entry, a join
//!   entry from another tab's `join` or `create`) puts the socket in the room first and
//!   reads the membership after; a read after the store
//!   dropped the membership makes the socket leave again, and a read before it means the
//!   socket was in the room (and its user's room, joined first of all) before the leave
//!   entry was even appended, so that its node's reader takes it out.
//!
//! Each node then removes its sockets' presence in the room and announces it, so the
//! room's `presence` stops listing the user.
//!
//! `join` and `create` are the other way round: every socket of the user room enters the
//! chat room, on every node, through a join entry of the log ([`crate::cluster`]), so
//! that every connection of the user is in all of its rooms. `leave` is the only way a membership ends
//! (nobody is removed by someone else; a room is deleted only once it has had no member
//! for `--empty-room-ttl`, see [`users`]).

pub mod config;
pub mod error;
mod handlers;
pub mod presence;
pub mod rate;
pub mod secret;
pub mod store;
mod users;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

pub use self::config::{ChatConfig, ChatConfigError};
pub use self::error::ChatError;
pub use self::rate::RateLimit;
use self::store::PresenceEntry;
pub use self::store::{ChatStore, MemoryStore, RedisStore, StoreError};
use crate::engineio::{Sid, SidMap};
use crate::socketio::packet::InvalidNamespace;
use crate::socketio::{ConnectError, Data, JointStep, Nsp, Room, SocketIo, SocketRef};

/// The public room every socket is in; it always exists.
pub const LOBBY: &str = "lobby";

/// The Socket.IO room of chat room `room`. Socket.IO also has a room per socket, named by
/// its id; without the prefix a chat room named like a socket's id would be that socket's
/// own room (its members would get what is sent to that socket alone). `#` is in no chat
/// room name and in no socket id.
pub(crate) fn sio_room(room: &str) -> Room {
    Room::from(format!("#{room}"))
}

/// The Socket.IO room of all the sockets of user `user`, on every node: what a `leave`
/// takes out of the room. `@` is in no user id, no socket id, and starts no chat room's
/// Socket.IO room.
pub(crate) fn user_room(user: &str) -> Room {
    Room::from(format!("@{user}"))
}

/// The chat room a Socket.IO room stands for, if it is one.
fn chat_room(room: &Room) -> Option<&str> {
    room.as_str().strip_prefix('#')
}

/// The Socket.IO room that marks the sockets of creation `creation` of chat room `room`
/// ([`RoomMeta::creation`](store::RoomMeta::creation)): every socket in the room's
/// Socket.IO room is in it too, so that the leave of a new room's leftover sockets spares
/// its own (see the module's documentation). `%` starts no other Socket.IO room (no chat
/// room name, socket id or user id holds it), and a creation id has no `/`.
fn creation_room(room: &str, creation: &str) -> Room {
    Room::from(format!("%{creation}/{room}"))
}

/// The chat room a creation room ([`creation_room`]) marks the sockets of, if it is one.
fn marked_room(room: &Room) -> Option<&str> {
    let (_, room) = room.as_str().strip_prefix('%')?.split_once('/')?;
    Some(room)
}

/// The Socket.IO rooms a socket of `room` is in: the room's, and its creation's (none for
/// `lobby` and a room an older node created, which no leave of leftovers concerns).
fn entry_rooms(room: &str, creation: &str) -> Vec<Room> {
    let mut rooms = Vec::with_capacity(2);
    if !creation.is_empty() {
        rooms.push(creation_room(room, creation));
    }
    rooms.push(sio_room(room));
    rooms
}

/// How long presence changes in one room are gathered into one broadcast.
pub const PRESENCE_DEBOUNCE: Duration = Duration::from_millis(150);

/// How long a `create` waits for this node to have indexed the rooms of older nodes by
/// look ([`index_looks`]) before it answers `unavailable`.
const LOOKS_WAIT: Duration = Duration::from_secs(5);

/// The chat of one node: keep it alive as long as the node (the namespace hook holds only
/// a weak reference, and the presence heartbeat stops when it is dropped).
#[derive(Clone)]
pub struct Chat {
    inner: Arc<ChatInner>,
}

impl std::fmt::Debug for Chat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat")
            .field("node", &self.inner.node)
            .field("store", &self.inner.store.kind())
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Chat {
    /// The store.
    pub fn store(&self) -> &Arc<dyn ChatStore> {
        &self.inner.store
    }

    /// The settings.
    pub fn config(&self) -> &ChatConfig {
        &self.inner.config
    }
}

/// One local socket's identity and the chat rooms it is in.
struct Session {
    user: String,
    /// The user's token: kept in use while the session lasts ([`users`]).
    token: String,
    name: String,
    rooms: BTreeSet<String>,
}

/// The state behind [`Chat`], shared by the handlers.
pub(crate) struct ChatInner {
    node: String,
    config: ChatConfig,
    store: Arc<dyn ChatStore>,
    nsp: OnceLock<Nsp>,
    sessions: Mutex<SidMap<Session>>,
    /// Rooms with a `presence` broadcast scheduled.
    presence_pending: Mutex<HashSet<String>>,
    /// Taken shared by each presence write of one socket, exclusively by the heartbeat
    /// from its snapshot of the sessions to the end of its write: a heartbeat never lands
    /// between a session change and its own write with a snapshot older than the change
    /// (it would bring back a socket that left, or hide one that came, until the next
    /// beat).
    presence_writes: tokio::sync::RwLock<()>,
    /// `true` once the rooms of older nodes are indexed by look ([`index_looks`]):
    /// `create` waits for it.
    looks_indexed: watch::Receiver<bool>,
}

/// Milliseconds since the epoch (message `ts`, ids of the embedded store).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Registers the chat on namespace `/` of `io`, as node `node`, on `store`; starts the
/// presence heartbeat and the indexing of older nodes' rooms by look. Call inside a Tokio
/// runtime.
pub fn register(
    io: &SocketIo,
    node: &str,
    config: ChatConfig,
    store: Arc<dyn ChatStore>,
) -> Result<Chat, InvalidNamespace> {
    let (looks_done, looks_indexed) = watch::channel(false);
    let inner = Arc::new(ChatInner {
        node: node.to_owned(),
        config,
        store,
        nsp: OnceLock::new(),
        sessions: Mutex::new(SidMap::default()),
        presence_pending: Mutex::new(HashSet::new()),
        presence_writes: tokio::sync::RwLock::new(()),
        looks_indexed,
    });
    let weak = Arc::downgrade(&inner);
    let nsp = io.ns(
        "/",
        move |socket: SocketRef, auth: Option<Map<String, Value>>| {
            let chat = weak.clone();
            async move {
                match chat.upgrade() {
                    Some(chat) => connect(chat, socket, auth).await,
                    None => Err(ConnectError::new("shutting down")),
                }
            }
        },
    )?;
    let weak = Arc::downgrade(&inner);
    nsp.on_recovery(
        move |auth: Option<Map<String, Value>>, identity: Option<String>, rooms: Vec<Room>| {
            let chat = weak.clone();
            async move {
                let chat = chat.upgrade()?;
                may_recover(&chat, auth, identity, rooms).await
            }
        },
    );
    let weak = Arc::downgrade(&inner);
    nsp.on_sockets_left(move |sids: &[Sid], rooms: &[Room]| {
        if let Some(chat) = weak.upgrade() {
            chat.sockets_left(sids, rooms);
        }
    });
    let weak = Arc::downgrade(&inner);
    nsp.on_sockets_joined(move |sids: &[Sid], rooms: &[Room]| {
        if let Some(chat) = weak.upgrade() {
            chat.sockets_joined(sids, rooms);
        }
    });
    let _ = inner.nsp.set(nsp);
    tokio::spawn(presence::heartbeat(Arc::downgrade(&inner)));
    tokio::spawn(index_looks(Arc::downgrade(&inner), looks_done));
    tokio::spawn(users::keep(Arc::downgrade(&inner)));
    Ok(Chat { inner })
}

/// Indexes by look the rooms that nodes from before the look index created
/// ([`ChatStore::index_looks`]), then lets `create` through: until then, a look-alike of
/// such a room would be accepted. A task rather than a step of the start: it reads every
/// key of the store, so on a big data set it takes a while, and only `create` needs it
/// (connections, joins and messages go on meanwhile). Tries again after a failure.
async fn index_looks(chat: Weak<ChatInner>, done: watch::Sender<bool>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let Some(store) = chat.upgrade().map(|chat| Arc::clone(&chat.store)) else {
            return;
        };
        match store.index_looks().await {
            Ok(added) => {
                if added > 0 {
                    tracing::info!(added, "rooms of older nodes indexed by look");
                }
                let _ = done.send(true);
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "indexing older nodes' rooms by look; `create` waits for it");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// The recovery check: a socket's state goes back only to its own user (the token in the
/// CONNECT auth names the user id recorded with it; a client without a token would be a
/// new user), and keeps only the rooms that user is still a member of (it may have left
/// one from another tab meanwhile), so that only their missed broadcasts are replayed.
/// A refusal gives the client a fresh socket, and `connect` then puts it in its rooms.
async fn may_recover(
    chat: &ChatInner,
    auth: Option<Map<String, Value>>,
    identity: Option<String>,
    rooms: Vec<Room>,
) -> Option<Vec<Room>> {
    let identity = identity?;
    let token = auth
        .as_ref()
        .and_then(|a| a.get("token"))
        .and_then(Value::as_str)
        .filter(|t| validate::secret_shape(t))?;
    let user = match chat
        .store
        .user_for_token(token, chat.config.token_ttl)
        .await
    {
        Ok(user) => user?,
        Err(error) => {
            error::store_failed(&error, "a recovery");
            return None;
        }
    };
    if user != identity {
        tracing::debug!("recovery by another user refused");
        return None;
    }
    let member: HashSet<String> = match chat.store.rooms_of(&user).await {
        Ok(rooms) => rooms.into_iter().collect(),
        Err(error) => {
            error::store_failed(&error, "a recovery");
            return None;
        }
    };
    Some(
        rooms
            .into_iter()
            .filter(|room| {
                chat_room(room)
                    .or_else(|| marked_room(room))
                    .is_some_and(|r| r == LOBBY || member.contains(r))
            })
            .collect(),
    )
}

/// Counts a new user against its client's limit (a client not known, as in process,
/// is not limited): each new user comes with fresh per-user limits.
async fn admit_new_user(chat: &ChatInner, socket: &SocketRef) -> Result<(), ConnectError> {
    let Some(client) = socket.session().client() else {
        return Ok(());
    };
    let bucket = rate::client_bucket(client, "new-user");
    match chat
        .store
        .admit(&bucket, &chat.config.new_user_rate_limit)
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => {
            tracing::debug!(%client, "new user refused: rate limited");
            let reason = ChatError::RateLimited.to_string();
            Err(ConnectError::new(reason.clone()).with_data(json!({ "reason": reason })))
        }
        Err(error) => {
            error::store_failed(&error, "a connection");
            Err(ConnectError::new("unavailable"))
        }
    }
}

/// The connect hook: checks the name, finds or creates the user, puts the socket in
/// `lobby` and in every room the user is a member of, says `welcome`.
async fn connect(
    chat: Arc<ChatInner>,
    socket: SocketRef,
    auth: Option<Map<String, Value>>,
) -> Result<(), ConnectError> {
    let field = |key: &str| {
        auth.as_ref()
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
    };
    let name = validate::name(field("name")).map_err(|error| {
        ConnectError::new(error.to_string()).with_data(json!({"reason": error.to_string()}))
    })?;
    let unavailable = |error: StoreError| {
        error::store_failed(&error, "a connection");
        ConnectError::new("unavailable")
    };
    // An unknown or malformed token is not an error: the client gets a new identity.
    let known = match field("token").filter(|t| validate::secret_shape(t)) {
        Some(token) => chat
            .store
            .user_for_token(token, chat.config.token_ttl)
            .await
            .map_err(unavailable)?
            .map(|user| (user, token.to_owned())),
        None => None,
    };
    let (user, token) = match known {
        Some(known) => known,
        None => {
            admit_new_user(&chat, &socket).await?;
            let (user, token) = (secret::user_id(), secret::secret());
            chat.store
                .create_user(&user, &token, chat.config.token_ttl)
                .await
                .map_err(unavailable)?;
            (user, token)
        }
    };
    let mut rooms: BTreeSet<String> = chat
        .store
        .rooms_of(&user)
        .await
        .map_err(unavailable)?
        .into_iter()
        .collect();
    // Which creation of each room the socket enters (see the module's documentation).
    let listed: Vec<String> = rooms.iter().cloned().collect();
    let metas = chat.store.rooms(&listed).await.map_err(unavailable)?;
    rooms.insert(LOBBY.to_owned());

    let _ = socket.emit(
        "welcome",
        vec![json!({
            "node": chat.node,
            "name": name,
            "user": user,
            "token": token,
            "maxText": chat.config.max_text,
        })
        .into()],
    );
    chat.sessions.lock().insert(
        socket.id(),
        Session {
            user: user.clone(),
            token: token.clone(),
            name: name.clone(),
            rooms: BTreeSet::new(),
        },
    );
    // Recorded with the socket's recovery state: only this user may take it back.
    socket.set_identity(user.clone());
    // Before any chat room (and before any request can come): a `leave` from another
    // tab must find every socket that may be in the room (see the module's documentation).
    if let Err(error) = socket.join(user_room(&user)).await {
        tracing::warn!(%error, "joining the user's socket.io room");
    }
    handlers::register(&chat, &socket);
    let weak = Arc::downgrade(&chat);
    socket.on_disconnect(move |socket, _reason| {
        if let Some(chat) = weak.upgrade() {
            tokio::spawn(async move { chat.disconnected(socket.id()).await });
        }
    });
    for room in &rooms {
        let creation = metas.get(room).map_or("", |meta| meta.creation.as_str());
        chat.enter(&socket, room, creation).await;
    }
    let announced = rooms.clone();
    // The memberships were read before the socket entered the rooms: the user may have
    // left one since, from another tab, too early for that leave to find this socket in
    // the room.
    let rooms = chat.still_member(&socket, &user, rooms).await;
    // A recovered socket got its Socket.IO rooms back before this hook, checked against
    // the memberships of a moment ago: one the user left since then goes now.
    if socket.recovered() {
        chat.drop_stale_rooms(&socket, &user, &rooms).await;
    }
    let rooms = announced;
    // Everyone in those rooms, this socket included (it is reachable by broadcasts once
    // the hook returns, well before the debounced broadcast), gets the new member list.
    for room in &rooms {
        chat.presence_changed(room);
    }
    Ok(())
}

impl ChatInner {
    fn nsp(&self) -> Option<&Nsp> {
        self.nsp.get()
    }

    /// Returns once the rooms of older nodes are indexed by look ([`index_looks`]), or
    /// `unavailable` after [`LOOKS_WAIT`]: a room created before could pass for one of
    /// them.
    async fn looks_indexed(&self) -> Result<(), ChatError> {
        let mut indexed = self.looks_indexed.clone();
        let waited = tokio::time::timeout(LOOKS_WAIT, indexed.wait_for(|done| *done)).await;
        // An error: the indexing task is gone (the chat is shutting down).
        if matches!(waited, Ok(Ok(_))) {
            Ok(())
        } else {
            Err(ChatError::Unavailable)
        }
    }

    /// The user id and display name of a local socket.
    fn identity(&self, socket: &SocketRef) -> Option<(String, String)> {
        self.sessions
            .lock()
            .get(&socket.id())
            .map(|s| (s.user.clone(), s.name.clone()))
    }

    /// Whether the session of the socket lists `room`.
    fn is_in(&self, socket: &SocketRef, room: &str) -> bool {
        self.sessions
            .lock()
            .get(&socket.id())
            .is_some_and(|session| session.rooms.contains(room))
    }

    /// Puts the socket in the Socket.IO room of `room`, marked as one of its creation
    /// `creation`, and records it as online there; whether it was not in yet. Only call
    /// it for a member.
    async fn enter(&self, socket: &SocketRef, room: &str, creation: &str) -> bool {
        let entry = {
            let mut sessions = self.sessions.lock();
            let Some(session) = sessions.get_mut(&socket.id()) else {
                return false;
            };
            // Checked first: every `send` comes here, nearly always for a room it is in.
            if session.rooms.contains(room) {
                return false;
            }
            session.rooms.insert(room.to_owned());
            PresenceEntry {
                user: session.user.clone(),
                name: session.name.clone(),
            }
        };
        // Both at once: a leave of leftovers finds it either out of the room or marked.
        if let Err(error) = socket.join_all(entry_rooms(room, creation)).await {
            tracing::warn!(%error, room, "joining a socket.io room");
        }
        let _writing = self.presence_writes.read().await;
        let added = self
            .store
            .presence_add(
                &self.node,
                room,
                socket.id().as_str(),
                &entry,
                self.config.presence_ttl,
            )
            .await;
        match added {
            Ok(()) => {}
            Err(error) => error::store_failed(&error, "recording presence"),
        }
        true
    }

    /// [`enter`](Self::enter) for a socket of user `user`, a member of `room` when
    /// checked a moment ago, that may not be in the room yet (the user joined from
    /// another tab since it connected, or is joining now): when it was not, the
    /// membership is read again, now that the socket is in, and the room is told, as for
    /// any socket that comes. A membership ended meanwhile (a `leave` from another tab,
    /// which may have missed this socket) takes it out again. `creation`: the room's,
    /// when the caller has just read it; else it is read, if the socket is not in yet.
    async fn enter_late(
        self: &Arc<Self>,
        socket: &SocketRef,
        user: &str,
        room: &str,
        creation: Option<&str>,
    ) {
        if self.is_in(socket, room) {
            return;
        }
        let creation = match creation {
            Some(creation) => creation.to_owned(),
            None => match self.creation_of(room).await {
                Some(creation) => creation,
                // Gone, or unknown: out (a join entry may have put it in), until its next
                // request there.
                None => {
                    self.exit(socket, room).await;
                    return;
                }
            },
        };
        if !self.enter(socket, room, &creation).await {
            return;
        }
        if room != LOBBY {
            let member = self.store.is_member(room, user).await;
            if let Err(error) = &member {
                error::store_failed(error, "checking a membership");
            }
            // Unknown counts as ended: the socket comes back on its next request there.
            if !member.unwrap_or(false) {
                self.exit(socket, room).await;
            }
        }
        self.presence_changed(room);
    }

    /// The creation of `room` ([`RoomMeta::creation`](store::RoomMeta::creation)), read
    /// from the store; `None` when the room does not exist or the store cannot say.
    async fn creation_of(&self, room: &str) -> Option<String> {
        if room == LOBBY {
            return Some(String::new());
        }
        match self.store.room(room).await {
            Ok(meta) => meta.map(|meta| meta.creation),
            Err(error) => {
                error::store_failed(&error, "reading a room");
                None
            }
        }
    }

    /// The rooms of `entered` (which the socket of `user` has just entered) that the
    /// user is still a member of, read now; the socket leaves the others. When the store
    /// cannot say, the socket keeps `lobby` only: it enters its other rooms on its next
    /// request there.
    async fn still_member(
        &self,
        socket: &SocketRef,
        user: &str,
        entered: BTreeSet<String>,
    ) -> BTreeSet<String> {
        // `lobby` alone: nothing to leave.
        if entered.len() <= 1 {
            return entered;
        }
        let now: HashSet<String> = match self.store.rooms_of(user).await {
            Ok(rooms) => rooms.into_iter().collect(),
            Err(error) => {
                error::store_failed(&error, "a connection");
                HashSet::new()
            }
        };
        let (kept, gone): (BTreeSet<String>, BTreeSet<String>) = entered
            .into_iter()
            .partition(|room| room == LOBBY || now.contains(room));
        for room in &gone {
            self.exit(socket, room).await;
        }
        kept
    }

    /// Takes the socket of `user` out of the Socket.IO rooms that are not among the chat
    /// rooms `rooms` (nor its own room, nor its user's).
    async fn drop_stale_rooms(&self, socket: &SocketRef, user: &str, rooms: &BTreeSet<String>) {
        let current = match socket.rooms().await {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(%error, "listing a socket's rooms");
                return;
            }
        };
        let own = Room::from(socket.id());
        let user = user_room(user);
        for room in current {
            let kept = chat_room(&room)
                .or_else(|| marked_room(&room))
                .is_some_and(|r| rooms.contains(r));
            if room != own && room != user && !kept {
                if let Err(error) = socket.leave(room.clone()).await {
                    tracing::warn!(%error, %room, "leaving a socket.io room");
                }
            }
        }
    }

    /// Takes the socket out of `room`'s Socket.IO room and its presence; whether it was
    /// in.
    async fn exit(&self, socket: &SocketRef, room: &str) -> bool {
        let was_in = self
            .sessions
            .lock()
            .get_mut(&socket.id())
            .is_some_and(|session| session.rooms.remove(room));
        // Always, even when the session does not list it: the socket must not stay in a
        // room it left (whatever put it there). Its marks first: never in the room
        // unmarked, should it enter again meanwhile.
        self.drop_marks(socket, room).await;
        if let Err(error) = socket.leave(sio_room(room)).await {
            tracing::warn!(%error, room, "leaving a socket.io room");
        }
        if !was_in {
            return false;
        }
        let _writing = self.presence_writes.read().await;
        let removed = self
            .store
            .presence_remove(&self.node, room, socket.id().as_str())
            .await;
        if let Err(error) = removed {
            error::store_failed(&error, "removing presence");
        }
        true
    }

    /// Takes the socket out of the creation rooms that mark it as one of `room`'s.
    async fn drop_marks(&self, socket: &SocketRef, room: &str) {
        let current = match socket.rooms().await {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(%error, "listing a socket's rooms");
                return;
            }
        };
        for mark in current.into_iter().filter(|r| marked_room(r) == Some(room)) {
            if let Err(error) = socket.leave(mark).await {
                tracing::warn!(%error, room, "leaving a socket.io room");
            }
        }
    }

    /// Takes every socket of `user`, on every node, out of `room` (see the module's
    /// documentation), and out of the room of its creation `creation` (the marks of the
    /// sockets of an older creation of that name stay until they disconnect: they mark
    /// nothing); this node's at once. An error: the other nodes could not be told.
    async fn exit_everywhere(
        &self,
        user: &str,
        room: &str,
        creation: &str,
    ) -> Result<(), ChatError> {
        let Some(nsp) = self.nsp() else {
            return Err(ChatError::Unavailable);
        };
        nsp.to(user_room(user))
            .sockets_leave(entry_rooms(room, creation))
            .await
            .map_err(|error| {
                tracing::warn!(%error, room, "a leave not told to the other nodes");
                ChatError::LeaveIncomplete
            })
    }

    /// Runs `step`, the store's creation of `room` as creation `creation`, with the
    /// leave that takes every socket not marked as one of this creation's out of the
    /// room's Socket.IO room, on every node: the sockets left over from a room of that
    /// name that the store lost (see the module's documentation). The step appends the
    /// leave's entry in the same step as the room when the store can
    /// ([`ChatStore::create_room_and_append`]); the step keeps its own result.
    async fn create_emptied(&self, room: &str, creation: &str, step: &dyn JointStep) {
        let Some(nsp) = self.nsp() else {
            step.run(None, &[], &[]).await;
            return;
        };
        if let Err(error) = nsp
            .to(sio_room(room))
            .except(creation_room(room, creation))
            .sockets_leave_joint(vec![sio_room(room)], step)
            .await
        {
            tracing::warn!(%error, room, "a new room's leftover sockets not taken out on the other nodes");
        }
    }

    /// The adapter took local sockets out of rooms (a `leave` of their user, made on this
    /// node or another): they are no longer online there. Runs between two entries of the
    /// bus reader: the presence writes go to a task.
    fn sockets_left(self: &Arc<Self>, sids: &[Sid], rooms: &[Room]) {
        let rooms: Vec<&str> = rooms.iter().filter_map(chat_room).collect();
        let mut gone: Vec<(Sid, String)> = Vec::new();
        {
            let mut sessions = self.sessions.lock();
            for sid in sids {
                let Some(session) = sessions.get_mut(sid) else {
                    continue;
                };
                for room in &rooms {
                    if session.rooms.remove(*room) {
                        gone.push((*sid, (*room).to_owned()));
                    }
                }
            }
        }
        if gone.is_empty() {
            return;
        }
        let chat = Arc::clone(self);
        tokio::spawn(async move {
            chat.went_offline(&gone).await;
        });
    }

    /// Puts every socket of `user`, on every node, in `room` (the user joined or created
    /// it from one of them: every connection of the user enters all of its rooms). Each
    /// node's sockets then enter it as a late entry does, the membership read after they
    /// are in ([`sockets_joined`](Self::sockets_joined)). When the other nodes cannot be
    /// told, their sockets enter on their next request naming the room, or when they
    /// reconnect.
    async fn enter_everywhere(&self, user: &str, room: &str, creation: &str) {
        // Every socket is in `lobby` from its connect on.
        let (false, Some(nsp)) = (room == LOBBY, self.nsp()) else {
            return;
        };
        if let Err(error) = nsp
            .to(user_room(user))
            .sockets_join(entry_rooms(room, creation))
            .await
        {
            tracing::warn!(%error, room, "a join not told to the other nodes");
        }
    }

    /// The adapter put local sockets in rooms (a join or create of their user, made on
    /// this node or another): they enter as a late entry does, which records them in
    /// their sessions and presence, and takes them out again if the membership has ended
    /// meanwhile. Runs between two entries of the bus reader: the rest goes to a task.
    fn sockets_joined(self: &Arc<Self>, sids: &[Sid], rooms: &[Room]) {
        let rooms: Vec<String> = rooms
            .iter()
            .filter_map(chat_room)
            .map(str::to_owned)
            .collect();
        let Some(nsp) = self.nsp() else {
            return;
        };
        let sockets: Vec<(SocketRef, String)> = {
            let sessions = self.sessions.lock();
            sids.iter()
                .filter_map(|sid| {
                    let user = sessions.get(sid)?.user.clone();
                    Some((nsp.socket(*sid)?, user))
                })
                .collect()
        };
        if rooms.is_empty() || sockets.is_empty() {
            return;
        }
        let chat = Arc::clone(self);
        tokio::spawn(async move {
            for (socket, user) in &sockets {
                for room in &rooms {
                    chat.enter_late(socket, user, room, None).await;
                }
            }
        });
    }

    /// Redis lost its data (the heartbeat found another beat mark than its own): the store may
    /// have forgotten memberships (restarted empty, or from an older snapshot) that the
    /// local sockets still act on, being in those rooms' Socket.IO rooms. Each leaves the
    /// rooms its user is not a member of in the store now, and the rooms are told. A
    /// membership added since the sessions were read is in the store before its socket
    /// enters the room (each way in), so it is never taken for a forgotten one.
    async fn recheck_memberships(self: &Arc<Self>) {
        let Some(nsp) = self.nsp() else {
            return;
        };
        let sessions: Vec<(Sid, String, Vec<String>)> = self
            .sessions
            .lock()
            .iter()
            .map(|(sid, session)| {
                let rooms = session.rooms.iter().filter(|r| *r != LOBBY).cloned();
                (*sid, session.user.clone(), rooms.collect())
            })
            .filter(|(_, _, rooms): &(Sid, String, Vec<String>)| !rooms.is_empty())
            .collect();
        let mut members: HashMap<String, HashSet<String>> = HashMap::new();
        for (sid, user, rooms) in sessions {
            let Some(socket) = nsp.socket(sid) else {
                continue;
            };
            if !members.contains_key(&user) {
                match self.store.rooms_of(&user).await {
                    Ok(now) => {
                        members.insert(user.clone(), now.into_iter().collect());
                    }
                    // Redis is going again: the next loss it notices tries again.
                    Err(error) => {
                        error::store_failed(&error, "re-checking memberships");
                        return;
                    }
                }
            }
            let Some(now) = members.get(&user) else {
                continue;
            };
            for room in rooms.iter().filter(|room| !now.contains(*room)) {
                tracing::info!(
                    room,
                    "a membership lost with Redis's data: its socket leaves the room"
                );
                if self.exit(&socket, room).await {
                    self.presence_changed(room);
                }
            }
        }
    }

    /// A socket is gone: forget it and tell its rooms who is left.
    async fn disconnected(self: Arc<Self>, sid: Sid) {
        let Some(session) = self.sessions.lock().remove(&sid) else {
            return;
        };
        let gone: Vec<(Sid, String)> = session.rooms.into_iter().map(|room| (sid, room)).collect();
        self.went_offline(&gone).await;
    }

    /// Removes the presence of each socket in its room (sessions no longer list them),
    /// then tells those rooms.
    async fn went_offline(self: &Arc<Self>, gone: &[(Sid, String)]) {
        let writing = self.presence_writes.read().await;
        for (sid, room) in gone {
            let removed = self
                .store
                .presence_remove(&self.node, room, sid.as_str())
                .await;
            if let Err(error) = removed {
                error::store_failed(&error, "removing presence");
            }
        }
        drop(writing);
        let rooms: BTreeSet<&str> = gone.iter().map(|(_, room)| room.as_str()).collect();
        for room in rooms {
            self.presence_changed(room);
        }
    }

    /// Someone came, went, joined or left `room`: a `presence` broadcast follows within
    /// [`PRESENCE_DEBOUNCE`], one for all the changes meanwhile (a thousand clients
    /// connecting at once cause a few broadcasts to the lobby, not a thousand).
    fn presence_changed(self: &Arc<Self>, room: &str) {
        if !self.presence_pending.lock().insert(room.to_owned()) {
            return;
        }
        let chat = Arc::downgrade(self);
        let room = room.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(PRESENCE_DEBOUNCE).await;
            let Some(chat) = chat.upgrade() else { return };
            // Before reading: a change from now on schedules another broadcast.
            chat.presence_pending.lock().remove(&room);
            chat.broadcast_presence(std::slice::from_ref(&room)).await;
        });
    }

    /// Emits `presence` to each of `rooms`, on every node.
    async fn broadcast_presence(&self, rooms: &[String]) {
        let online = match self.store.presence(rooms).await {
            Ok(online) => online,
            Err(error) => {
                error::store_failed(&error, "reading presence");
                return;
            }
        };
        for (room, online) in &online {
            self.broadcast(room, "presence", presence::event(room, online))
                .await;
        }
    }

    /// Sends every socket of this node the current `presence` of each of its rooms
    /// (`entries`, a heartbeat's snapshot), without a broadcast: the other nodes do the
    /// same for theirs.
    async fn repeat_presence(&self, entries: &BTreeMap<String, Vec<(String, PresenceEntry)>>) {
        let Some(nsp) = self.nsp() else {
            return;
        };
        let rooms: Vec<String> = entries.keys().cloned().collect();
        let online = match self.store.presence(&rooms).await {
            Ok(online) => online,
            Err(error) => {
                error::store_failed(&error, "reading presence");
                return;
            }
        };
        for (room, online) in &online {
            let event = presence::event(room, online);
            for (sid, _) in entries.get(room).into_iter().flatten() {
                let Some(socket) = sid.parse().ok().and_then(|sid| nsp.socket(sid)) else {
                    continue;
                };
                // Not to a socket that left the room since the snapshot (its user's
                // `leave`): a room's events stop at the leave.
                let still_in = self
                    .sessions
                    .lock()
                    .get(&socket.id())
                    .is_some_and(|session| session.rooms.contains(room));
                if !still_in {
                    continue;
                }
                // A socket that went away meanwhile has nothing to be told.
                let _ = socket.emit("presence", vec![Data::from(event.clone())]);
            }
        }
    }

    /// Emits `event` to every socket of `user`, on every node.
    async fn tell_user(&self, user: &str, event: &str, payload: Value) {
        let Some(nsp) = self.nsp() else {
            return;
        };
        if let Err(error) = nsp
            .to(user_room(user))
            .emit(event, vec![Data::from(payload)])
            .await
        {
            tracing::warn!(%error, event, "an event to a user's connections");
        }
    }

    /// Emits `event` to every socket in `room`, on every node.
    async fn broadcast(&self, room: &str, event: &str, payload: Value) {
        let Some(nsp) = self.nsp() else {
            return;
        };
        if let Err(error) = nsp
            .to(sio_room(room))
            .emit(event, vec![Data::from(payload)])
            .await
        {
            tracing::warn!(%error, room, event, "broadcast");
        }
    }

    /// [`broadcast`](Self::broadcast) of an event that `step` writes first, with the
    /// value it writes in place of `hole` ([`BroadcastOperator::emit_joint`]); the step
    /// runs even when there is no namespace to broadcast in.
    ///
    /// [`BroadcastOperator::emit_joint`]: crate::socketio::BroadcastOperator::emit_joint
    async fn broadcast_joint(
        &self,
        room: &str,
        event: &str,
        payload: Value,
        hole: &str,
        step: &dyn JointStep,
    ) {
        let Some(nsp) = self.nsp() else {
            step.run(None, &[], &[]).await;
            return;
        };
        if let Err(error) = nsp
            .to(sio_room(room))
            .emit_joint(event, vec![Data::from(payload)], hole, step)
            .await
        {
            tracing::warn!(%error, room, event, "broadcast");
        }
    }
}
