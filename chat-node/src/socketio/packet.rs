//! Socket.IO v5 packets: `<type>[<attachments>-][<nsp>,][<id>][<json>]`, plus one binary
//! attachment per placeholder for `BINARY_EVENT` and `BINARY_ACK`.
//!
//! [`Packet::encode`] turns a packet into its text and attachments; [`Decoder`] turns text
//! and binary messages back into packets, waiting for the attachments a binary packet
//! announces. Decoding validates like the reference server: any error closes the connection.

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::{Map, Value};

use super::data::{Data, InvalidPlaceholder, WithPlaceholders};
use crate::engineio::{Message, MessageText};

/// Event names an application may not use: they mean something to the libraries.
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// The most attachments a [`Decoder`] accepts for one packet unless told otherwise; each
/// attachment is buffered until the last one arrives.
pub const DEFAULT_MAX_ATTACHMENTS: usize = 256;

/// The type of a Socket.IO packet: its first character.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// `0`: join a namespace (client), or accept the join (server).
    Connect,
    /// `1`: leave a namespace.
    Disconnect,
    /// `2`: an event.
    Event,
    /// `3`: the answer to an event that asked for one.
    Ack,
    /// `4`: the server refuses a CONNECT.
    ConnectError,
    /// `5`: an event with binary attachments.
    BinaryEvent,
    /// `6`: an ack with binary attachments.
    BinaryAck,
}

impl PacketType {
    /// The digit that starts a packet of this type.
    pub const fn as_char(self) -> char {
        match self {
            Self::Connect => '0',
            Self::Disconnect => '1',
            Self::Event => '2',
            Self::Ack => '3',
            Self::ConnectError => '4',
            Self::BinaryEvent => '5',
            Self::BinaryAck => '6',
        }
    }

    /// The type whose digit is `c`.
    pub const fn from_char(c: char) -> Option<Self> {
        Some(match c {
            '0' => Self::Connect,
            '1' => Self::Disconnect,
            '2' => Self::Event,
            '3' => Self::Ack,
            '4' => Self::ConnectError,
            '5' => Self::BinaryEvent,
            '6' => Self::BinaryAck,
            _ => return None,
        })
    }

    /// Whether packets of this type announce attachments (`5`, `6`).
    pub const fn is_binary(self) -> bool {
        matches!(self, Self::BinaryEvent | Self::BinaryAck)
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Connect => "CONNECT",
            Self::Disconnect => "DISCONNECT",
            Self::Event => "EVENT",
            Self::Ack => "ACK",
            Self::ConnectError => "CONNECT_ERROR",
            Self::BinaryEvent => "BINARY_EVENT",
            Self::BinaryAck => "BINARY_ACK",
        };
        f.write_str(name)
    }
}

/// A namespace name: `/` (the main namespace) or `/` followed by anything but a comma.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(String);

/// A namespace name that does not start with `/` or contains a comma.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid namespace {0:?}: it must start with '/' and contain no ','")]
pub struct InvalidNamespace(pub String);

impl Namespace {
    /// The name of the main namespace.
    pub const ROOT: &'static str = "/";

    /// The main namespace, `/`.
    pub fn root() -> Self {
        Self(Self::ROOT.to_owned())
    }

    /// A namespace named `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidNamespace> {
        let name = name.into();
        if name.starts_with('/') && !name.contains(',') {
            Ok(Self(name))
        } else {
            Err(InvalidNamespace(name))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the main namespace (omitted on the wire).
    pub fn is_root(&self) -> bool {
        self.0 == Self::ROOT
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Self::root()
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Namespace {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for Namespace {
    type Err = InvalidNamespace;

    fn from_str(s: &str) -> Result<Self, InvalidNamespace> {
        Self::new(s)
    }
}

impl TryFrom<&str> for Namespace {
    type Error = InvalidNamespace;

    fn try_from(s: &str) -> Result<Self, InvalidNamespace> {
        Self::new(s)
    }
}

impl TryFrom<String> for Namespace {
    type Error = InvalidNamespace;

    fn try_from(s: String) -> Result<Self, InvalidNamespace> {
        Self::new(s)
    }
}

/// What a packet carries, by type. Binary-ness is not a separate case: an event or an ack
/// with binary arguments is sent as `BINARY_EVENT` / `BINARY_ACK`.
#[derive(Debug, Clone, PartialEq)]
pub enum PacketData {
    /// CONNECT: the client's auth payload, or the server's `{"sid"}` / `{"sid","pid"}` reply
    /// (see [`ConnectReply`]). Object keys are carried as `serde_json` orders them.
    Connect(Option<Map<String, Value>>),
    /// DISCONNECT.
    Disconnect,
    /// EVENT / BINARY_EVENT: `[name, ...args]`, with an id when the sender wants an ack.
    Event {
        /// The event name (never one of [`RESERVED_EVENTS`] when decoded).
        name: String,
        /// The arguments after the name.
        args: Vec<Data>,
        /// The ack id, when an ack is expected.
        id: Option<u64>,
    },
    /// ACK / BINARY_ACK: the answer to event `id`.
    Ack {
        /// The id of the event being acknowledged.
        id: u64,
        /// The ack's arguments (possibly none).
        args: Vec<Data>,
    },
    /// CONNECT_ERROR: usually `{"message": ...}` (a string is accepted too).
    ConnectError(Value),
}

/// A Socket.IO packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// The namespace it belongs to.
    pub nsp: Namespace,
    /// What it carries.
    pub data: PacketData,
}

/// A packet on the wire: one text message, then one binary message per attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The text packet (without the Engine.IO `4`).
    pub text: String,
    /// The attachments, in placeholder order.
    pub attachments: Vec<Bytes>,
}

impl Encoded {
    /// The Engine.IO messages that carry it: its text, then one binary message per
    /// attachment. Clones of them share the text (a broadcast encodes it once).
    pub fn messages(&self) -> impl Iterator<Item = Message> + '_ {
        std::iter::once(Message::Text(MessageText::new(&self.text)))
            .chain(self.attachments.iter().cloned().map(Message::Binary))
    }

    /// The same EVENT with `offset` appended as its last argument (connection-state
    /// recovery); anything that does not end with its JSON array is returned as is.
    #[must_use]
    /// The packet with `text[hole]` replaced by `value` (a placeholder filled in once the
    /// value is known: [`Adapter::broadcast_joint`](super::Adapter::broadcast_joint));
    /// as it was when `hole` is not a range of the text.
    pub fn splice(&self, hole: std::ops::Range<usize>, value: &str) -> Self {
        let (Some(head), Some(tail)) = (self.text.get(..hole.start), self.text.get(hole.end..))
        else {
            return self.clone();
        };
        let mut text = String::with_capacity(head.len() + value.len() + tail.len());
        text.push_str(head);
        text.push_str(value);
        text.push_str(tail);
        Self {
            text,
            attachments: self.attachments.clone(),
        }
    }

    pub fn with_offset(&self, offset: &str) -> Self {
        let Some(head) = self.text.strip_suffix(']') else {
            return self.clone();
        };
        // An offset is `<ms>-<seq>`: nothing to escape. Pushed rather than `format!`ed:
        // this runs for every broadcast event a node delivers.
        let mut text = String::with_capacity(head.len() + offset.len() + 4);
        text.push_str(head);
        if !head.ends_with('[') {
            text.push(',');
        }
        text.push('"');
        text.push_str(offset);
        text.push_str("\"]");
        Self {
            text,
            attachments: self.attachments.clone(),
        }
    }
}

/// Why a packet could not be decoded; every one of them closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// An empty text message.
    #[error("empty packet")]
    Empty,
    /// The first character is not a packet type.
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    /// A binary packet whose attachment count is not digits followed by `-`.
    #[error("invalid attachment count")]
    InvalidAttachments,
    /// A binary packet announcing more attachments than allowed.
    #[error("{count} attachments announced, at most {max} allowed")]
    TooManyAttachments {
        /// The count in the packet.
        count: usize,
        /// The decoder's limit.
        max: usize,
    },
    /// A binary packet whose attachments together are larger than allowed.
    #[error("attachments larger than {max} bytes in all")]
    AttachmentsTooLarge {
        /// The decoder's limit.
        max: usize,
    },
    /// An id too large for 64 bits.
    #[error("invalid ack id")]
    InvalidId,
    /// An id on a packet type that takes none.
    #[error("unexpected id on a {0} packet")]
    UnexpectedId(PacketType),
    /// An ACK without an id.
    #[error("missing ack id")]
    MissingId,
    /// The JSON part is not JSON (or has trailing garbage).
    #[error("invalid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// No JSON part where the type requires one.
    #[error("missing data in a {0} packet")]
    MissingData(PacketType),
    /// A JSON part where the type takes none.
    #[error("unexpected data in a {0} packet")]
    UnexpectedData(PacketType),
    /// JSON of the wrong shape for the type.
    #[error("invalid data in a {packet_type} packet: {reason}")]
    InvalidData {
        /// The packet's type.
        packet_type: PacketType,
        /// What the type requires.
        reason: &'static str,
    },
    /// An event named like one of [`RESERVED_EVENTS`].
    #[error("reserved event name {0:?}")]
    ReservedEvent(String),
    /// A placeholder that names no attachment.
    #[error(transparent)]
    InvalidPlaceholder(#[from] InvalidPlaceholder),
    /// A text message while the attachments of a binary packet are awaited.
    #[error("text packet while awaiting binary attachments")]
    UnexpectedText,
    /// A binary message while no binary packet awaits attachments.
    #[error("binary attachment without a binary packet")]
    UnexpectedBinary,
}

impl Packet {
    /// A CONNECT packet; `data` is the auth payload (client) or the reply (server).
    pub fn connect(nsp: Namespace, data: Option<Map<String, Value>>) -> Self {
        Self {
            nsp,
            data: PacketData::Connect(data),
        }
    }

    /// The server's CONNECT reply: `{"sid"}`, plus `"pid"` when connection state recovery
    /// is enabled.
    pub fn connect_reply(nsp: Namespace, reply: &ConnectReply) -> Self {
        Self::connect(nsp, Some(reply.to_map()))
    }

    /// A DISCONNECT packet.
    pub fn disconnect(nsp: Namespace) -> Self {
        Self {
            nsp,
            data: PacketData::Disconnect,
        }
    }

    /// An EVENT packet (BINARY_EVENT on the wire when `args` hold binary).
    pub fn event(
        nsp: Namespace,
        name: impl Into<String>,
        args: Vec<Data>,
        id: Option<u64>,
    ) -> Self {
        Self {
            nsp,
            data: PacketData::Event {
                name: name.into(),
                args,
                id,
            },
        }
    }

    /// An ACK packet (BINARY_ACK on the wire when `args` hold binary).
    pub fn ack(nsp: Namespace, id: u64, args: Vec<Data>) -> Self {
        Self {
            nsp,
            data: PacketData::Ack { id, args },
        }
    }

    /// A CONNECT_ERROR packet `{"message": message}`.
    pub fn connect_error(nsp: Namespace, message: impl Into<String>) -> Self {
        let mut map = Map::new();
        map.insert("message".to_owned(), Value::String(message.into()));
        Self {
            nsp,
            data: PacketData::ConnectError(Value::Object(map)),
        }
    }

    /// The type this packet has on the wire.
    pub fn packet_type(&self) -> PacketType {
        match &self.data {
            PacketData::Connect(_) => PacketType::Connect,
            PacketData::Disconnect => PacketType::Disconnect,
            PacketData::Event { args, .. } if args.iter().any(Data::has_binary) => {
                PacketType::BinaryEvent
            }
            PacketData::Event { .. } => PacketType::Event,
            PacketData::Ack { args, .. } if args.iter().any(Data::has_binary) => {
                PacketType::BinaryAck
            }
            PacketData::Ack { .. } => PacketType::Ack,
            PacketData::ConnectError(_) => PacketType::ConnectError,
        }
    }

    /// The text packet and its attachments.
    pub fn encode(&self) -> Encoded {
        let attachments = RefCell::new(Vec::new());
        let (packet_type, id, json) = match &self.data {
            PacketData::Connect(data) => (PacketType::Connect, None, data.as_ref().map(to_json)),
            PacketData::Disconnect => (PacketType::Disconnect, None, None),
            PacketData::Event { name, args, id } => {
                let json = to_json(&ArgsArray {
                    name: Some(name),
                    args,
                    attachments: &attachments,
                });
                (PacketType::Event, *id, Some(json))
            }
            PacketData::Ack { id, args } => {
                let json = to_json(&ArgsArray {
                    name: None,
                    args,
                    attachments: &attachments,
                });
                (PacketType::Ack, Some(*id), Some(json))
            }
            PacketData::ConnectError(data) => (PacketType::ConnectError, None, Some(to_json(data))),
        };
        let attachments = attachments.into_inner();
        let packet_type = match packet_type {
            PacketType::Event if !attachments.is_empty() => PacketType::BinaryEvent,
            PacketType::Ack if !attachments.is_empty() => PacketType::BinaryAck,
            other => other,
        };

        let json = json.unwrap_or_default();
        let mut text = String::with_capacity(json.len() + self.nsp.as_str().len() + 24);
        text.push(packet_type.as_char());
        if packet_type.is_binary() {
            text.push_str(&attachments.len().to_string());
            text.push('-');
        }
        if !self.nsp.is_root() {
            text.push_str(self.nsp.as_str());
            text.push(',');
        }
        if let Some(id) = id {
            text.push_str(&id.to_string());
        }
        text.push_str(&json);
        Encoded { text, attachments }
    }

    /// Decodes a complete packet: its text and every attachment it announces (for packets
    /// that travel as one unit, such as between nodes). Attachments must match the count.
    pub fn decode(text: &str, attachments: Vec<Bytes>) -> Result<Self, DecodeError> {
        let expected = attachments.len();
        let mut decoder = Decoder::with_max_attachments(expected);
        let mut packet = decoder.push_text(text)?;
        for attachment in attachments {
            packet = decoder.push_binary(attachment)?;
        }
        match packet {
            Some(packet) if !decoder.is_awaiting_attachments() => Ok(packet),
            // Fewer attachments than announced.
            _ => Err(DecodeError::InvalidAttachments),
        }
    }
}

/// Serializes `value`: for the types used here (string keys, infallible `Serialize` impls)
/// serializing into memory cannot fail.
fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    let json = serde_json::to_string(value);
    debug_assert!(json.is_ok(), "serializing a packet into memory failed");
    json.unwrap_or_default()
}

/// `[name, ...args]` (events) or `[...args]` (acks), binary as placeholders.
struct ArgsArray<'a> {
    name: Option<&'a str>,
    args: &'a [Data],
    attachments: &'a RefCell<Vec<Bytes>>,
}

impl Serialize for ArgsArray<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let len = self.args.len() + usize::from(self.name.is_some());
        let mut seq = serializer.serialize_seq(Some(len))?;
        if let Some(name) = self.name {
            seq.serialize_element(name)?;
        }
        for data in self.args {
            seq.serialize_element(&WithPlaceholders {
                data,
                attachments: self.attachments,
            })?;
        }
        seq.end()
    }
}

/// The server's CONNECT reply data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectReply {
    /// The Socket.IO id of the socket (not the Engine.IO session id).
    pub sid: String,
    /// The private session id a client presents to recover its state after a reconnect;
    /// only when connection state recovery is enabled.
    pub pid: Option<String>,
}

impl ConnectReply {
    /// `{"sid": ...}` or `{"sid": ..., "pid": ...}`.
    pub fn to_map(&self) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("sid".to_owned(), Value::String(self.sid.clone()));
        if let Some(pid) = &self.pid {
            map.insert("pid".to_owned(), Value::String(pid.clone()));
        }
        map
    }

    /// Reads a reply (a client's view); `None` without a string `sid`.
    pub fn from_map(map: &Map<String, Value>) -> Option<Self> {
        Some(Self {
            sid: map.get("sid")?.as_str()?.to_owned(),
            pid: map.get("pid").and_then(Value::as_str).map(str::to_owned),
        })
    }
}

/// What a reconnecting client asks to recover, from its CONNECT auth payload:
/// `{"pid": ..., "offset": ..., ...auth}`, the offset being the last argument of the last
/// event it received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryRequest {
    /// The private session id from the previous CONNECT reply.
    pub pid: String,
    /// The offset of the last event received; `None` when it received none (the server
    /// then replays from when the socket connected — an extension: the reference server
    /// does not recover without an offset).
    pub offset: Option<String>,
}

impl RecoveryRequest {
    /// The recovery request in a CONNECT auth payload, if it has a string `pid`.
    pub fn from_auth(auth: &Map<String, Value>) -> Option<Self> {
        Some(Self {
            pid: auth.get("pid")?.as_str()?.to_owned(),
            offset: auth
                .get("offset")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }
}

/// The decoding state of one connection: turns its text and binary messages into packets.
///
/// A binary packet header makes the decoder wait for the attachments it announces; the next
/// messages must be exactly that many binary messages, and the last one yields the packet
/// with its placeholders replaced by the bytes.
#[derive(Debug)]
pub struct Decoder {
    max_attachments: usize,
    /// The most bytes of one packet's attachments together: what one connection may make
    /// the server hold for as long as it keeps the packet unfinished.
    max_attachment_bytes: usize,
    pending: Option<Pending>,
}

/// A binary packet waiting for its attachments.
#[derive(Debug)]
struct Pending {
    packet: Packet,
    expected: usize,
    attachments: Vec<Bytes>,
    /// The bytes of `attachments`.
    bytes: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder accepting up to [`DEFAULT_MAX_ATTACHMENTS`] attachments per packet.
    pub fn new() -> Self {
        Self::with_max_attachments(DEFAULT_MAX_ATTACHMENTS)
    }

    /// A decoder accepting up to `max` attachments per packet, of any size.
    pub fn with_max_attachments(max: usize) -> Self {
        Self {
            max_attachments: max,
            max_attachment_bytes: usize::MAX,
            pending: None,
        }
    }

    /// This decoder, accepting attachments of at most `max` bytes together per packet.
    #[must_use]
    pub fn max_attachment_bytes(self, max: usize) -> Self {
        Self {
            max_attachment_bytes: max,
            ..self
        }
    }

    /// Whether a binary packet is waiting for attachments.
    pub fn is_awaiting_attachments(&self) -> bool {
        self.pending.is_some()
    }

    /// Takes a text message: the packet, or `None` when it announces attachments.
    pub fn push_text(&mut self, text: &str) -> Result<Option<Packet>, DecodeError> {
        if self.pending.take().is_some() {
            return Err(DecodeError::UnexpectedText);
        }
        match parse(text, self.max_attachments)? {
            // Placeholders mean nothing in a plain packet: they stay objects.
            (packet, None) => Ok(Some(packet)),
            (packet, Some(0)) => finish(packet, &[]).map(Some),
            (packet, Some(expected)) => {
                self.pending = Some(Pending {
                    packet,
                    expected,
                    attachments: Vec::new(),
                    bytes: 0,
                });
                Ok(None)
            }
        }
    }

    /// Takes a binary message: the packet once its last attachment is in, else `None`.
    pub fn push_binary(&mut self, data: Bytes) -> Result<Option<Packet>, DecodeError> {
        let mut pending = self.pending.take().ok_or(DecodeError::UnexpectedBinary)?;
        pending.bytes = pending.bytes.saturating_add(data.len());
        if pending.bytes > self.max_attachment_bytes {
            return Err(DecodeError::AttachmentsTooLarge {
                max: self.max_attachment_bytes,
            });
        }
        pending.attachments.push(data);
        if pending.attachments.len() < pending.expected {
            self.pending = Some(pending);
            return Ok(None);
        }
        finish(pending.packet, &pending.attachments).map(Some)
    }
}

/// Replaces the placeholders of a parsed event or ack with its attachments.
fn finish(mut packet: Packet, attachments: &[Bytes]) -> Result<Packet, DecodeError> {
    if let PacketData::Event { args, .. } | PacketData::Ack { args, .. } = &mut packet.data {
        for arg in args {
            arg.fill_placeholders(attachments)?;
        }
    }
    Ok(packet)
}

/// Parses a text packet; returns it with placeholders still in place and, for a binary
/// packet, the number of attachments it announces.
fn parse(text: &str, max_attachments: usize) -> Result<(Packet, Option<usize>), DecodeError> {
    let first = text.chars().next().ok_or(DecodeError::Empty)?;
    let packet_type = PacketType::from_char(first).ok_or(DecodeError::UnknownType(first))?;
    // Every delimiter below is ASCII, so each index is on a char boundary.
    let mut rest = &text[1..];

    let mut attachments = 0;
    if packet_type.is_binary() {
        let (count, after) = rest
            .split_once('-')
            .ok_or(DecodeError::InvalidAttachments)?;
        attachments = parse_digits(count)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(DecodeError::InvalidAttachments)?;
        if attachments > max_attachments {
            return Err(DecodeError::TooManyAttachments {
                count: attachments,
                max: max_attachments,
            });
        }
        rest = after;
    }

    let nsp = if rest.starts_with('/') {
        let (name, after) = rest.split_once(',').unwrap_or((rest, ""));
        rest = after;
        // Cannot contain ',' (it ends at the first one) and starts with '/'.
        Namespace(name.to_owned())
    } else {
        Namespace::root()
    };

    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = if digits > 0 {
        let (id, after) = rest.split_at(digits);
        rest = after;
        Some(parse_digits(id).ok_or(DecodeError::InvalidId)?)
    } else {
        None
    };
    let json = (!rest.is_empty()).then_some(rest);

    let no_id = || match id {
        Some(_) => Err(DecodeError::UnexpectedId(packet_type)),
        None => Ok(()),
    };
    let required = || json.ok_or(DecodeError::MissingData(packet_type));
    let invalid = |reason| DecodeError::InvalidData {
        packet_type,
        reason,
    };

    let data = match packet_type {
        PacketType::Connect => {
            no_id()?;
            match json.map(parse_json::<Value>).transpose()? {
                None => PacketData::Connect(None),
                Some(Value::Object(map)) => PacketData::Connect(Some(map)),
                Some(_) => return Err(invalid("CONNECT data must be an object")),
            }
        }
        PacketType::Disconnect => {
            no_id()?;
            if json.is_some() {
                return Err(DecodeError::UnexpectedData(packet_type));
            }
            PacketData::Disconnect
        }
        PacketType::ConnectError => {
            no_id()?;
            match parse_json::<Value>(required()?)? {
                data @ (Value::Object(_) | Value::String(_)) => PacketData::ConnectError(data),
                _ => return Err(invalid("CONNECT_ERROR data must be an object or a string")),
            }
        }
        PacketType::Event | PacketType::BinaryEvent => {
            let Data::Array(items) = parse_json::<Data>(required()?)? else {
                return Err(invalid("EVENT data must be an array"));
            };
            let mut items = items.into_iter();
            let name = match items.next() {
                Some(Data::String(name)) => name,
                Some(_) => return Err(invalid("an event name must be a string")),
                None => return Err(invalid("EVENT data must not be empty")),
            };
            if RESERVED_EVENTS.contains(&name.as_str()) {
                return Err(DecodeError::ReservedEvent(name));
            }
            PacketData::Event {
                name,
                args: items.collect(),
                id,
            }
        }
        PacketType::Ack | PacketType::BinaryAck => {
            let id = id.ok_or(DecodeError::MissingId)?;
            let Data::Array(args) = parse_json::<Data>(required()?)? else {
                return Err(invalid("ACK data must be an array"));
            };
            PacketData::Ack { id, args }
        }
    };

    // Fail on a bad placeholder now, before buffering attachments for it.
    if let PacketData::Event { args, .. } | PacketData::Ack { args, .. } = &data {
        if packet_type.is_binary() {
            for arg in args {
                arg.check_placeholders(attachments)?;
            }
        }
    }
    let attachments = packet_type.is_binary().then_some(attachments);
    Ok((Packet { nsp, data }, attachments))
}

/// A non-empty run of ASCII digits that fits in a `u64`.
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, DecodeError> {
    match serde_json::from_str(json) {
        Ok(value) => Ok(value),
        // JavaScript strings are UTF-16 and may hold a lone surrogate (half of an emoji cut
        // by a length limit, say); `JSON.stringify` writes it as a `\uD83D` escape, which
        // JSON.parse and the reference server accept. A Rust `String` cannot hold one, and
        // refusing the packet would drop the client's connection over one character, so it
        // becomes U+FFFD, as a lossy UTF-16 decoder would make it.
        Err(error) => match replace_lone_surrogates(json) {
            Some(mended) => serde_json::from_str(&mended).map_err(DecodeError::InvalidJson),
            None => Err(DecodeError::InvalidJson(error)),
        },
    }
}

/// `json` with each `\u` escape of an unpaired UTF-16 surrogate replaced by `\uFFFD`, or
/// `None` when it has none. Every backslash in valid JSON starts an escape inside a string,
/// so walking escapes pairwise finds them without tracking strings.
fn replace_lone_surrogates(json: &str) -> Option<String> {
    fn unit_at(bytes: &[u8], at: usize) -> Option<u16> {
        let escape = bytes.get(at..at + 6)?;
        if escape[..2] != *b"\\u" {
            return None;
        }
        let hex = std::str::from_utf8(&escape[2..]).ok()?;
        u16::from_str_radix(hex, 16).ok()
    }
    let bytes = json.as_bytes();
    let mut mended = String::new();
    let mut copied = 0;
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] != b'\\' {
            at += 1;
            continue;
        }
        let Some(unit) = unit_at(bytes, at) else {
            // Another escape (`\\`, `\"`, ...): skip it whole, so that an escaped
            // backslash is not taken for the start of the next one.
            at += 2;
            continue;
        };
        let paired = (0xD800..=0xDBFF).contains(&unit)
            && unit_at(bytes, at + 6).is_some_and(|low| (0xDC00..=0xDFFF).contains(&low));
        if paired {
            at += 12;
        } else if (0xD800..=0xDFFF).contains(&unit) {
            mended.push_str(&json[copied..at]);
            mended.push_str("\\uFFFD");
            at += 6;
            copied = at;
        } else {
            at += 6;
        }
    }
    if copied == 0 {
        return None;
    }
    mended.push_str(&json[copied..]);
    Some(mended)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::socketio::data::Object;

    fn nsp(name: &str) -> Namespace {
        Namespace::new(name).unwrap()
    }

    fn map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    fn decode(text: &str) -> Result<Packet, DecodeError> {
        Packet::decode(text, Vec::new())
    }

    /// Decodes `text` and re-encodes it: the wire form must be the same.
    fn check_wire(text: &str, expected: &Packet) {
        assert_eq!(&decode(text).unwrap(), expected, "decoding {text}");
        assert_eq!(expected.encode().text, text, "encoding {expected:?}");
    }

    fn check_binary_wire(text: &str, attachments: &[&'static [u8]], expected: &Packet) {
        let attachments: Vec<Bytes> = attachments.iter().map(|b| Bytes::from_static(b)).collect();
        assert_eq!(
            &Packet::decode(text, attachments.clone()).unwrap(),
            expected
        );
        assert_eq!(
            expected.encode(),
            Encoded {
                text: text.to_owned(),
                attachments
            }
        );
    }

    #[test]
    fn connect_packets_from_the_spec() {
        check_wire("0", &Packet::connect(Namespace::root(), None));
        check_wire(
            r#"0/admin,{"sid":"oSO0OpakMV_3jnilAAAA"}"#,
            &Packet::connect(
                nsp("/admin"),
                Some(map(json!({"sid": "oSO0OpakMV_3jnilAAAA"}))),
            ),
        );
        check_wire(
            r#"0{"token":"123"}"#,
            &Packet::connect(Namespace::root(), Some(map(json!({"token": "123"})))),
        );
        check_wire("0/admin,", &Packet::connect(nsp("/admin"), None));
        // The namespace may end the packet without a comma.
        assert_eq!(
            decode("0/random").unwrap(),
            Packet::connect(nsp("/random"), None)
        );
    }

    #[test]
    fn connect_error_from_the_spec() {
        check_wire(
            r#"4{"message":"Not authorized"}"#,
            &Packet::connect_error(Namespace::root(), "Not authorized"),
        );
        assert_eq!(
            Packet::connect_error(nsp("/random"), "Invalid namespace")
                .encode()
                .text,
            r#"4/random,{"message":"Invalid namespace"}"#
        );
    }

    #[test]
    fn disconnect_from_the_spec() {
        check_wire("1", &Packet::disconnect(Namespace::root()));
        check_wire("1/admin,", &Packet::disconnect(nsp("/admin")));
    }

    #[test]
    fn events_from_the_spec() {
        check_wire(
            r#"2["hello",1]"#,
            &Packet::event(Namespace::root(), "hello", vec![Data::from(1u64)], None),
        );
        check_wire(
            r#"2/admin,["project:delete",123]"#,
            &Packet::event(
                nsp("/admin"),
                "project:delete",
                vec![Data::from(123u64)],
                None,
            ),
        );
        check_wire(
            r#"212["foo"]"#,
            &Packet::event(Namespace::root(), "foo", vec![], Some(12)),
        );
        check_wire(
            r#"2/admin,12["foo"]"#,
            &Packet::event(nsp("/admin"), "foo", vec![], Some(12)),
        );
        check_wire(
            r#"2["message-back",1,"2",{"3":[true]}]"#,
            &Packet::event(
                Namespace::root(),
                "message-back",
                vec![
                    Data::from(1u64),
                    Data::from("2"),
                    Data::Object(Object::from([(
                        "3".to_owned(),
                        Data::Array(vec![Data::Bool(true)]),
                    )])),
                ],
                None,
            ),
        );
    }

    #[test]
    fn acks_from_the_spec() {
        check_wire(
            r#"3/admin,13["bar"]"#,
            &Packet::ack(nsp("/admin"), 13, vec![Data::from("bar")]),
        );
        check_wire(r#"312[]"#, &Packet::ack(Namespace::root(), 12, vec![]));
        check_wire(
            r#"3456[1,"2",{"3":[false]}]"#,
            &Packet::ack(
                Namespace::root(),
                456,
                vec![
                    Data::from(1u64),
                    Data::from("2"),
                    Data::Object(Object::from([(
                        "3".to_owned(),
                        Data::Array(vec![Data::Bool(false)]),
                    )])),
                ],
            ),
        );
    }

    #[test]
    fn binary_packets_from_the_spec() {
        check_binary_wire(
            r#"51-["hello",{"_placeholder":true,"num":0}]"#,
            &[&[1, 2, 3, 4]],
            &Packet::event(
                Namespace::root(),
                "hello",
                vec![Data::from(vec![1u8, 2, 3, 4])],
                None,
            ),
        );
        check_binary_wire(
            r#"52-/admin,["baz",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
            &[&[1, 2], &[3, 4]],
            &Packet::event(
                nsp("/admin"),
                "baz",
                vec![Data::from(vec![1u8, 2]), Data::from(vec![3u8, 4])],
                None,
            ),
        );
        check_binary_wire(
            r#"61-15["bar",{"_placeholder":true,"num":0}]"#,
            &[&[1, 2, 3, 4]],
            &Packet::ack(
                Namespace::root(),
                15,
                vec![Data::from("bar"), Data::from(vec![1u8, 2, 3, 4])],
            ),
        );
        check_binary_wire(
            r#"61-/admin,1[{"_placeholder":true,"num":0}]"#,
            &[b"x"],
            &Packet::ack(nsp("/admin"), 1, vec![Data::from(b"x".to_vec())]),
        );
        // From the official test suite: an event with two attachments and an ack id.
        check_binary_wire(
            r#"52-789["message-with-ack",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
            &[&[1, 2, 3], &[4, 5, 6]],
            &Packet::event(
                Namespace::root(),
                "message-with-ack",
                vec![Data::from(vec![1u8, 2, 3]), Data::from(vec![4u8, 5, 6])],
                Some(789),
            ),
        );
    }

    #[test]
    fn the_decoder_waits_for_every_attachment() {
        let mut decoder = Decoder::new();
        let header =
            r#"52-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#;
        assert!(decoder.push_text(header).unwrap().is_none());
        assert!(decoder.is_awaiting_attachments());
        assert!(decoder
            .push_binary(Bytes::from_static(&[1, 2, 3]))
            .unwrap()
            .is_none());
        let packet = decoder
            .push_binary(Bytes::from_static(&[4, 5, 6]))
            .unwrap()
            .unwrap();
        assert!(!decoder.is_awaiting_attachments());
        assert_eq!(
            packet,
            Packet::event(
                Namespace::root(),
                "message",
                vec![Data::from(vec![1u8, 2, 3]), Data::from(vec![4u8, 5, 6])],
                None
            )
        );
        // The decoder is ready for the next packet.
        assert!(decoder.push_text(r#"2["next"]"#).unwrap().is_some());
    }

    #[test]
    fn attachments_larger_together_than_allowed_are_an_error() {
        let mut decoder = Decoder::with_max_attachments(10).max_attachment_bytes(10);
        let header = r#"53-["a",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1},{"_placeholder":true,"num":2}]"#;
        assert!(decoder.push_text(header).unwrap().is_none());
        assert!(decoder
            .push_binary(Bytes::from_static(b"12345"))
            .unwrap()
            .is_none());
        assert!(decoder
            .push_binary(Bytes::from_static(b"67890"))
            .unwrap()
            .is_none());
        // The limit is on the packet's bytes together, however they are split.
        assert!(matches!(
            decoder.push_binary(Bytes::from_static(b"x")),
            Err(DecodeError::AttachmentsTooLarge { max: 10 })
        ));
        // Nothing is kept of it; the next packet decodes on its own.
        assert!(!decoder.is_awaiting_attachments());
        assert!(decoder.push_text(r#"2["b"]"#).unwrap().is_some());
        // Exactly at the limit is fine.
        let mut decoder = Decoder::with_max_attachments(10).max_attachment_bytes(10);
        decoder
            .push_text(r#"51-["a",{"_placeholder":true,"num":0}]"#)
            .unwrap();
        assert!(decoder
            .push_binary(Bytes::from_static(b"1234567890"))
            .unwrap()
            .is_some());
    }

    #[test]
    fn out_of_order_messages_are_errors() {
        let mut decoder = Decoder::new();
        assert!(matches!(
            decoder.push_binary(Bytes::from_static(b"x")),
            Err(DecodeError::UnexpectedBinary)
        ));
        decoder
            .push_text(r#"51-["a",{"_placeholder":true,"num":0}]"#)
            .unwrap();
        assert!(matches!(
            decoder.push_text(r#"2["b"]"#),
            Err(DecodeError::UnexpectedText)
        ));
        // After an error the decoder starts afresh.
        assert!(!decoder.is_awaiting_attachments());
        assert!(decoder.push_text(r#"2["b"]"#).unwrap().is_some());
    }

    #[test]
    fn binary_header_limits() {
        let mut decoder = Decoder::with_max_attachments(2);
        assert!(matches!(
            decoder.push_text(r#"53-["a"]"#),
            Err(DecodeError::TooManyAttachments { count: 3, max: 2 })
        ));
        // Zero attachments: complete at once.
        assert_eq!(
            decoder.push_text(r#"50-["a"]"#).unwrap(),
            Some(Packet::event(Namespace::root(), "a", vec![], None))
        );
        // A placeholder beyond the announced count fails before any attachment arrives.
        assert!(matches!(
            decoder.push_text(r#"51-["a",{"_placeholder":true,"num":1}]"#),
            Err(DecodeError::InvalidPlaceholder(_))
        ));
        assert!(matches!(
            Packet::decode(r#"51-["a",{"_placeholder":true,"num":0}]"#, vec![]),
            Err(DecodeError::TooManyAttachments { .. })
        ));
    }

    #[test]
    fn a_placeholder_in_a_plain_event_is_just_an_object() {
        let packet = decode(r#"2["a",{"_placeholder":true,"num":0}]"#).unwrap();
        let PacketData::Event { args, .. } = &packet.data else {
            panic!("not an event");
        };
        assert!(matches!(args[0], Data::Object(_)));
    }

    #[test]
    fn a_lone_surrogate_becomes_a_replacement_character() {
        let text = |packet: Packet| match packet.data {
            PacketData::Event { args, .. } => match &args[0] {
                Data::String(s) => s.clone(),
                other => panic!("not a string: {other:?}"),
            },
            other => panic!("not an event: {other:?}"),
        };
        // What `JSON.stringify` writes for half an emoji, at the end, before another
        // escape, and a trailing half alone.
        let cases = [
            (r#"2["a","cut \ud83d"]"#, "cut \u{fffd}"),
            (r#"2["a","\ud83d\n"]"#, "\u{fffd}\n"),
            (r#"2["a","\ude00x"]"#, "\u{fffd}x"),
            // A pair stays one character, also after a lone half.
            (r#"2["a","\ud83d\ud83d\ude00"]"#, "\u{fffd}\u{1f600}"),
            // An escaped backslash before `u` starts no escape.
            (r#"2["a","\\ud83d \ud83d"]"#, "\\ud83d \u{fffd}"),
        ];
        for (wire, expected) in cases {
            assert_eq!(text(decode(wire).unwrap()), expected, "{wire}");
        }
        // In a CONNECT's auth too.
        let packet = decode(r#"0{"name":"x\ud83d"}"#).unwrap();
        assert_eq!(
            packet.data,
            PacketData::Connect(Some(map(json!({ "name": "x\u{fffd}" }))))
        );
        // Other bad JSON is still refused.
        assert!(matches!(
            decode(r#"2["a","\ud83d]"#),
            Err(DecodeError::InvalidJson(_))
        ));
        assert_eq!(replace_lone_surrogates(r#"["\ud83d\ude00"]"#), None);
    }

    #[test]
    fn invalid_packets_are_errors() {
        use DecodeError as E;
        type Check = fn(&DecodeError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, E::Empty)),
            ("abc", |e| matches!(e, E::UnknownType('a'))),
            ("7", |e| matches!(e, E::UnknownType('7'))),
            ("é", |e| matches!(e, E::UnknownType('é'))),
            // From the official test suite.
            ("2{}", |e| matches!(e, E::InvalidData { .. })),
            (r#"2abc["a"]"#, |e| matches!(e, E::InvalidJson(_))),
            ("2", |e| matches!(e, E::MissingData(PacketType::Event))),
            ("2[]", |e| matches!(e, E::InvalidData { .. })),
            ("2[1]", |e| matches!(e, E::InvalidData { .. })),
            (r#"2["disconnect"]"#, |e| matches!(e, E::ReservedEvent(_))),
            (r#"2["newListener",1]"#, |e| {
                matches!(e, E::ReservedEvent(_))
            }),
            (r#"2["a"]x"#, |e| matches!(e, E::InvalidJson(_))),
            (r#"2["a"]["b"]"#, |e| matches!(e, E::InvalidJson(_))),
            (r#"2admin,["a"]"#, |e| matches!(e, E::InvalidJson(_))),
            (r#"2/admin["a"]"#, |e| matches!(e, E::MissingData(_))),
            (r#"299999999999999999999["a"]"#, |e| {
                matches!(e, E::InvalidId)
            }),
            (r#"0"a""#, |e| matches!(e, E::InvalidData { .. })),
            ("0[]", |e| matches!(e, E::InvalidData { .. })),
            ("01{}", |e| {
                matches!(e, E::UnexpectedId(PacketType::Connect))
            }),
            ("1{}", |e| {
                matches!(e, E::UnexpectedData(PacketType::Disconnect))
            }),
            ("4", |e| {
                matches!(e, E::MissingData(PacketType::ConnectError))
            }),
            ("41", |e| matches!(e, E::UnexpectedId(_))),
            ("4[]", |e| matches!(e, E::InvalidData { .. })),
            (r#"3["a"]"#, |e| matches!(e, E::MissingId)),
            (r#"31{}"#, |e| matches!(e, E::InvalidData { .. })),
            ("31", |e| matches!(e, E::MissingData(PacketType::Ack))),
            (r#"5["a"]"#, |e| matches!(e, E::InvalidAttachments)),
            (r#"5-["a"]"#, |e| matches!(e, E::InvalidAttachments)),
            (r#"5x-["a"]"#, |e| matches!(e, E::InvalidAttachments)),
            (r#"51["a"]"#, |e| matches!(e, E::InvalidAttachments)),
            (r#"61-["a"]"#, |e| matches!(e, E::MissingId)),
        ];
        for (text, expected) in cases {
            match Decoder::new().push_text(text) {
                Err(e) => assert!(expected(&e), "{text:?} gave {e:?}"),
                Ok(p) => panic!("{text:?} decoded to {p:?}"),
            }
        }
    }

    #[test]
    fn namespaces_are_validated() {
        assert!(Namespace::new("/").unwrap().is_root());
        assert_eq!(nsp("/chat").as_str(), "/chat");
        assert!(Namespace::new("chat").is_err());
        assert!(Namespace::new("").is_err());
        assert!(Namespace::new("/a,b").is_err());
        assert_eq!(Namespace::default(), Namespace::root());
        // A root namespace spelled out on the wire is the root namespace.
        assert_eq!(
            decode(r#"2/,["a"]"#).unwrap(),
            Packet::event(Namespace::root(), "a", vec![], None)
        );
    }

    #[test]
    fn recovery_fields_travel_in_connect_packets() {
        // From a trace of socket.io 4.8.4 with connection state recovery on.
        let reply = ConnectReply {
            sid: "veNM".into(),
            pid: Some("7O6D".into()),
        };
        let packet = Packet::connect_reply(Namespace::root(), &reply);
        assert_eq!(packet.encode().text, r#"0{"pid":"7O6D","sid":"veNM"}"#);
        let PacketData::Connect(Some(data)) =
            decode(r#"0{"sid":"veNM","pid":"7O6D"}"#).unwrap().data
        else {
            panic!("not a CONNECT with data");
        };
        assert_eq!(ConnectReply::from_map(&data), Some(reply));

        let without_pid = ConnectReply {
            sid: "veNM".into(),
            pid: None,
        };
        assert_eq!(
            Packet::connect_reply(Namespace::root(), &without_pid)
                .encode()
                .text,
            r#"0{"sid":"veNM"}"#
        );

        let PacketData::Connect(Some(auth)) =
            decode(r#"0{"pid":"7O6D","offset":"Q8UjAcS","token":"t"}"#)
                .unwrap()
                .data
        else {
            panic!("not a CONNECT with data");
        };
        assert_eq!(
            RecoveryRequest::from_auth(&auth),
            Some(RecoveryRequest {
                pid: "7O6D".into(),
                offset: Some("Q8UjAcS".into())
            })
        );
        assert_eq!(
            RecoveryRequest::from_auth(&map(json!({"token": "t"}))),
            None
        );

        // The offset is the last argument of a replayed event.
        check_wire(
            r#"2["room-msg","missed-1","Q8UjAnh"]"#,
            &Packet::event(
                Namespace::root(),
                "room-msg",
                vec![Data::from("missed-1"), Data::from("Q8UjAnh")],
                None,
            ),
        );
    }

    #[test]
    fn an_offset_is_appended_as_the_last_argument_of_an_event() {
        let encoded = |text: &str| Encoded {
            text: text.to_owned(),
            attachments: vec![Bytes::from_static(b"\x01")],
        };
        let with = |text: &str| encoded(text).with_offset("17-3").text;
        assert_eq!(with("2[\"m\",{\"a\":1}]"), "2[\"m\",{\"a\":1},\"17-3\"]");
        assert_eq!(with("2/chat,[]"), "2/chat,[\"17-3\"]");
        // Not ending with its array: as it was.
        assert_eq!(with("0{\"sid\":\"x\"}"), "0{\"sid\":\"x\"}");
        assert_eq!(
            encoded("2[\"m\"]").with_offset("1-0").attachments,
            encoded("").attachments
        );
    }
}
