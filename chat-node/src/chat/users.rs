//! Users' lifetimes: a token names its user until it goes unused for `--token-ttl`.
//! Connecting uses it; so does staying connected, which this module's task records every
//! [`ChatConfig::users_period`](super::config::ChatConfig::users_period) for this
//! node's sessions. The same task forgets the users whose token expired: their
//! memberships would otherwise stay in the store for good, for users nobody can be again.

use std::collections::BTreeSet;
use std::sync::Weak;

use super::ChatInner;

/// Runs until the chat is dropped: first records the users of older nodes
/// ([`ChatStore::index_users`](super::store::ChatStore::index_users)), then, every period,
/// marks this node's connected users' tokens in use and forgets the expired users.
pub(super) async fn keep(chat: Weak<ChatInner>) {
    let Some(period) = chat.upgrade().map(|c| c.config.users_period()) else {
        return;
    };
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut indexed = false;
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
    }
}
