//! Presence: which users are online in which room, across nodes.
//!
//! Each node records its own sockets in the store, per room (`presence:<room>:<node>` in
//! Redis), when a socket joins a room and removes them when it leaves or disconnects. A
//! heartbeat replaces all of this node's entries with its sessions every third of the TTL
//! and pushes their expiry forward, so a node killed without cleaning up stops counting
//! after at most the TTL (30 s by default), entries lost to a Redis restart come back at
//! the next beat, and an entry that outlived its socket (its removal failed or raced a
//! write) is gone at the next beat. A node starting removes what an earlier process with
//! its id left.
//!
//! A beat that finds this node's own entries gone has found Redis without its data: the
//! memberships may be gone too, so every local socket leaves the rooms its user is no
//! longer a member of (`recheck_memberships`).
//!
//! An expiry tells no one: so each beat also lists the nodes that have entries, and when
//! another node dropped out (or came back after Redis lost its data), this node sends its
//! own sockets the current `presence` of their rooms.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use serde_json::{json, Value};

use super::store::{Online, PresenceEntry};
use super::ChatInner;

/// The most names a `presence` event or a `join` answer lists: a room of thousands would
/// otherwise send every member a list of thousands on every change (its `count` says how
/// many there are).
pub const MAX_LISTED: usize = 100;

/// The display names of `online`, sorted and de-duplicated, the first [`MAX_LISTED`] (the
/// `presence` event's `members`).
pub fn names(online: &Online) -> Vec<String> {
    let names: BTreeSet<&str> = online.iter().map(|e| e.name.as_str()).collect();
    names
        .into_iter()
        .take(MAX_LISTED)
        .map(str::to_owned)
        .collect()
}

/// How many distinct users `online` holds (a user with two tabs counts once).
pub fn count(online: &Online) -> usize {
    online
        .iter()
        .map(|e| e.user.as_str())
        .collect::<BTreeSet<_>>()
        .len()
}

/// The `presence` event of `room`.
pub(super) fn event(room: &str, online: &Online) -> Value {
    json!({"room": room, "members": names(online), "count": count(online)})
}

/// This node's entries, by room: what the heartbeat writes.
pub(super) fn snapshot(chat: &ChatInner) -> BTreeMap<String, Vec<(String, PresenceEntry)>> {
    let mut rooms: BTreeMap<String, Vec<(String, PresenceEntry)>> = BTreeMap::new();
    for (sid, session) in chat.sessions.lock().iter() {
        for room in &session.rooms {
            rooms.entry(room.clone()).or_default().push((
                sid.to_string(),
                PresenceEntry {
                    user: session.user.clone(),
                    name: session.name.clone(),
                },
            ));
        }
    }
    rooms
}

/// Runs the heartbeat until the chat is dropped.
pub(super) async fn heartbeat(chat: Weak<ChatInner>) {
    let Some(period) = chat.upgrade().map(|c| c.config.heartbeat()) else {
        return;
    };
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Until it succeeds once: what an earlier process with this node id left is removed
    // (its sockets are gone; a refresh would otherwise never touch the hashes of rooms this
    // process has no socket in, and their TTL would keep counting them until it ran out).
    let mut forgotten = false;
    // The other nodes that had presence entries at the last beat, and whether this node
    // wrote some then.
    let mut others: Option<BTreeSet<String>> = None;
    let mut wrote = false;
    loop {
        ticks.tick().await;
        let Some(chat) = chat.upgrade() else {
            return;
        };
        let writing = chat.presence_writes.write().await;
        // Under the lock: an add from now on counts for the next beat.
        let added = chat.presence_added.swap(false, Ordering::Relaxed);
        if !forgotten {
            match chat.store.presence_forget(&chat.node).await {
                Ok(()) => forgotten = true,
                Err(error) => tracing::warn!(%error, "forgetting this node's old presence"),
            }
        }
        let entries = snapshot(&chat);
        let refreshed = chat
            .store
            .presence_refresh(&chat.node, &entries, chat.config.presence_ttl)
            .await;
        drop(writing);
        match refreshed {
            // Its own entries gone since the last beat: Redis lost its data (or this beat
            // is late). The other nodes write theirs again within a beat: until they
            // have, their absence says nothing about their sockets.
            Ok(had) if (wrote || added) && !had => {
                tracing::debug!("this node's presence was lost; the others' is awaited");
                // The memberships may be lost with it, while the sockets are still in
                // the rooms' Socket.IO rooms: they leave the ones the store has no more.
                let recheck = Arc::clone(&chat);
                tokio::spawn(async move { recheck.recheck_memberships().await });
                others = None;
                wrote = !entries.is_empty();
                continue;
            }
            Ok(_) => wrote = !entries.is_empty(),
            Err(error) => {
                tracing::warn!(%error, "presence heartbeat");
                continue;
            }
        }
        let now = match chat.store.presence_nodes().await {
            Ok(mut nodes) => {
                nodes.remove(&chat.node);
                nodes
            }
            Err(error) => {
                tracing::warn!(%error, "listing the nodes with presence");
                continue;
            }
        };
        // A node whose entries expired (it died) or came back without its sockets saying
        // so (Redis lost them, the node's heartbeat wrote them again) changed who is
        // online in its rooms, and no `presence` told them: each node tells its own
        // sockets, so that no list keeps showing users who are gone, or misses some.
        if others.as_ref().is_some_and(|before| *before != now) {
            tracing::debug!(?now, "the nodes with presence changed");
            chat.repeat_presence(&entries).await;
        }
        others = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user: &str, name: &str) -> PresenceEntry {
        PresenceEntry {
            user: user.into(),
            name: name.into(),
        }
    }

    #[test]
    fn names_are_sorted_and_unique_counts_are_per_user() {
        let online = vec![
            entry("u2", "bob"),
            entry("u1", "alice"),
            entry("u1", "alice"),
            entry("u3", "alice"),
        ];
        assert_eq!(names(&online), ["alice", "bob"]);
        assert_eq!(count(&online), 3);
        assert!(names(&Vec::new()).is_empty());
        let crowd: Online = (0..MAX_LISTED + 5)
            .map(|i| PresenceEntry {
                user: format!("u{i}"),
                name: format!("n{i:04}"),
            })
            .collect();
        assert_eq!(names(&crowd).len(), MAX_LISTED);
        assert_eq!(count(&crowd), MAX_LISTED + 5);
    }
}
