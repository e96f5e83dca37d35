//! Why a chat request failed: one enum, turned into the ack `{ok:false, error}` in one place
//! (its `Display` is the `error` string of the public API, `docs/chat-api.md`).

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
    /// The store (Redis) failed; details are in the node's log.
    #[error("unavailable")]
    Unavailable,
    /// An event the chat does not have.
    #[error("unknown event")]
    UnknownEvent,
}

impl From<StoreError> for ChatError {
    fn from(error: StoreError) -> Self {
        tracing::warn!(%error, "chat store");
        Self::Unavailable
    }
}
