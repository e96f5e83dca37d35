//! [`MessageText`]: the text of an Engine.IO message kept as its encoded packet
//! (`4<text>`), so that a broadcast queued for many sessions is encoded once, shared by
//! reference count, and written to every WebSocket as is.

use std::fmt;
use std::ops::Deref;

use axum::extract::ws::Utf8Bytes;

use super::packet::PacketType;

/// The text of a message packet: it derefs to the message (`hello`) and holds the packet
/// (`4hello`). Cloning it copies no text.
#[derive(Clone, PartialEq, Eq)]
pub struct MessageText(
    /// Always starts with the message type's ASCII digit.
    Utf8Bytes,
);

impl MessageText {
    /// The message `text`.
    pub fn new(text: &str) -> Self {
        let mut packet = String::with_capacity(text.len() + 1);
        packet.push(PacketType::Message.as_char());
        packet.push_str(text);
        Self(Utf8Bytes::from(packet))
    }

    /// The message of a whole text packet (`4hello`, a WebSocket frame), without copying
    /// it; the packet back when it is not a message packet.
    pub fn from_packet(packet: Utf8Bytes) -> Result<Self, Utf8Bytes> {
        if packet.starts_with(PacketType::Message.as_char()) {
            Ok(Self(packet))
        } else {
            Err(packet)
        }
    }

    /// The message.
    pub fn as_str(&self) -> &str {
        // The first byte is an ASCII digit: 1 is a character boundary.
        self.0.get(1..).unwrap_or_default()
    }

    /// The whole packet, `4<text>`.
    pub fn packet(&self) -> &str {
        &self.0
    }

    /// The packet as a WebSocket frame's text (shared, not copied).
    pub fn frame(&self) -> Utf8Bytes {
        self.0.clone()
    }
}

impl Deref for MessageText {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for MessageText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MessageText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for MessageText {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl From<String> for MessageText {
    fn from(text: String) -> Self {
        Self::new(&text)
    }
}

impl From<&String> for MessageText {
    fn from(text: &String) -> Self {
        Self::new(text)
    }
}

impl PartialEq<str> for MessageText {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for MessageText {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_packet_and_reads_as_the_message() {
        let text = MessageText::new("héllo");
        assert_eq!(text.as_str(), "héllo");
        assert_eq!(text.packet(), "4héllo");
        assert_eq!(text.frame().as_str(), "4héllo");
        assert_eq!(MessageText::new("").as_str(), "");
        let frame = Utf8Bytes::from("4[1]");
        assert_eq!(MessageText::from_packet(frame).unwrap(), "[1]");
        assert_eq!(
            MessageText::from_packet(Utf8Bytes::from("2")),
            Err(Utf8Bytes::from("2"))
        );
        assert!(MessageText::from_packet(Utf8Bytes::default()).is_err());
    }

    #[test]
    fn clones_share_the_text() {
        let text = MessageText::new("shared");
        let copy = text.clone();
        assert_eq!(copy.packet().as_ptr(), text.packet().as_ptr());
    }
}
