//! The embedded store: the chat's state in this process's memory, for a node without
//! Redis (or several in-process nodes sharing one `MemoryStore`, which then behave like a
//! cluster). Same behaviour as the Redis store, except that nothing outlives the process
//! and history is trimmed to exactly `cap`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{
    ChatStore, Created, Joined, Membership, Message, NewMessage, Online, Post, Posted,
    PresenceEntry, RoomLimits, RoomMeta, StoreError,
};
use crate::chat::now_ms;
use crate::chat::rate::RateLimit;
use crate::chat::validate;

/// The state; cheap to clone (clones share it).
#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

/// The rate limit's entries are not swept below this many.
const RATE_SWEEP_MIN: usize = 1024;

/// A message id: milliseconds, sequence number.
type Id = (u64, u64);

/// One node's sockets online in one room, until `expires`.
struct NodePresence {
    sockets: HashMap<String, PresenceEntry>,
    expires: Instant,
}

/// A token's user, and when the token expires unless used again.
struct TokenUse {
    user: String,
    expires: Instant,
}

#[derive(Default)]
struct State {
    tokens: HashMap<String, TokenUse>,
    rooms: BTreeMap<String, RoomMeta>,
    /// Each room's look ([`validate::look`]), to the room.
    looks: HashMap<String, String>,
    members: HashMap<String, BTreeSet<String>>,
    /// The rooms without members, since when.
    empty_since: HashMap<String, Instant>,
    rooms_of: HashMap<String, BTreeSet<String>>,
    history: HashMap<String, VecDeque<(Id, NewMessage)>>,
    last_id: HashMap<String, Id>,
    rate: HashMap<String, u64>,
    /// `rate`'s size after its last sweep ([`State::admit`]).
    rate_swept: usize,
    /// Each node's heartbeat mark ([`ChatStore::swap_beat_mark`]).
    beat_marks: HashMap<String, String>,
    /// By room, then by node.
    presence: HashMap<String, HashMap<String, NodePresence>>,
    clock: Option<Instant>,
}

impl State {
    /// Microseconds on the store's monotonic clock (Tokio's, so tests can pause it).
    fn now_us(&mut self) -> u64 {
        let start = *self.clock.get_or_insert_with(Instant::now);
        u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn is_member(&self, room: &str, user: &str) -> bool {
        self.members.get(room).is_some_and(|m| m.contains(user))
    }

    /// Whether `user` is a member of `max` rooms or more.
    fn memberships_full(&self, user: &str, max: usize) -> bool {
        self.rooms_of.get(user).map_or(0, BTreeSet::len) >= max
    }

    /// Ends every membership of `user`.
    fn forget_memberships(&mut self, user: &str) {
        for room in self.rooms_of.remove(user).unwrap_or_default() {
            self.remove_member(&room, user);
        }
    }

    /// Ends the membership of `user` in `room` (both ways); `false` when it was not a
    /// member. The room is empty from now if that was its last member.
    fn remove_member(&mut self, room: &str, user: &str) -> bool {
        if let Some(rooms) = self.rooms_of.get_mut(user) {
            rooms.remove(room);
        }
        let Some(members) = self.members.get_mut(room) else {
            return false;
        };
        let removed = members.remove(user);
        if members.is_empty() {
            self.members.remove(room);
            if self.rooms.contains_key(room) {
                self.empty_since
                    .entry(room.to_owned())
                    .or_insert_with(Instant::now);
            }
        }
        removed
    }

    /// Records the membership both ways.
    fn add_member(&mut self, room: &str, user: &str) {
        self.empty_since.remove(room);
        self.members
            .entry(room.to_owned())
            .or_default()
            .insert(user.to_owned());
        self.rooms_of
            .entry(user.to_owned())
            .or_default()
            .insert(room.to_owned());
    }

    /// One GCRA step for `user`; `false` when it is over the limit.
    fn admit(&mut self, user: &str, limit: &RateLimit) -> bool {
        let now = self.now_us();
        let tat = self.rate.get(user).copied();
        match limit.admit(tat, now) {
            Some(next) => {
                self.rate.insert(user.to_owned(), next);
                self.sweep_rate(now);
                true
            }
            None => false,
        }
    }

    /// Drops the users whose limit has refilled (an entry at or before `now` admits as no
    /// entry does), once the map has doubled since the last sweep: every user who ever
    /// sent would otherwise keep one for the node's life, as Redis's rate keys expire.
    fn sweep_rate(&mut self, now: u64) {
        if self.rate.len() < (2 * self.rate_swept).max(RATE_SWEEP_MIN) {
            return;
        }
        self.rate.retain(|_, tat| *tat > now);
        self.rate_swept = self.rate.len();
    }

    /// Appends to the room's history, trimmed to `cap`; the new id.
    fn append(&mut self, room: &str, message: &NewMessage, cap: usize) -> String {
        // Like Redis: the time in ms, and a sequence number within one ms.
        let now = now_ms();
        let id = match self.last_id.get(room) {
            Some(&(ms, seq)) if ms >= now => (ms, seq + 1),
            _ => (now, 0),
        };
        self.last_id.insert(room.to_owned(), id);
        let history = self.history.entry(room.to_owned()).or_default();
        history.push_back((id, message.clone()));
        while history.len() > cap.max(1) {
            history.pop_front();
        }
        format!("{}-{}", id.0, id.1)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ChatStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn user_for_token(
        &self,
        token: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        // An expired token names nobody, as its Redis key would be gone; the user's
        // memberships end at the next `forget_expired_users`.
        Ok(state
            .tokens
            .get_mut(token)
            .filter(|t| t.expires > now)
            .map(|t| {
                t.expires = now + ttl;
                t.user.clone()
            }))
    }

    async fn touch_users(
        &self,
        users: &[(String, String)],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let expires = Instant::now() + ttl;
        let mut state = self.state.lock();
        for (user, token) in users {
            state.tokens.insert(
                token.clone(),
                TokenUse {
                    user: user.clone(),
                    expires,
                },
            );
        }
        Ok(())
    }

    async fn forget_expired_users(&self, _ttl: Duration) -> Result<u64, StoreError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let expired: Vec<String> = state
            .tokens
            .iter()
            .filter(|(_, t)| t.expires <= now)
            .map(|(token, _)| token.clone())
            .collect();
        for token in &expired {
            if let Some(gone) = state.tokens.remove(token) {
                state.forget_memberships(&gone.user);
            }
        }
        Ok(u64::try_from(expired.len()).unwrap_or(u64::MAX))
    }

    async fn forget_empty_rooms(&self, ttl: Duration) -> Result<u64, StoreError> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let due: Vec<String> = state
            .empty_since
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= ttl)
            .map(|(room, _)| room.clone())
            .collect();
        for room in &due {
            state.empty_since.remove(room);
            state.rooms.remove(room);
            state.members.remove(room);
            state.history.remove(room);
            state.last_id.remove(room);
            let look = validate::look(room);
            if state.looks.get(&look) == Some(room) {
                state.looks.remove(&look);
            }
        }
        Ok(u64::try_from(due.len()).unwrap_or(u64::MAX))
    }

    async fn create_room(
        &self,
        room: &str,
        meta: &RoomMeta,
        limits: RoomLimits,
    ) -> Result<Created, StoreError> {
        let mut state = self.state.lock();
        if state.rooms.contains_key(room) {
            return Ok(Created::Exists);
        }
        let look = validate::look(room);
        if state.looks.contains_key(&look) {
            return Ok(Created::LooksLike);
        }
        if state.memberships_full(&meta.created_by, limits.max_memberships) {
            return Ok(Created::TooManyMemberships);
        }
        if state.rooms.len() >= limits.max_rooms {
            return Ok(Created::Full);
        }
        state.rooms.insert(room.to_owned(), meta.clone());
        state.looks.insert(look, room.to_owned());
        state.add_member(room, &meta.created_by);
        Ok(Created::Created)
    }

    async fn room(&self, room: &str) -> Result<Option<RoomMeta>, StoreError> {
        Ok(self.state.lock().rooms.get(room).cloned())
    }

    async fn rooms(&self, rooms: &[String]) -> Result<BTreeMap<String, RoomMeta>, StoreError> {
        let state = self.state.lock();
        Ok(rooms
            .iter()
            .filter_map(|r| state.rooms.get(r).map(|m| (r.clone(), m.clone())))
            .collect())
    }

    async fn public_rooms(&self, after: &str, count: usize) -> Result<Vec<String>, StoreError> {
        use std::ops::Bound;
        let state = self.state.lock();
        Ok(state
            .rooms
            .range::<str, _>((Bound::Excluded(after), Bound::Unbounded))
            .filter(|(_, meta)| !meta.private)
            .map(|(room, _)| room.clone())
            .take(count)
            .collect())
    }

    async fn add_member(
        &self,
        room: &str,
        user: &str,
        creation: &str,
        max_memberships: usize,
    ) -> Result<Joined, StoreError> {
        let mut state = self.state.lock();
        if state.rooms.get(room).is_none_or(|m| m.creation != creation) {
            return Ok(Joined::NoSuchRoom);
        }
        if state.is_member(room, user) {
            return Ok(Joined::Already);
        }
        if state.memberships_full(user, max_memberships) {
            return Ok(Joined::TooManyMemberships);
        }
        state.add_member(room, user);
        Ok(Joined::Added)
    }

    async fn remove_member(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        Ok(self.state.lock().remove_member(room, user))
    }

    async fn is_member(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        Ok(self.state.lock().is_member(room, user))
    }

    async fn rooms_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .state
            .lock()
            .rooms_of
            .get(user)
            .map(|rooms| rooms.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn append(
        &self,
        room: &str,
        message: &NewMessage,
        cap: usize,
    ) -> Result<String, StoreError> {
        Ok(self.state.lock().append(room, message, cap))
    }

    async fn history(
        &self,
        room: &str,
        before: Option<(u64, u64)>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let state = self.state.lock();
        let Some(history) = state.history.get(room) else {
            return Ok(Vec::new());
        };
        let mut page: Vec<Message> = history
            .iter()
            .rev()
            .filter(|(id, _)| before.is_none_or(|b| *id < b))
            .take(limit)
            .map(|((ms, seq), m)| Message::new(format!("{ms}-{seq}"), room, m.clone()))
            .collect();
        page.reverse();
        Ok(page)
    }

    async fn admit(&self, bucket: &str, limit: &RateLimit) -> Result<bool, StoreError> {
        Ok(self.state.lock().admit(bucket, limit))
    }

    async fn post(&self, post: Post<'_>) -> Result<Posted, StoreError> {
        let user = &post.message.user;
        let mut state = self.state.lock();
        if post.membership == Membership::Required && !state.is_member(post.room, user) {
            return Ok(Posted::NotMember);
        }
        if !state.admit(user, post.limit) {
            return Ok(Posted::RateLimited);
        }
        Ok(Posted::Appended(state.append(
            post.room,
            post.message,
            post.cap,
        )))
    }

    async fn presence_add(
        &self,
        node: &str,
        room: &str,
        sid: &str,
        entry: &PresenceEntry,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut state = self.state.lock();
        let expires = Instant::now() + ttl;
        let nodes = state.presence.entry(room.to_owned()).or_default();
        let here = nodes
            .entry(node.to_owned())
            .or_insert_with(|| NodePresence {
                sockets: HashMap::new(),
                expires,
            });
        if here.expires < Instant::now() {
            here.sockets.clear();
        }
        here.expires = expires;
        here.sockets.insert(sid.to_owned(), entry.clone());
        Ok(())
    }

    async fn presence_remove(&self, node: &str, room: &str, sid: &str) -> Result<(), StoreError> {
        let mut state = self.state.lock();
        if let Some(here) = state
            .presence
            .get_mut(room)
            .and_then(|nodes| nodes.get_mut(node))
        {
            here.sockets.remove(sid);
        }
        Ok(())
    }

    async fn presence_refresh(
        &self,
        node: &str,
        entries: &BTreeMap<String, Vec<(String, PresenceEntry)>>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut state = self.state.lock();
        let now = Instant::now();
        let had = state
            .presence
            .values()
            .filter_map(|nodes| nodes.get(node))
            .any(|here| here.expires > now);
        let expires = now + ttl;
        for (room, nodes) in &mut state.presence {
            if entries.get(room).is_none_or(Vec::is_empty) {
                nodes.remove(node);
            }
        }
        state.presence.retain(|_, nodes| !nodes.is_empty());
        for (room, sockets) in entries {
            if sockets.is_empty() {
                continue;
            }
            state.presence.entry(room.clone()).or_default().insert(
                node.to_owned(),
                NodePresence {
                    sockets: sockets.iter().cloned().collect(),
                    expires,
                },
            );
        }
        Ok(had)
    }

    async fn swap_beat_mark(
        &self,
        node: &str,
        mark: &str,
        _ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        // In process, the store lives as long as its nodes: no mark is ever lost.
        Ok(self
            .state
            .lock()
            .beat_marks
            .insert(node.to_owned(), mark.to_owned()))
    }

    async fn presence_forget(&self, node: &str) -> Result<(), StoreError> {
        let mut state = self.state.lock();
        for nodes in state.presence.values_mut() {
            nodes.remove(node);
        }
        state.presence.retain(|_, nodes| !nodes.is_empty());
        Ok(())
    }

    async fn presence(&self, rooms: &[String]) -> Result<BTreeMap<String, Online>, StoreError> {
        let mut state = self.state.lock();
        let now = Instant::now();
        Ok(rooms
            .iter()
            .map(|room| {
                let mut online = Vec::new();
                if let Some(nodes) = state.presence.get_mut(room) {
                    nodes.retain(|_, here| here.expires > now);
                    for here in nodes.values() {
                        online.extend(here.sockets.values().cloned());
                    }
                }
                (room.clone(), online)
            })
            .collect())
    }

    async fn presence_nodes(&self) -> Result<BTreeSet<String>, StoreError> {
        let state = self.state.lock();
        let now = Instant::now();
        Ok(state
            .presence
            .values()
            .flatten()
            .filter(|(_, here)| here.expires > now)
            .map(|(node, _)| node.clone())
            .collect())
    }
}

/// What both stores must do alike is checked in `tests/chat_store.rs`; here, what only the
/// memory store does (exact trimming) and what needs a paused clock.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn message(text: &str) -> NewMessage {
        NewMessage {
            from: "alice".into(),
            user: "u1".into(),
            text: text.into(),
            ts: 1,
        }
    }

    fn entry(user: &str, name: &str) -> PresenceEntry {
        PresenceEntry {
            user: user.into(),
            name: name.into(),
        }
    }

    #[tokio::test]
    async fn history_is_ordered_capped_and_pages_backwards() {
        let store = MemoryStore::new();
        let mut ids = Vec::new();
        for i in 0..10 {
            ids.push(
                store
                    .append("r", &message(&i.to_string()), 6)
                    .await
                    .unwrap(),
            );
        }
        let parsed: Vec<(u64, u64)> = ids
            .iter()
            .map(|id| crate::chat::validate::message_id(id).unwrap())
            .collect();
        assert!(parsed.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let all = store.history("r", None, 100).await.unwrap();
        let texts: Vec<&str> = all.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["4", "5", "6", "7", "8", "9"], "capped at 6");
        let last = store.history("r", None, 2).await.unwrap();
        assert_eq!(last[0].id, ids[8]);
        assert_eq!(last[1].id, ids[9]);
        assert_eq!(last[1].room, "r");
        let older = store.history("r", Some(parsed[8]), 3).await.unwrap();
        let texts: Vec<&str> = older.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["5", "6", "7"]);
        let oldest = store.history("r", Some(parsed[5]), 3).await.unwrap();
        assert_eq!(oldest.len(), 1, "only 4 is older than 5");
        assert!(store.history("other", None, 5).await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_is_per_user_and_refills() {
        let store = MemoryStore::new();
        let limit: RateLimit = "2/2s".parse().unwrap();
        assert!(store.admit("u1", &limit).await.unwrap());
        assert!(store.admit("u1", &limit).await.unwrap());
        assert!(!store.admit("u1", &limit).await.unwrap());
        assert!(store.admit("u2", &limit).await.unwrap(), "another user");
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert!(store.admit("u1", &limit).await.unwrap());
        assert!(!store.admit("u1", &limit).await.unwrap());
    }

    /// Users whose limit has refilled leave the table: it holds the recent senders, not
    /// every user the node has seen.
    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_forgets_users_whose_limit_refilled() {
        let store = MemoryStore::new();
        let limit: RateLimit = "2/2s".parse().unwrap();
        for round in 0..5 {
            for u in 0..1000 {
                let user = format!("u{round}-{u}");
                assert!(store.admit(&user, &limit).await.unwrap());
            }
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        let kept = store.state.lock().rate.len();
        assert!(kept <= 2 * RATE_SWEEP_MIN, "{kept} entries kept");
        // A user still limited stays limited across a sweep.
        assert!(store.admit("busy", &limit).await.unwrap());
        assert!(store.admit("busy", &limit).await.unwrap());
        for u in 0..3000 {
            assert!(store.admit(&format!("x{u}"), &limit).await.unwrap());
        }
        assert!(!store.admit("busy", &limit).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn presence_spans_nodes_and_a_silent_node_expires() {
        let store = MemoryStore::new();
        let ttl = Duration::from_secs(3);
        let rooms = ["r".to_owned()];
        store
            .presence_add("n1", "r", "s1", &entry("u1", "alice"), ttl)
            .await
            .unwrap();
        store
            .presence_add("n2", "r", "s2", &entry("u2", "bob"), ttl)
            .await
            .unwrap();
        store
            .presence_add("n2", "r", "s3", &entry("u1", "alice"), ttl)
            .await
            .unwrap();
        assert_eq!(store.presence(&rooms).await.unwrap()["r"].len(), 3);
        store.presence_remove("n2", "r", "s3").await.unwrap();
        assert_eq!(store.presence(&rooms).await.unwrap()["r"].len(), 2);

        // n1 keeps beating, n2 falls silent.
        let mut n1 = BTreeMap::new();
        n1.insert(
            "r".to_owned(),
            vec![("s1".to_owned(), entry("u1", "alice"))],
        );
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(2)).await;
            store.presence_refresh("n1", &n1, ttl).await.unwrap();
        }
        let online = &store.presence(&rooms).await.unwrap()["r"];
        assert_eq!(online, &vec![entry("u1", "alice")]);
    }
}
