//! Users' lifetimes: a token names its user until it goes unused for `--token-ttl`.
//! Connecting uses it; so does staying connected, which this module's task records every
//! [`ChatConfig::users_period`](super::config::ChatConfig::users_period) for this
//! node's sessions. The same task forgets the users whose token expired: their
//! memberships would otherwise stay in the store for good, for users nobody can be again.
//! And it deletes the rooms that have had no member for `--empty-room-ttl`: without it
//! rooms would only ever accumulate until `--max-rooms` refused every `create`.

use std::collections::BTreeSet;
use std::sync::Weak;

use super::ChatInner;

/// Runs until the chat is dropped: first records the users and the empty rooms of older
/// nodes ([`ChatStore::index_users`](super::store::ChatStore::index_users),
/// [`ChatStore::index_empty_rooms`](super::store::ChatStore::index_empty_rooms)), then,
/// every period, marks this node's connected users' tokens in use, forgets the expired
/// users and deletes the rooms empty for too long.
pub(super) async fn keep(chat: Weak<ChatInner>) {
    let Some(period) = chat.upgrade().map(|c| c.config.users_period()) else {
        return;
    };
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut indexed = false;
    let mut empties_indexed = false;
    loop {
        ticks.tick().await;
        let Some(chat) = chat.upgrade() else {
            return;
        };
        let ttl = chat.config.token_ttl;
        if !indexed {
            match chat.store.index_users(ttl).await {
                Ok(added) => {
                    indexed = true;
                    if added > 0 {
                        tracing::info!(added, "users of older nodes recorded for expiry");
                    }
                }
                Err(error) => tracing::warn!(%error, "recording older nodes' users for expiry"),
            }
        }
        if !empties_indexed {
            match chat.store.index_empty_rooms().await {
                Ok(marked) => {
                    empties_indexed = true;
                    if marked > 0 {
                        tracing::info!(marked, "empty rooms of older nodes marked for deletion");
                    }
                }
                Err(error) => tracing::warn!(%error, "marking older nodes' empty rooms"),
            }
        }
        let connected: Vec<(String, String)> = chat
            .sessions
            .lock()
            .values()
            .map(|s| (s.user.clone(), s.token.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if let Err(error) = chat.store.touch_users(&connected, ttl).await {
            // Forgetting now could take a connected user whose use went unrecorded.
            tracing::warn!(%error, "marking connected users' tokens in use");
            continue;
        }
        match chat.store.forget_expired_users(ttl).await {
            Ok(0) => {}
            Ok(forgotten) => tracing::info!(forgotten, "users whose token expired forgotten"),
            Err(error) => tracing::warn!(%error, "forgetting users whose token expired"),
        }
        // After the users: the rooms their expiry emptied start their wait now.
        match chat
            .store
            .forget_empty_rooms(chat.config.empty_room_ttl)
            .await
        {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "rooms empty for --empty-room-ttl deleted"),
            Err(error) => tracing::warn!(%error, "deleting rooms empty for --empty-room-ttl"),
        }
    }
}
