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
//! Each beat also swaps the node's beat mark (a key only the heartbeat writes, unique to
//! the process and the beat): a beat that finds another mark than the one it wrote last
//! has found Redis without its data, or with an older snapshot's. The memberships may be
//! gone too, so every local socket leaves the rooms its user is no longer a member of
//! (`recheck_memberships`). The node's presence keys could not tell: a socket arriving
//! between the loss and the beat writes them again.
//!
//! An expiry tells no one: so each beat also lists the nodes that have entries, and when
//! another node dropped out (or came back after Redis lost its data), this node sends its
//! own sockets the current `presence` of their rooms.

use std::collections::{BTreeMap, BTreeSet};
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
    // The other nodes that had presence entries at the last beat.
    let mut others: Option<BTreeSet<String>> = None;
    // The beat mark this process wrote last ([`ChatStore::swap_beat_mark`]): unique to the
    // process and the beat, so that a mark an older snapshot brings back differs too.
    let process = super::secret::secret();
    let mut beats: u64 = 0;
    let mut last_mark: Option<String> = None;
    loop {
        ticks.tick().await;
        let Some(chat) = chat.upgrade() else {
            return;
        };
        let writing = chat.presence_writes.write().await;
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
        beats += 1;
        let mark = format!("{process}-{beats}");
        let swapped = chat
            .store
            .swap_beat_mark(&chat.node, &mark, chat.config.presence_ttl)
            .await;
        // Not the mark this node wrote last: Redis lost its data since (or this beat is
        // late past the mark's expiry). Judged by a key only the heartbeat writes: a
        // socket's presence written meanwhile, or a beat that failed, must not hide it.
        let lost = match swapped {
            Ok(previous) => {
                let lost = last_mark.is_some() && previous != last_mark;
                last_mark = Some(mark);
                lost
            }
            Err(error) => {
                tracing::warn!(%error, "heartbeat mark");
                false
            }
        };
        if lost {
            tracing::debug!(
                "Redis lost this node's heartbeat mark; the others' presence is awaited"
            );
            // The memberships may be lost with it, while the sockets are still in the
            // rooms' Socket.IO rooms: they leave the ones the store has no more.
            let recheck = Arc::clone(&chat);
            tokio::spawn(async move { recheck.recheck_memberships().await });
            // The other nodes write their presence again within a beat: until they have,
            // its absence says nothing about their sockets.
            others = None;
            continue;
        }
        if let Err(error) = refreshed {
            tracing::warn!(%error, "presence heartbeat");
            continue;
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
