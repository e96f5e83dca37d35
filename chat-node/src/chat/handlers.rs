//! The client's events, one function each. Every one parses its object argument, checks
//! it, answers its ack with `{ok:true, ...}` or `{ok:false, error}` ([`ChatError`]), and
//! checks the membership of any room it names before touching the room.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::config::{MAX_PAGE, MAX_ROOMS_PAGE};
use super::error::ChatError;
use super::store::{
    Created, Joined, JointEntry, Membership, Message, NewMessage, Post, Posted, RoomLimits,
    RoomMeta,
};
use super::{now_ms, presence, rate, secret, validate, ChatInner, LOBBY};
use super::{ChatStore, StoreError};
use crate::bus::StreamTarget;
use crate::metrics::metrics;
use crate::socketio::{AckSender, Data, JointOutcome, JointStep, SocketRef};

type Answer = Result<Map<String, Value>, ChatError>;

/// Registers every event handler on `socket`.
pub(super) fn register(chat: &Arc<ChatInner>, socket: &SocketRef) {
    on(chat, socket, "rooms", rooms);
    on(chat, socket, "create", create);
    on(chat, socket, "join", join);
    on(chat, socket, "leave", leave);
    on(chat, socket, "send", send);
    on(chat, socket, "typing", typing);
    on(chat, socket, "history", history);
    // An event the chat does not have gets an answer when one is awaited, rather than
    // leaving the client to its timeout.
    socket.on_other(
        |_socket: SocketRef, _args: Vec<Data>, ack: Option<AckSender>| async move {
            reply(ack, Err(ChatError::UnknownEvent));
        },
    );
}

/// Registers `handler` for `event`: parses the first argument as `T`, runs the handler,
/// answers the ack.
fn on<T, F, Fut>(chat: &Arc<ChatInner>, socket: &SocketRef, event: &'static str, handler: F)
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(Arc<ChatInner>, SocketRef, T) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let chat = Arc::downgrade(chat);
    socket.on(
        event,
        move |socket: SocketRef, args: Vec<Data>, ack: Option<AckSender>| {
            let chat = chat.upgrade();
            async move {
                let answer = match (chat, parse::<T>(&args)) {
                    (Some(chat), Ok(request)) => handler(chat, socket, request).await,
                    (None, _) => Err(ChatError::Unavailable),
                    (_, Err(error)) => Err(error),
                };
                count(event, &answer);
                reply(ack, answer);
            }
        },
    );
}

/// Counts the outcome of a `send` or a `join` in the node's metrics (a request that does
/// not parse included: that is a refused message too). The names are compared here, once
/// per request, so that the handlers themselves stay free of bookkeeping.
fn count(event: &'static str, answer: &Answer) {
    match (event, answer) {
        ("send", Ok(_)) => metrics().messages_accepted.inc(),
        ("send", Err(error)) => metrics().message_rejected(error),
        ("join", Ok(_)) => metrics().room_joins.inc(),
        _ => {}
    }
}

/// The first argument as `T`; a missing argument reads as `{}`.
fn parse<T: DeserializeOwned>(args: &[Data]) -> Result<T, ChatError> {
    let value = match args.first() {
        Some(data) => Value::try_from(data.clone()).map_err(|_| ChatError::InvalidRequest)?,
        None => Value::Object(Map::new()),
    };
    serde_json::from_value(value).map_err(|_| ChatError::InvalidRequest)
}

/// Answers the ack, if the client asked for one.
fn reply(ack: Option<AckSender>, answer: Answer) {
    let Some(ack) = ack else { return };
    let body = match answer {
        Ok(mut fields) => {
            fields.insert("ok".to_owned(), Value::Bool(true));
            Value::Object(fields)
        }
        Err(error) => json!({"ok": false, "error": error.to_string()}),
    };
    let _ = ack.send(vec![Data::from(body)]);
}

fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The socket's user and display name.
fn identity(chat: &ChatInner, socket: &SocketRef) -> Result<(String, String), ChatError> {
    chat.identity(socket).ok_or(ChatError::Unavailable)
}

/// `lobby`'s settings: it is not stored, it always exists.
fn lobby() -> RoomMeta {
    RoomMeta {
        private: false,
        invite: None,
        created_by: String::new(),
        created_at: 0,
        creation: String::new(),
    }
}

/// The room's settings; `lobby` always exists.
async fn room_meta(chat: &ChatInner, room: &str) -> Result<Option<RoomMeta>, ChatError> {
    if room == LOBBY {
        return Ok(Some(lobby()));
    }
    Ok(chat.store.room(room).await?)
}

/// Checks that the user is a member of `room` (everyone is a member of `lobby`), and
/// makes sure this socket is in the room's Socket.IO room (the user may have joined from
/// another tab since this socket connected).
async fn member(
    chat: &Arc<ChatInner>,
    socket: &SocketRef,
    user: &str,
    room: &str,
) -> Result<(), ChatError> {
    if room != LOBBY && !chat.store.is_member(room, user).await? {
        return Err(not_member(chat, room).await);
    }
    chat.enter_late(socket, user, room, None).await;
    Ok(())
}

/// The error for a user who is not a member of `room`: whether the room exists tells
/// which.
async fn not_member(chat: &ChatInner, room: &str) -> ChatError {
    match room_meta(chat, room).await {
        Ok(Some(_)) => ChatError::NotMember,
        Ok(None) => ChatError::NoSuchRoom,
        Err(error) => error,
    }
}

/// A page's size from a request's `limit`: `default` without one, else brought into
/// 1–`max`. Any JSON number is taken (`-1`, `1e20`, `2.5`), as JavaScript has no other
/// kind: a client asking for "everything" gets the largest page, not an error.
fn page_size(limit: Option<f64>, default: usize, max: usize) -> usize {
    match limit {
        Some(limit) if !limit.is_nan() => {
            // In range after the clamp, so the cast neither saturates nor truncates.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let size = limit.floor().clamp(1.0, max as f64) as usize;
            size
        }
        _ => default,
    }
}

#[derive(Deserialize)]
struct RoomsRequest {
    /// The last room of the previous page.
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<f64>,
}

/// `rooms {after?, limit?}` → `{rooms: [{room, private, members}], next?}`: the public
/// rooms and the user's private ones, `lobby` first, then by name, with online member
/// counts; a page of at most `limit` ([`MAX_ROOMS_PAGE`], the default), and `next` (the
/// `after` of the next page) when more follow. Rate limited: a page reads hundreds of
/// rooms and their presence from the store.
async fn rooms(chat: Arc<ChatInner>, socket: SocketRef, request: RoomsRequest) -> Answer {
    let (user, _) = identity(&chat, &socket)?;
    admit(&chat, &user, "rooms", &chat.config.rooms_rate_limit).await?;
    let limit = page_size(request.limit, MAX_ROOMS_PAGE, MAX_ROOMS_PAGE);
    // The order pages follow: lobby, then the others by name (byte order, as the store
    // keeps them). One more than the page tells whether another follows.
    let (with_lobby, after) = match request.after.as_deref() {
        None => (true, ""),
        Some(LOBBY) => (false, ""),
        Some(after) => (false, after),
    };
    let want = limit + 1;
    // The public rooms of this page, and the user's own (private ones among them) after
    // `after`: both in order, merged.
    let mut names: BTreeSet<String> = chat
        .store
        .public_rooms(after, want)
        .await?
        .into_iter()
        .collect();
    names.extend(
        chat.store
            .rooms_of(&user)
            .await?
            .into_iter()
            .filter(|r| r.as_str() > after),
    );
    names.remove(LOBBY);
    let mut rest: Vec<String> = with_lobby
        .then(|| LOBBY.to_owned())
        .into_iter()
        .chain(names)
        .take(want)
        .collect();
    let next = (rest.len() > limit)
        .then(|| rest.get(limit - 1).cloned())
        .flatten();
    rest.truncate(limit);
    let metas = chat.store.rooms(&rest).await?;
    // A private room shows up only when the user is a member: `rooms_of` checked that.
    let visible: Vec<(String, bool)> = rest
        .into_iter()
        .filter_map(|room| {
            let private = if room == LOBBY {
                false
            } else {
                metas.get(&room)?.private
            };
            Some((room, private))
        })
        .collect();
    let page: Vec<String> = visible.iter().map(|(r, _)| r.clone()).collect();
    let online = chat.store.presence(&page).await?;
    let list: Vec<Value> = visible
        .iter()
        .map(|(room, private)| {
            let members = online.get(room).map_or(0, presence::count);
            json!({"room": room, "private": private, "members": members})
        })
        .collect();
    let mut answer = fields(json!({"rooms": list}));
    if let Some(next) = next {
        answer.insert("next".to_owned(), Value::String(next));
    }
    Ok(answer)
}

#[derive(Deserialize)]
struct CreateRequest {
    room: String,
    #[serde(default)]
    private: bool,
}

/// `create {room, private}` → `{room, invite}`: the creator becomes a member, in the same
/// store step (so within `--max-memberships`). Counts against the rate limit like a
/// message. The sockets left over in the room's Socket.IO room from a room of that name
/// that Redis lost leave it in that step too ([`CreateStep`]).
async fn create(chat: Arc<ChatInner>, socket: SocketRef, request: CreateRequest) -> Answer {
    let (user, _) = identity(&chat, &socket)?;
    let room = validate::room(&request.room)?;
    if room == LOBBY {
        return Err(ChatError::RoomExists);
    }
    if validate::look(&room) == validate::look(LOBBY) {
        return Err(ChatError::LooksLike);
    }
    // Else the store's look index may miss an older node's room this one looks like.
    chat.looks_indexed().await?;
    // Rooms are cheap to create and live until empty for `--empty-room-ttl`: creating
    // counts against the rate limit.
    if !chat.store.admit(&user, &chat.config.rate_limit).await? {
        return Err(ChatError::RateLimited);
    }
    // And against its client's: the per-user limit alone is one new user away.
    if let Some(client) = socket.session().client() {
        let bucket = rate::client_bucket(client, "create");
        if !chat
            .store
            .admit(&bucket, &chat.config.create_rate_limit)
            .await?
        {
            return Err(ChatError::RateLimited);
        }
    }
    let invite = request.private.then(secret::secret);
    let meta = RoomMeta {
        private: request.private,
        invite: invite.clone(),
        created_by: user.clone(),
        created_at: now_ms(),
        creation: secret::creation(),
    };
    let step = CreateStep {
        store: chat.store.as_ref(),
        room: &room,
        meta: &meta,
        limits: RoomLimits {
            max_rooms: chat.config.max_rooms,
            max_memberships: chat.config.max_memberships,
        },
        result: Mutex::new(None),
    };
    chat.create_emptied(&room, &meta.creation, &step).await;
    // `None`: the leave's entry could not be made, nothing was written.
    let created = step.result.lock().take().ok_or(ChatError::Unavailable)?;
    match created? {
        Created::Created => {}
        Created::Exists => return Err(ChatError::RoomExists),
        Created::LooksLike => return Err(ChatError::LooksLike),
        Created::Full => return Err(ChatError::TooManyRooms),
        Created::TooManyMemberships => return Err(ChatError::TooManyMemberships),
    }
    chat.enter_late(&socket, &user, &room, Some(&meta.creation))
        .await;
    chat.enter_everywhere(&user, &room, &meta.creation).await;
    let mut answer = fields(json!({"room": room}));
    if let Some(invite) = invite {
        answer.insert("invite".to_owned(), Value::String(invite));
    }
    Ok(answer)
}

/// The store's creation of a room, run by the leave of the sockets left over from an
/// older room of that name ([`JointStep`]): with a store that can, the leave's entry is
/// appended to the cluster's log in the same atomic step as the room, so that nothing of
/// the new room (a message, a `presence`, a joiner's entry) can come before it in the log,
/// and a `create` that finds the name taken appends nothing (see the chat module's
/// documentation).
struct CreateStep<'a> {
    store: &'a dyn ChatStore,
    room: &'a str,
    meta: &'a RoomMeta,
    limits: RoomLimits,
    /// What the store did, for the ack (`None`: it did not run).
    result: Mutex<Option<Result<Created, StoreError>>>,
}

#[async_trait]
impl JointStep for CreateStep<'_> {
    async fn run(&self, target: Option<&StreamTarget>, head: &[u8], tail: &[u8]) -> JointOutcome {
        let entry = target.map(|target| JointEntry { target, head, tail });
        let result = self
            .store
            .create_room_and_append(self.room, self.meta, self.limits, entry)
            .await;
        let outcome = match &result {
            Ok((Created::Created, Some(id))) => JointOutcome::Appended {
                value: String::new(),
                id: id.clone(),
            },
            Ok((Created::Created, None)) => JointOutcome::Written(String::new()),
            // The script may still run, the room and the leave's entry with it.
            Err(StoreError::NoReply(_)) => JointOutcome::Unknown,
            Ok(_) | Err(_) => JointOutcome::Declined,
        };
        *self.result.lock() = Some(result.map(|(created, _)| created));
        outcome
    }
}

#[derive(Deserialize)]
struct JoinRequest {
    room: String,
    #[serde(default)]
    invite: Option<String>,
}

/// `join {room, invite?}` → `{room, history, members}`; a private room needs its invite
/// unless the user is already a member. A new membership counts against
/// `--max-memberships`; re-entering a room the user is in never fails on it.
async fn join(chat: Arc<ChatInner>, socket: SocketRef, request: JoinRequest) -> Answer {
    let (user, name) = identity(&chat, &socket)?;
    let room = validate::room(&request.room)?;
    admit_join(&chat, &user).await?;
    let meta = room_meta(&chat, &room)
        .await?
        .ok_or(ChatError::NoSuchRoom)?;
    let already = room == LOBBY || chat.store.is_member(&room, &user).await?;
    if meta.private && !already {
        let valid = match (&request.invite, &meta.invite) {
            (Some(given), Some(invite)) => secret::same(given, invite),
            _ => false,
        };
        if !valid {
            return Err(ChatError::InvalidInvite);
        }
    }
    // `already` may be stale (another tab joined or left meanwhile, the room was deleted
    // and created again): the store's step decides, at the limit too, and checks that the
    // room is still the one read above.
    let added = room != LOBBY
        && match chat
            .store
            .add_member(&room, &user, &meta.creation, chat.config.max_memberships)
            .await?
        {
            Joined::Added => true,
            Joined::Already => false,
            Joined::TooManyMemberships => return Err(ChatError::TooManyMemberships),
            // Deleted since `meta` was read (empty for `--empty-room-ttl`), perhaps
            // created again: its invite was not checked against the new one.
            Joined::NoSuchRoom => return Err(ChatError::NoSuchRoom),
        };
    chat.enter_late(&socket, &user, &room, Some(&meta.creation))
        .await;
    chat.enter_everywhere(&user, &room, &meta.creation).await;
    let history = chat
        .store
        .history(&room, None, chat.config.history_on_join)
        .await?;
    let online = chat.store.presence(std::slice::from_ref(&room)).await?;
    let members = online.get(&room).map(presence::names).unwrap_or_default();
    let count = online.get(&room).map_or(0, presence::count);
    if added {
        let notice = json!({"room": room, "text": format!("{name} joined"), "ts": now_ms()});
        chat.broadcast(&room, "system", notice).await;
    }
    chat.presence_changed(&room);
    Ok(fields(
        json!({"room": room, "history": history, "members": members, "count": count}),
    ))
}

/// Counts a `join` or `leave` against the user's limit: each may tell a whole room
/// (`system` notice, `presence`), so a loop of them would flood it.
async fn admit_join(chat: &ChatInner, user: &str) -> Result<(), ChatError> {
    admit(chat, user, "join", &chat.config.join_rate_limit).await
}

/// Counts a request of kind `kind` against the user's limit for it; `rate limited` beyond.
async fn admit(
    chat: &ChatInner,
    user: &str,
    kind: &str,
    limit: &rate::RateLimit,
) -> Result<(), ChatError> {
    if chat.store.admit(&rate::bucket(user, kind), limit).await? {
        Ok(())
    } else {
        Err(ChatError::RateLimited)
    }
}

#[derive(Deserialize)]
struct RoomRequest {
    room: String,
}

/// `leave {room}`: ends the membership, and takes every socket of the user, on every
/// node, out of the room (see the chat module's documentation for why none gets a message
/// sent after the ack). The store first: if it fails, nothing has changed and the ack
/// says `unavailable`. If the other nodes cannot be told, the membership has ended all
/// the same and the ack says `leave incomplete`; a retry tells them (a `leave` of a room
/// the user is not in still takes the user's sockets out).
async fn leave(chat: Arc<ChatInner>, socket: SocketRef, request: RoomRequest) -> Answer {
    let (user, name) = identity(&chat, &socket)?;
    let room = validate::room(&request.room)?;
    if room == LOBBY {
        return Err(ChatError::CannotLeaveLobby);
    }
    admit_join(&chat, &user).await?;
    // Which creation's mark the sockets drop with the room.
    let creation = chat
        .store
        .room(&room)
        .await?
        .map(|meta| meta.creation)
        .unwrap_or_default();
    let removed = chat.store.remove_member(&room, &user).await?;
    // Each node whose sockets leave tells the room's presence (only a real change is
    // announced: a stranger's `leave` sends nothing to the room).
    let everywhere = chat.exit_everywhere(&user, &room, &creation).await;
    if removed {
        let notice = json!({"room": room, "text": format!("{name} left"), "ts": now_ms()});
        chat.broadcast(&room, "system", notice).await;
        // Every connection of the user learns it is out of the room, after the leave in
        // the log: another tab would otherwise keep showing the room, gone quiet, its
        // sends refused. Not for a stranger's `leave`: nothing of a room it is not in.
        chat.tell_user(&user, "left", json!({ "room": room })).await;
    }
    everywhere?;
    Ok(Map::new())
}

#[derive(Deserialize)]
struct SendRequest {
    room: String,
    text: String,
}

/// `send {room, text}` → `{id}`: members only, rate limited; everyone in the room gets
/// the `message`, the sender included. The checks, the append to the history and the
/// broadcast's append to the bus are one store step when the store and the bus are on
/// the same Redis (one round trip, [`ChatStore::post_and_append`]), else two. A post
/// that got no reply answers `timeout`: Redis may still run it (see [`SendStep`]).
///
/// [`ChatStore::post_and_append`]: super::ChatStore::post_and_append
async fn send(chat: Arc<ChatInner>, socket: SocketRef, request: SendRequest) -> Answer {
    let (user, name) = identity(&chat, &socket)?;
    let room = validate::room(&request.room)?;
    let text = validate::text(&request.text, chat.config.max_text)?;
    let membership = if room == LOBBY {
        Membership::Open
    } else {
        Membership::Required
    };
    let stored = NewMessage {
        from: name,
        user,
        text: text.to_owned(),
        ts: now_ms(),
    };
    // The `message` is encoded before the post gives it its id: the id's place holds a
    // random token, which no text of the message can, until the post fills it in.
    let hole = format!("{:032x}", rand::random::<u128>());
    let template = Message::new(hole.clone(), &room, stored.clone());
    let payload = serde_json::to_value(&template).unwrap_or_default();
    let step = SendStep {
        chat: &chat,
        socket: &socket,
        post: Post {
            room: &room,
            membership,
            message: &stored,
            limit: &chat.config.rate_limit,
            cap: chat.config.history_cap,
        },
        result: Mutex::new(None),
    };
    chat.broadcast_joint(&room, "message", payload, &hole, &step)
        .await;
    let Some(posted) = step.result.lock().take() else {
        // The broadcast refused the packet before the post ran (it cannot, with the
        // chat's own event and token): nothing was written.
        return Err(ChatError::Unavailable);
    };
    match posted? {
        Posted::NotMember => Err(not_member(&chat, &room).await),
        Posted::RateLimited => Err(ChatError::RateLimited),
        Posted::Appended(id) => Ok(fields(json!({"id": id}))),
    }
}

/// The post of a `send`, run by the broadcast of its `message` ([`JointStep`]): the
/// broadcast is delivered to this node's sockets after it, as after a post before.
struct SendStep<'a> {
    chat: &'a Arc<ChatInner>,
    socket: &'a SocketRef,
    post: Post<'a>,
    /// What the post did, for the ack (`None`: it did not run).
    result: Mutex<Option<Result<Posted, StoreError>>>,
}

#[async_trait]
impl JointStep for SendStep<'_> {
    async fn run(&self, target: Option<&StreamTarget>, head: &[u8], tail: &[u8]) -> JointOutcome {
        let entry = target.map(|target| JointEntry { target, head, tail });
        let result = self.chat.store.post_and_append(self.post, entry).await;
        let outcome = match &result {
            Ok((Posted::Appended(id), Some(entry_id))) => JointOutcome::Appended {
                value: id.clone(),
                id: entry_id.clone(),
            },
            Ok((Posted::Appended(id), None)) => JointOutcome::Written(id.clone()),
            // The script may still run, the broadcast's append with it: the adapter has
            // its reader deliver the entry here too if it comes. Without a target only
            // the history may get it; nobody can broadcast a message whose id is unknown.
            Err(StoreError::NoReply(_)) if entry.is_some() => JointOutcome::Unknown,
            Ok((Posted::NotMember | Posted::RateLimited, _)) | Err(_) => JointOutcome::Declined,
        };
        // A member whose socket is not in the room yet (it joined from another tab) has
        // it enter now: its own message, delivered once this returns, reaches it.
        if let Ok((Posted::Appended(_) | Posted::RateLimited, _)) = &result {
            let user = &self.post.message.user;
            self.chat
                .enter_late(self.socket, user, self.post.room, None)
                .await;
        }
        *self.result.lock() = Some(result.map(|(posted, _)| posted));
        outcome
    }
}

#[derive(Deserialize)]
struct TypingRequest {
    room: String,
    typing: bool,
}

/// `typing {room, typing}`: members only; the others in the room get `typing`. Over the
/// user's typing limit the event is dropped, answered `ok` all the same: it only says
/// what is already on its way, and a client has nothing to retry.
async fn typing(chat: Arc<ChatInner>, socket: SocketRef, request: TypingRequest) -> Answer {
    let (user, name) = identity(&chat, &socket)?;
    let room = validate::room(&request.room)?;
    member(&chat, &socket, &user, &room).await?;
    let bucket = rate::bucket(&user, "typing");
    if !chat
        .store
        .admit(&bucket, &chat.config.typing_rate_limit)
        .await?
    {
        return Ok(Map::new());
    }
    let event = json!({"room": room, "name": name, "typing": request.typing});
    if let Err(error) = socket
        .to(super::sio_room(&room))
        .emit("typing", vec![Data::from(event)])
        .await
    {
        tracing::warn!(%error, "broadcasting typing");
    }
    Ok(Map::new())
}

#[derive(Deserialize)]
struct HistoryRequest {
    room: String,
    #[serde(default)]
    before: Option<String>,
    #[serde(default)]
    limit: Option<f64>,
}

/// `history {room, before?, limit?}` → `{messages}`: members only; up to `limit` (1–100,
/// default 50) messages older than `before`, oldest first. Rate limited: a page may be
/// a megabyte, for a request of a few dozen bytes.
async fn history(chat: Arc<ChatInner>, socket: SocketRef, request: HistoryRequest) -> Answer {
    let (user, _) = identity(&chat, &socket)?;
    let room = validate::room(&request.room)?;
    let before = request
        .before
        .as_deref()
        .map(validate::message_id)
        .transpose()?;
    let limit = page_size(request.limit, 50, MAX_PAGE);
    admit(&chat, &user, "history", &chat.config.history_rate_limit).await?;
    member(&chat, &socket, &user, &room).await?;
    let messages = chat.store.history(&room, before, limit).await?;
    Ok(fields(json!({"messages": messages})))
}

#[cfg(test)]
mod tests {
    use super::page_size;

    #[test]
    fn a_page_size_is_brought_into_range() {
        assert_eq!(page_size(None, 50, 100), 50);
        assert_eq!(page_size(Some(20.0), 50, 100), 20);
        assert_eq!(page_size(Some(2.9), 50, 100), 2);
        for low in [0.0, -1.0, -1e300, 0.5] {
            assert_eq!(page_size(Some(low), 50, 100), 1, "{low}");
        }
        for high in [101.0, 1e20, f64::INFINITY] {
            assert_eq!(page_size(Some(high), 50, 100), 100, "{high}");
        }
    }
}
