//! HTTP long-polling payloads: packets joined by the record separator `\x1e`, binary as
//! `b<base64>`.
//!
//! The separator never appears inside a Socket.IO packet (JSON escapes control characters),
//! and a base64 record cannot contain it; a raw Engine.IO text message that contains `\x1e`
//! cannot travel over polling, as in every other implementation of the protocol.

use super::packet::{DecodeError, Packet};

/// The record separator between the packets of a payload.
pub const SEPARATOR: char = '\x1e';

/// A response body for one poll and how many queued packets it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The payload: the first `taken` packets joined by [`SEPARATOR`].
    pub body: String,
    /// How many packets from the front of the queue are in `body`; the others wait for the
    /// next poll.
    pub taken: usize,
}

/// Why a POST body could not be decoded (HTTP 400; the session is closed).
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// An empty body.
    #[error("empty payload")]
    Empty,
    /// A body that is not UTF-8 text (binary travels as base64 on polling).
    #[error("payload is not UTF-8")]
    NotUtf8,
    /// One of the packets is invalid (an empty record counts as one).
    #[error("invalid packet #{index} in payload: {source}")]
    Packet {
        /// The position of the packet in the payload, from 0.
        index: usize,
        /// What is wrong with it.
        #[source]
        source: DecodeError,
    },
}

/// Encodes packets from the front of a queue into one payload of at most `max_payload`
/// bytes. The first packet is always taken, even when it alone is larger, so that an
/// oversized packet cannot block the queue; the packets that do not fit stay queued.
pub fn encode<'a, I>(packets: I, max_payload: usize) -> Batch
where
    I: IntoIterator<Item = &'a Packet>,
{
    let mut body = String::new();
    let mut taken = 0;
    for packet in packets {
        let start = body.len();
        if taken > 0 {
            body.push(SEPARATOR);
        }
        packet.write_text(&mut body);
        if taken > 0 && body.len() > max_payload {
            body.truncate(start);
            break;
        }
        taken += 1;
    }
    Batch { body, taken }
}

/// Decodes a POST body into its packets.
pub fn decode(body: &[u8]) -> Result<Vec<Packet>, PayloadError> {
    if body.is_empty() {
        return Err(PayloadError::Empty);
    }
    let text = std::str::from_utf8(body).map_err(|_| PayloadError::NotUtf8)?;
    text.split(SEPARATOR)
        .enumerate()
        .map(|(index, record)| {
            Packet::decode_text(record).map_err(|source| PayloadError::Packet { index, source })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn message(text: &str) -> Packet {
        Packet::Message(text.into())
    }

    #[test]
    fn decodes_the_spec_examples() {
        assert_eq!(
            decode("4hello\x1e4€".as_bytes()).unwrap(),
            vec![message("hello"), message("€")]
        );
        assert_eq!(
            decode(b"4hello\x1e2\x1e4world").unwrap(),
            vec![message("hello"), Packet::ping(), message("world")]
        );
        assert_eq!(
            decode(b"4hello\x1ebAQIDBA==").unwrap(),
            vec![
                message("hello"),
                Packet::Binary(Bytes::from_static(&[1, 2, 3, 4]))
            ]
        );
        assert_eq!(
            decode(b"42[\"hello\"]\x1e42[\"world\"]").unwrap(),
            vec![message(r#"2["hello"]"#), message(r#"2["world"]"#)]
        );
    }

    #[test]
    fn encodes_the_spec_examples() {
        let packets = [
            message("hello"),
            Packet::Binary(Bytes::from_static(&[1, 2, 3, 4])),
        ];
        assert_eq!(
            encode(&packets, 1_000_000),
            Batch {
                body: "4hello\x1ebAQIDBA==".into(),
                taken: 2
            }
        );
        assert_eq!(
            encode(&[message("hello"), message("€")], 100).body,
            "4hello\x1e4€"
        );
    }

    #[test]
    fn encoding_nothing_takes_nothing() {
        assert_eq!(
            encode(&Vec::<Packet>::new(), 10),
            Batch {
                body: String::new(),
                taken: 0
            }
        );
    }

    #[test]
    fn packets_that_do_not_fit_stay_queued() {
        let packets = [message("aaaa"), message("bbbb"), message("cccc")];
        // "4aaaa" = 5 bytes, "\x1e4bbbb" = 6 more.
        assert_eq!(encode(&packets, 10).taken, 1);
        let batch = encode(&packets, 11);
        assert_eq!(batch.taken, 2);
        assert_eq!(batch.body, "4aaaa\x1e4bbbb");
        assert_eq!(encode(&packets, 17).taken, 3);
        // The limit counts bytes, not characters.
        assert_eq!(encode(&[message("€"), message("x")], 5).taken, 1);
    }

    #[test]
    fn an_oversized_first_packet_is_still_sent() {
        let packets = [message("a long message"), message("b")];
        let batch = encode(&packets, 4);
        assert_eq!(batch.taken, 1);
        assert_eq!(batch.body, "4a long message");
    }

    #[test]
    fn bad_bodies_are_errors() {
        assert!(matches!(decode(b""), Err(PayloadError::Empty)));
        assert!(matches!(decode(b"\xff4"), Err(PayloadError::NotUtf8)));
        assert!(matches!(
            decode(b"abc"),
            Err(PayloadError::Packet {
                index: 0,
                source: DecodeError::UnknownType('a')
            })
        ));
        assert!(matches!(
            decode(b"4a\x1e\x1e4b"),
            Err(PayloadError::Packet {
                index: 1,
                source: DecodeError::Empty
            })
        ));
        assert!(matches!(
            decode(b"4a\x1e"),
            Err(PayloadError::Packet {
                index: 1,
                source: DecodeError::Empty
            })
        ));
        assert!(matches!(
            decode(b"4a\x1eb%%"),
            Err(PayloadError::Packet {
                index: 1,
                source: DecodeError::InvalidBase64(_)
            })
        ));
    }
}
