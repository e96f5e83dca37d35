//! Engine.IO v4 packets: one per WebSocket frame, or one record of a polling payload.
//!
//! A text packet is its type digit followed by its data (`4hello`, `2probe`, `6`). A binary
//! message has no type byte: on WebSocket it is a binary frame of raw bytes, on polling it is
//! `b` followed by the bytes in base64 (`bAQIDBA==`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use axum::extract::ws::Utf8Bytes;

use super::text::MessageText;

/// Base64 as engine.io-client writes it (standard alphabet, padded); padding is optional on
/// input so that a client that strips it is not cut off for it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The prefix of a base64 binary packet on polling.
pub const BINARY_PREFIX: char = 'b';

/// The data of the ping and pong packets that probe a WebSocket during an upgrade.
pub const PROBE: &str = "probe";

/// The type of an Engine.IO packet: the first character of a text packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// `0`: the handshake, server to client.
    Open,
    /// `1`: the transport may be closed.
    Close,
    /// `2`: heartbeat (server to client) or upgrade probe (client to server).
    Ping,
    /// `3`: the answer to a ping.
    Pong,
    /// `4`: application data (text, or binary without a type byte).
    Message,
    /// `5`: the client completes an upgrade.
    Upgrade,
    /// `6`: nothing; ends a pending poll during an upgrade.
    Noop,
}

impl PacketType {
    /// The digit that starts a text packet of this type.
    pub const fn as_char(self) -> char {
        match self {
            Self::Open => '0',
            Self::Close => '1',
            Self::Ping => '2',
            Self::Pong => '3',
            Self::Message => '4',
            Self::Upgrade => '5',
            Self::Noop => '6',
        }
    }

    /// The type whose digit is `c`.
    pub const fn from_char(c: char) -> Option<Self> {
        Some(match c {
            '0' => Self::Open,
            '1' => Self::Close,
            '2' => Self::Ping,
            '3' => Self::Pong,
            '4' => Self::Message,
            '5' => Self::Upgrade,
            '6' => Self::Noop,
            _ => return None,
        })
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Open => "open",
            Self::Close => "close",
            Self::Ping => "ping",
            Self::Pong => "pong",
            Self::Message => "message",
            Self::Upgrade => "upgrade",
            Self::Noop => "noop",
        };
        f.write_str(name)
    }
}

/// An Engine.IO transport, as named in the `transport` query parameter and in `upgrades`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// HTTP long-polling: GET to receive, POST to send.
    Polling,
    /// One WebSocket, one packet per frame.
    Websocket,
}

impl Transport {
    /// The name on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Polling => "polling",
            Self::Websocket => "websocket",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `transport` query parameter that names no transport (HTTP 400, code 0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transport {0:?}")]
pub struct UnknownTransport(pub String);

impl FromStr for Transport {
    type Err = UnknownTransport;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "polling" => Ok(Self::Polling),
            "websocket" => Ok(Self::Websocket),
            other => Err(UnknownTransport(other.to_owned())),
        }
    }
}

/// The data of the open packet (the handshake): exactly the five keys the official test
/// suites accept, in the reference server's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenPacket {
    /// The session id, sent back by the client in the `sid` query parameter.
    pub sid: String,
    /// The transports the client may upgrade to: `["websocket"]` on polling, `[]` on WebSocket.
    pub upgrades: Vec<Transport>,
    /// How often the server pings (milliseconds on the wire).
    #[serde(with = "millis")]
    pub ping_interval: Duration,
    /// How long the server waits for a pong (milliseconds on the wire).
    #[serde(with = "millis")]
    pub ping_timeout: Duration,
    /// The largest payload, in bytes, the server accepts in one POST or WebSocket frame.
    pub max_payload: usize,
}

/// `Duration` as a whole number of milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// One Engine.IO packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// `0{...}`: the handshake.
    Open(OpenPacket),
    /// `1`.
    Close,
    /// `2` (heartbeat) or `2probe` (upgrade probe); the data is kept as sent.
    Ping(String),
    /// `3` or `3probe`.
    Pong(String),
    /// `4<text>`: a text message (a Socket.IO packet, for Socket.IO).
    Message(MessageText),
    /// A binary message: a binary WebSocket frame, or `b<base64>` on polling.
    Binary(Bytes),
    /// `5`.
    Upgrade,
    /// `6`.
    Noop,
}

/// A WebSocket frame's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame.
    Text(Utf8Bytes),
    /// A binary frame.
    Binary(Bytes),
}

/// Why a packet could not be decoded; every one of them ends the session.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// An empty text packet (or an empty record between two separators).
    #[error("empty packet")]
    Empty,
    /// The first character is not a packet type nor `b`.
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    /// Data after a type that carries none (`1`, `5`, `6`).
    #[error("unexpected data after a {0} packet")]
    UnexpectedData(PacketType),
    /// An open packet whose data is not the handshake JSON.
    #[error("invalid open packet: {0}")]
    InvalidOpen(#[source] serde_json::Error),
    /// A `b` packet whose data is not base64.
    #[error("invalid base64 in a binary packet: {0}")]
    InvalidBase64(#[from] base64::DecodeError),
}

impl Packet {
    /// A heartbeat ping (`2`).
    pub fn ping() -> Self {
        Self::Ping(String::new())
    }

    /// A heartbeat pong (`3`).
    pub fn pong() -> Self {
        Self::Pong(String::new())
    }

    /// The type of this packet; a binary message is a [`PacketType::Message`].
    pub fn packet_type(&self) -> PacketType {
        match self {
            Self::Open(_) => PacketType::Open,
            Self::Close => PacketType::Close,
            Self::Ping(_) => PacketType::Ping,
            Self::Pong(_) => PacketType::Pong,
            Self::Message(_) | Self::Binary(_) => PacketType::Message,
            Self::Upgrade => PacketType::Upgrade,
            Self::Noop => PacketType::Noop,
        }
    }

    /// The bytes this packet holds while it waits for its client: its data (a binary
    /// message's raw bytes, not their base64), which is what a client that does not read
    /// makes the server keep ([`super::EngineConfig::max_queued_bytes`]).
    pub fn held_len(&self) -> usize {
        match self {
            Self::Message(text) => text.packet().len(),
            Self::Binary(data) => data.len(),
            Self::Ping(data) | Self::Pong(data) => 1 + data.len(),
            Self::Open(_) => self.to_text().len(),
            Self::Close | Self::Upgrade | Self::Noop => 1,
        }
    }

    /// Whether this is the upgrade probe `2probe` / `3probe`.
    pub fn is_probe(&self) -> bool {
        matches!(self, Self::Ping(d) | Self::Pong(d) if d == PROBE)
    }

    /// Decodes a text packet: a WebSocket text frame or one record of a polling payload
    /// (where `b<base64>` is a binary message).
    pub fn decode_text(text: &str) -> Result<Self, DecodeError> {
        let mut chars = text.chars();
        let first = chars.next().ok_or(DecodeError::Empty)?;
        let data = chars.as_str();
        if first == BINARY_PREFIX {
            return Ok(Self::Binary(BASE64.decode(data)?.into()));
        }
        let packet_type = PacketType::from_char(first).ok_or(DecodeError::UnknownType(first))?;
        let no_data = |packet: Self| {
            if data.is_empty() {
                Ok(packet)
            } else {
                Err(DecodeError::UnexpectedData(packet_type))
            }
        };
        match packet_type {
            PacketType::Open => serde_json::from_str(data)
                .map(Self::Open)
                .map_err(DecodeError::InvalidOpen),
            PacketType::Close => no_data(Self::Close),
            PacketType::Ping => Ok(Self::Ping(data.to_owned())),
            PacketType::Pong => Ok(Self::Pong(data.to_owned())),
            PacketType::Message => Ok(Self::Message(MessageText::new(data))),
            PacketType::Upgrade => no_data(Self::Upgrade),
            PacketType::Noop => no_data(Self::Noop),
        }
    }

    /// Decodes a WebSocket frame: a binary frame is a binary message as is, and a text
    /// message keeps the frame's text (no copy).
    pub fn decode_frame(frame: Frame) -> Result<Self, DecodeError> {
        match frame {
            Frame::Text(text) => match MessageText::from_packet(text) {
                Ok(message) => Ok(Self::Message(message)),
                Err(text) => Self::decode_text(&text),
            },
            Frame::Binary(data) => Ok(Self::Binary(data)),
        }
    }

    /// Appends the text form of this packet to `out`, binary as `b<base64>` (polling form).
    pub fn write_text(&self, out: &mut String) {
        let data = match self {
            Self::Binary(data) => {
                out.push(BINARY_PREFIX);
                BASE64.encode_string(data, out);
                return;
            }
            Self::Open(open) => {
                out.push(PacketType::Open.as_char());
                // An `OpenPacket` is strings and numbers: serializing it cannot fail.
                let json = serde_json::to_string(open).unwrap_or_default();
                out.push_str(&json);
                return;
            }
            Self::Message(text) => {
                out.push_str(text.packet());
                return;
            }
            Self::Ping(data) | Self::Pong(data) => data.as_str(),
            Self::Close | Self::Upgrade | Self::Noop => "",
        };
        out.push(self.packet_type().as_char());
        out.push_str(data);
    }

    /// The text form of this packet, binary as `b<base64>`: one record of a polling payload.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.write_text(&mut out);
        out
    }

    /// The WebSocket frame for this packet: a binary message is a binary frame of raw
    /// bytes, a text message its shared packet.
    pub fn to_frame(&self) -> Frame {
        match self {
            Self::Binary(data) => Frame::Binary(data.clone()),
            Self::Message(text) => Frame::Text(text.frame()),
            other => Frame::Text(other.to_text().into()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn open() -> OpenPacket {
        OpenPacket {
            sid: "lv_VI97HAXpY6yYWAAAC".into(),
            upgrades: vec![Transport::Websocket],
            ping_interval: Duration::from_millis(25000),
            ping_timeout: Duration::from_millis(20000),
            max_payload: 1_000_000,
        }
    }

    const OPEN_WIRE: &str = r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;

    #[test]
    fn open_packet_matches_the_spec_example() {
        assert_eq!(Packet::Open(open()).to_text(), OPEN_WIRE);
        assert_eq!(
            Packet::decode_text(OPEN_WIRE).unwrap(),
            Packet::Open(open())
        );
    }

    #[test]
    fn open_packet_has_exactly_the_five_keys() {
        let text = Packet::Open(open()).to_text();
        let value: serde_json::Value = serde_json::from_str(&text[1..]).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec![
            "maxPayload",
            "pingInterval",
            "pingTimeout",
            "sid",
            "upgrades",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
    }

    #[test]
    fn open_packet_over_websocket_offers_no_upgrade() {
        let mut open = open();
        open.upgrades.clear();
        assert!(Packet::Open(open).to_text().contains(r#""upgrades":[]"#));
    }

    #[test]
    fn text_packets_from_the_spec() {
        assert_eq!(
            Packet::decode_text("4hello").unwrap(),
            Packet::Message("hello".into())
        );
        assert_eq!(Packet::decode_text("2").unwrap(), Packet::ping());
        assert_eq!(Packet::decode_text("3").unwrap(), Packet::pong());
        assert_eq!(Packet::decode_text("1").unwrap(), Packet::Close);
        assert_eq!(Packet::decode_text("5").unwrap(), Packet::Upgrade);
        assert_eq!(Packet::decode_text("6").unwrap(), Packet::Noop);
        assert_eq!(
            Packet::decode_text("4").unwrap(),
            Packet::Message("".into())
        );
        assert_eq!(
            Packet::decode_text("4€").unwrap(),
            Packet::Message("€".into())
        );
    }

    #[test]
    fn probe_packets() {
        let probe = Packet::decode_text("2probe").unwrap();
        assert_eq!(probe, Packet::Ping(PROBE.into()));
        assert!(probe.is_probe());
        assert!(!Packet::ping().is_probe());
        assert_eq!(Packet::Pong(PROBE.into()).to_text(), "3probe");
    }

    #[test]
    fn binary_on_polling_is_base64() {
        let packet = Packet::Binary(Bytes::from_static(&[1, 2, 3, 4]));
        assert_eq!(packet.to_text(), "bAQIDBA==");
        assert_eq!(Packet::decode_text("bAQIDBA==").unwrap(), packet);
        // Padding is optional on input.
        assert_eq!(Packet::decode_text("bAQIDBA").unwrap(), packet);
        assert_eq!(
            Packet::decode_text("b").unwrap(),
            Packet::Binary(Bytes::new())
        );
    }

    #[test]
    fn binary_on_websocket_is_a_raw_frame() {
        let packet = Packet::Binary(Bytes::from_static(&[1, 2, 3, 4]));
        let frame = packet.to_frame();
        assert_eq!(frame, Frame::Binary(Bytes::from_static(&[1, 2, 3, 4])));
        assert_eq!(Packet::decode_frame(frame).unwrap(), packet);
        assert_eq!(
            Packet::Message("hello".into()).to_frame(),
            Frame::Text("4hello".into())
        );
    }

    #[test]
    fn bad_packets_are_errors() {
        assert!(matches!(Packet::decode_text(""), Err(DecodeError::Empty)));
        assert!(matches!(
            Packet::decode_text("abc"),
            Err(DecodeError::UnknownType('a'))
        ));
        assert!(matches!(
            Packet::decode_text("7"),
            Err(DecodeError::UnknownType('7'))
        ));
        assert!(matches!(
            Packet::decode_text("€"),
            Err(DecodeError::UnknownType('€'))
        ));
        assert!(matches!(
            Packet::decode_text("1x"),
            Err(DecodeError::UnexpectedData(PacketType::Close))
        ));
        assert!(matches!(
            Packet::decode_text("5probe"),
            Err(DecodeError::UnexpectedData(PacketType::Upgrade))
        ));
        assert!(matches!(
            Packet::decode_text("0"),
            Err(DecodeError::InvalidOpen(_))
        ));
        assert!(matches!(
            Packet::decode_text(r#"0{"sid":"x"}"#),
            Err(DecodeError::InvalidOpen(_))
        ));
        assert!(matches!(
            Packet::decode_text("b!!!"),
            Err(DecodeError::InvalidBase64(_))
        ));
    }

    #[test]
    fn transports_parse_from_query_values() {
        assert_eq!("polling".parse(), Ok(Transport::Polling));
        assert_eq!("websocket".parse(), Ok(Transport::Websocket));
        assert_eq!(
            "abc".parse::<Transport>(),
            Err(UnknownTransport("abc".into()))
        );
        assert_eq!(Transport::Websocket.to_string(), "websocket");
    }
}
