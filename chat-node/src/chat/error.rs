//! Why a chat request failed: one enum, turned into the ack `{ok:false, error}` in one place
//! (its `Display` is the `error` string of the public API, `docs/chat-api.md`).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::store::StoreError;

/// A refused or failed request. The messages are part of the public API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// The arguments are not the documented object.
    #[error("invalid request")]
    InvalidRequest,
    /// A room name outside the rules.
    #[error("invalid room name")]
    InvalidRoomName,
    /// `create` with a taken name.
    #[error("room exists")]
    RoomExists,
    /// `create` of a name that looks like an existing room's (`рор` beside `pop`), which a
    /// reader of the room list could not tell apart.
    #[error("room looks like another")]
    LooksLike,
    /// `create` when `max_rooms` rooms exist.
    #[error("too many rooms")]
    TooManyRooms,
    /// `join` of a room the user is not in yet, or `create`, by a user who is a member of
    /// `max_memberships` rooms already (`lobby` not counted).
    #[error("too many memberships")]
    TooManyMemberships,
    /// The room does not exist — or is private and the user is not a member (the two are
    /// indistinguishable on purpose, except to `join` with an invite).
    #[error("no such room")]
    NoSuchRoom,
    /// `join` of a private room without its invite, or with a wrong one.
    #[error("invalid invite")]
    InvalidInvite,
    /// `send`, `typing` or `history` in a room the user has not joined.
    #[error("not a member")]
    NotMember,
    /// Text that is only white space.
    #[error("empty text")]
    EmptyText,
    /// Text longer than the limit.
    #[error("text too long")]
    TextTooLong,
    /// Too many messages in the rate limit's window.
    #[error("rate limited")]
    RateLimited,
    /// `leave` of `lobby`, which every user is always in.
    #[error("cannot leave lobby")]
    CannotLeaveLobby,
    /// `history` with a `before` that is not a message id.
    #[error("invalid cursor")]
    InvalidCursor,
    /// `leave` ended the membership and took this node's sockets of the user out of the
    /// room, but the other nodes could not be told (the bus is unreachable): the user's
    /// sockets there may still get the room until they are, or until they reconnect.
    #[error("leave incomplete")]
    LeaveIncomplete,
    /// The store (Redis) failed; details are in the node's log. Nothing was written.
    #[error("unavailable")]
    Unavailable,
    /// A `send` whose store step got no reply (Redis stalled, or the connection broke
    /// under it): the message may have been sent, now or once Redis runs again. If it
    /// was, it reaches the room as any message does, the sender's sockets included; a
    /// client that sends it again risks a duplicate.
    #[error("timeout")]
    Timeout,
    /// An event the chat does not have.
    #[error("unknown event")]
    UnknownEvent,
}

impl From<StoreError> for ChatError {
    fn from(error: StoreError) -> Self {
        store_failed(&error, "a request");
        match error {
            // Not `unavailable`, which promises that nothing was written.
            StoreError::NoReply(_) => Self::Timeout,
            StoreError::Redis(_) | StoreError::NoLog(_) | StoreError::Corrupt { .. } => {
                Self::Unavailable
            }
        }
    }
}

/// At most one line per this period about the store failing: while Redis is down every
/// request fails the same way, and a line each (thousands a second on a busy node) would
/// bury everything else.
const STORE_WARNING_PERIOD: Duration = Duration::from_secs(10);

/// When the last store warning was written, and how many were left out since.
static STORE_WARNINGS: Mutex<(Option<Instant>, u64)> = Mutex::new((None, 0));

/// Logs that the store failed `during` something, unless it was said less than
/// [`STORE_WARNING_PERIOD`] ago; the next line counts those left out.
pub(crate) fn store_failed(error: &StoreError, during: &'static str) {
    // Every failure counts, the ones left out of the log included.
    crate::metrics::metrics().redis_error(crate::metrics::Component::Store);
    let now = Instant::now();
    let suppressed = {
        let mut last = STORE_WARNINGS
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last
            .0
            .is_some_and(|at| now.duration_since(at) < STORE_WARNING_PERIOD)
        {
            last.1 += 1;
            return;
        }
        last.0 = Some(now);
        std::mem::take(&mut last.1)
    };
    tracing::warn!(
        %error,
        during,
        suppressed,
        "chat store failed; its requests answer `unavailable` (one line per {}s at most, `suppressed`: those left out before this one)",
        STORE_WARNING_PERIOD.as_secs()
    );
}
