//! The chat's settings ([`ChatConfig`]) and their checks.

use std::time::Duration;

use super::rate::RateLimit;

/// The longest history page a client may ask for.
pub const MAX_PAGE: usize = 100;

/// The longest page of `rooms` a client may ask for, and the page it gets by default.
pub const MAX_ROOMS_PAGE: usize = 500;

/// The default of [`ChatConfig::join_rate_limit`]: 20 in a burst, then one every 500 ms
/// (clicking through rooms stays well below; a script cycling join/leave does not).
pub const DEFAULT_JOIN_RATE_LIMIT: RateLimit = RateLimit {
    count: 20,
    window: Duration::from_secs(10),
};

/// The default of [`ChatConfig::typing_rate_limit`]: 10 in a burst, then one every 500 ms
/// (a client says it types about once every two seconds per room).
pub const DEFAULT_TYPING_RATE_LIMIT: RateLimit = RateLimit {
    count: 10,
    window: Duration::from_secs(5),
};

/// Settings of the chat application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatConfig {
    /// About how many messages each room's history keeps (Redis trims approximately,
    /// `XADD MAXLEN ~`, so it may keep a few more).
    pub history_cap: usize,
    /// How many of the newest messages `join` answers with.
    pub history_on_join: usize,
    /// Messages (and room creations) per user and window, across all nodes.
    pub rate_limit: RateLimit,
    /// `join`s and `leave`s per user and window, across all nodes (each may notify a
    /// room).
    pub join_rate_limit: RateLimit,
    /// `typing` events per user and window, across all nodes; those beyond it are dropped.
    pub typing_rate_limit: RateLimit,
    /// The longest message, in characters.
    pub max_text: usize,
    /// How long a node's presence entries live without its heartbeat (it beats every third
    /// of this): the longest a dead node's users still count as online.
    pub presence_ttl: Duration,
    /// How many rooms (public and private) may exist, across all nodes: rooms are never
    /// deleted, and every client's room list grows with the public ones.
    pub max_rooms: usize,
    /// How many rooms one user may be a member of (`lobby`, which everyone is always in,
    /// not counted): every connection of the user enters all of them, and every `rooms`
    /// page reads them all.
    pub max_memberships: usize,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            history_cap: 1000,
            history_on_join: 50,
            rate_limit: RateLimit::default(),
            join_rate_limit: DEFAULT_JOIN_RATE_LIMIT,
            typing_rate_limit: DEFAULT_TYPING_RATE_LIMIT,
            max_text: 2000,
            presence_ttl: Duration::from_secs(30),
            max_rooms: 10_000,
            max_memberships: 1000,
        }
    }
}

/// A setting out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatConfigError {
    /// `history_cap` is 0.
    #[error("the history cap must be at least 1")]
    HistoryCap,
    /// `history_on_join` is above the cap or above [`MAX_PAGE`].
    #[error("history on join ({0}) must be at most the history cap and at most {MAX_PAGE}")]
    HistoryOnJoin(usize),
    /// `max_text` is 0 or above 100 000.
    #[error("the longest message must be between 1 and 100000 characters, got {0}")]
    MaxText(usize),
    /// `presence_ttl` is below 300 ms.
    #[error("the presence TTL must be at least 300ms, got {0:?}")]
    PresenceTtl(Duration),
    /// `max_rooms` is 0.
    #[error("the room limit must be at least 1")]
    MaxRooms,
    /// `max_memberships` is 0.
    #[error("the membership limit must be at least 1")]
    MaxMemberships,
}

impl ChatConfig {
    /// The settings if they make sense.
    pub fn validate(self) -> Result<Self, ChatConfigError> {
        if self.history_cap == 0 {
            return Err(ChatConfigError::HistoryCap);
        }
        if self.history_on_join > self.history_cap || self.history_on_join > MAX_PAGE {
            return Err(ChatConfigError::HistoryOnJoin(self.history_on_join));
        }
        if self.max_text == 0 || self.max_text > 100_000 {
            return Err(ChatConfigError::MaxText(self.max_text));
        }
        if self.presence_ttl < Duration::from_millis(300) {
            return Err(ChatConfigError::PresenceTtl(self.presence_ttl));
        }
        if self.max_rooms == 0 {
            return Err(ChatConfigError::MaxRooms);
        }
        if self.max_memberships == 0 {
            return Err(ChatConfigError::MaxMemberships);
        }
        Ok(self)
    }

    /// How often the presence heartbeat runs.
    pub fn heartbeat(&self) -> Duration {
        self.presence_ttl / 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_refused() {
        assert!(ChatConfig::default().validate().is_ok());
        let bad = |c: ChatConfig| c.validate().is_err();
        assert!(bad(ChatConfig {
            history_cap: 0,
            ..ChatConfig::default()
        }));
        assert!(bad(ChatConfig {
            history_cap: 10,
            history_on_join: 11,
            ..ChatConfig::default()
        }));
        assert!(bad(ChatConfig {
            history_on_join: 101,
            ..ChatConfig::default()
        }));
        assert!(bad(ChatConfig {
            max_text: 0,
            ..ChatConfig::default()
        }));
        assert!(bad(ChatConfig {
            presence_ttl: Duration::from_millis(10),
            ..ChatConfig::default()
        }));
        assert!(bad(ChatConfig {
            max_rooms: 0,
            ..ChatConfig::default()
        }));
        assert!(bad(ChatConfig {
            max_memberships: 0,
            ..ChatConfig::default()
        }));
        assert!(ChatConfig {
            history_on_join: 0,
            ..ChatConfig::default()
        }
        .validate()
        .is_ok());
    }
}
