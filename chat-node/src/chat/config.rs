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

/// The default of [`ChatConfig::history_rate_limit`]: 20 in a burst, then one every
/// 500 ms (a reader paging back through a room goes slower; a page may be a megabyte, and
/// a script asking for thousands without reading them would have the node hold them).
pub const DEFAULT_HISTORY_RATE_LIMIT: RateLimit = RateLimit {
    count: 20,
    window: Duration::from_secs(10),
};

/// The default of [`ChatConfig::rooms_rate_limit`]: 100 in a burst, then one every
/// 100 ms. The browser page reads the whole list on connect, every 10 s and after each
/// join or leave it hears of: 21 pages of 500 at the most rooms there may be (10 000).
/// Each page reads hundreds of rooms, their members and the user's memberships from the
/// store: a client asking without pause would keep the store busy.
pub const DEFAULT_ROOMS_RATE_LIMIT: RateLimit = RateLimit {
    count: 100,
    window: Duration::from_secs(10),
};

/// The default of [`ChatConfig::new_user_rate_limit`]: 60 in a burst, then one every
/// 10 s. A browser keeps its token, so new users from one address are rare; a script
/// making identities to escape the per-user limits is not.
pub const DEFAULT_NEW_USER_RATE_LIMIT: RateLimit = RateLimit {
    count: 60,
    window: Duration::from_secs(600),
};

/// The default of [`ChatConfig::create_rate_limit`]: 100 in a burst, then one every
/// 36 s. Rooms live until empty for `--empty-room-ttl` (30 days): at this rate one
/// address would take 100 hours to fill the default `--max-rooms`.
pub const DEFAULT_CREATE_RATE_LIMIT: RateLimit = RateLimit {
    count: 100,
    window: Duration::from_secs(3600),
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
    /// `history` requests per user and window, across all nodes.
    pub history_rate_limit: RateLimit,
    /// `rooms` requests per user and window, across all nodes.
    pub rooms_rate_limit: RateLimit,
    /// New users (connections without a valid token) per client address and window,
    /// across all nodes: each new user starts with fresh per-user limits.
    pub new_user_rate_limit: RateLimit,
    /// `create`s per client address and window, across all nodes: a room lives until
    /// empty for `empty_room_ttl`, and `max_rooms` counts everyone's.
    pub create_rate_limit: RateLimit,
    /// The longest message, in characters.
    pub max_text: usize,
    /// How long a node's presence entries live without its heartbeat (it beats every third
    /// of this): the longest a dead node's users still count as online.
    pub presence_ttl: Duration,
    /// How many rooms (public and private) may exist, across all nodes: a room lives until
    /// empty for `empty_room_ttl`, and every client's room list grows with the public
    /// ones.
    pub max_rooms: usize,
    /// How many rooms one user may be a member of (`lobby`, which everyone is always in,
    /// not counted): every connection of the user enters all of them, and every `rooms`
    /// page reads them all.
    pub max_memberships: usize,
    /// How long a user's token stays valid unused. A connected user keeps it in use;
    /// once it expires, the user is forgotten: its memberships end, and the token names
    /// nobody (the client gets a new identity).
    pub token_ttl: Duration,
    /// How long a room stays without members before it is deleted, with its history and
    /// invite (its name can then be created again). Its last member's `leave`, or the
    /// expiry of its last member's token, starts it; a `join` ends it. Checked at
    /// [`ChatConfig::users_period`]'s pace.
    pub empty_room_ttl: Duration,
}

/// The default of [`ChatConfig::empty_room_ttl`].
pub const DEFAULT_EMPTY_ROOM_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The default of [`ChatConfig::token_ttl`].
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            history_cap: 1000,
            history_on_join: 50,
            rate_limit: RateLimit::default(),
            join_rate_limit: DEFAULT_JOIN_RATE_LIMIT,
            typing_rate_limit: DEFAULT_TYPING_RATE_LIMIT,
            history_rate_limit: DEFAULT_HISTORY_RATE_LIMIT,
            rooms_rate_limit: DEFAULT_ROOMS_RATE_LIMIT,
            new_user_rate_limit: DEFAULT_NEW_USER_RATE_LIMIT,
            create_rate_limit: DEFAULT_CREATE_RATE_LIMIT,
            max_text: 2000,
            presence_ttl: Duration::from_secs(30),
            max_rooms: 10_000,
            max_memberships: 1000,
            token_ttl: DEFAULT_TOKEN_TTL,
            empty_room_ttl: DEFAULT_EMPTY_ROOM_TTL,
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
    /// `token_ttl` is below a second or below `presence_ttl`.
    #[error("the token TTL must be at least 1s and at least the presence TTL, got {0:?}")]
    TokenTtl(Duration),
    /// `empty_room_ttl` is below a second.
    #[error("the empty room TTL must be at least 1s, got {0:?}")]
    EmptyRoomTtl(Duration),
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
        // At least the presence TTL: connected users' tokens are kept in use at the pace
        // of the heartbeat ([`ChatConfig::users_period`]), which must come well within it.
        if self.token_ttl < Duration::from_secs(1) || self.token_ttl < self.presence_ttl {
            return Err(ChatConfigError::TokenTtl(self.token_ttl));
        }
        if self.empty_room_ttl < Duration::from_secs(1) {
            return Err(ChatConfigError::EmptyRoomTtl(self.empty_room_ttl));
        }
        Ok(self)
    }

    /// How often the presence heartbeat runs.
    pub fn heartbeat(&self) -> Duration {
        self.presence_ttl / 3
    }

    /// How often connected users' tokens are marked in use, expired users forgotten and
    /// rooms empty for `empty_room_ttl` deleted: an eighth of the shorter TTL, at most
    /// hourly (a few Redis calls per node each time), never more often than the
    /// heartbeat. With the token TTL at least the presence TTL, it comes at least three
    /// times within the token TTL.
    pub fn users_period(&self) -> Duration {
        (self.token_ttl.min(self.empty_room_ttl) / 8)
            .min(Duration::from_secs(3600))
            .max(self.heartbeat())
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
        assert!(bad(ChatConfig {
            token_ttl: Duration::from_millis(999),
            presence_ttl: Duration::from_millis(300),
            ..ChatConfig::default()
        }));
        assert!(bad(ChatConfig {
            token_ttl: Duration::from_secs(20),
            ..ChatConfig::default()
        }));
        assert!(bad(ChatConfig {
            empty_room_ttl: Duration::from_millis(999),
            ..ChatConfig::default()
        }));
        assert!(ChatConfig {
            history_on_join: 0,
            ..ChatConfig::default()
        }
        .validate()
        .is_ok());
    }

    #[test]
    fn users_are_kept_in_use_well_within_the_token_ttl() {
        let period = |token_ttl: Duration, presence_ttl: Duration| {
            ChatConfig {
                token_ttl,
                presence_ttl,
                ..ChatConfig::default()
            }
            .users_period()
        };
        assert_eq!(
            period(DEFAULT_TOKEN_TTL, Duration::from_secs(30)),
            Duration::from_secs(3600)
        );
        assert_eq!(
            period(Duration::from_secs(80), Duration::from_secs(3)),
            Duration::from_secs(10)
        );
        // Short TTLs: at the heartbeat's pace, still a third of the TTL at most.
        assert_eq!(
            period(Duration::from_secs(3), Duration::from_secs(3)),
            Duration::from_secs(1)
        );
        // A short empty-room TTL: rooms are deleted at most an eighth of it late.
        let rooms = ChatConfig {
            empty_room_ttl: Duration::from_secs(80),
            ..ChatConfig::default()
        };
        assert_eq!(rooms.users_period(), Duration::from_secs(10));
    }
}
