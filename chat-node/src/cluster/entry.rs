//! The bus entry of one broadcast ([`Entry`]): a small binary header, then the encoded
//! Socket.IO packet as raw bytes.
//!
//! Why not JSON: with the packet as a JSON string inside a JSON entry, every node escaped
//! the packet's JSON on publish and unescaped it for every entry it read; that was about
//! 14% of a chat node's user-space instructions at chat load (callgrind, `bench chat
//! --rate 5`: `serde_json::from_slice` of entries alone 13%; of CPU time, a few percent by
//! perf samples at `--rate 30`). Here the packet text is copied as is,
//! attachments are slices of the received buffer (no copy, no base64), and a node reads
//! only the origin of its own entries, which it skips ([`origin`]).
//!
//! Layout, version 1 (integers big-endian; `str` is a `u32` length and UTF-8 bytes):
//!
//! ```text
//! "SYB" 0x01 | instance u64 | seq u64 | node str
//! | rooms: u32 count, str… | except: u32 count, str…
//! | attachments: u32 count, each u32 length + bytes
//! | text: the rest of the entry, UTF-8
//! ```
//!
//! A leave entry ([`Leave`]: sockets taken out of rooms on every node) has the same
//! header with its own tag, then the rooms to leave instead of the packet:
//!
//! ```text
//! "SYL" 0x01 | instance u64 | seq u64 | node str
//! | rooms: u32 count, str… | except: u32 count, str… | leave: u32 count, str…
//! ```
//!
//! A join entry ([`Join`]: sockets put in rooms on every node) is a leave entry with the
//! tag `"SYJ" 0x01`, the rooms to join in place of the rooms to leave.
//!
//! Anything else (another version, an older node's JSON entry, a truncated entry) is
//! refused with an [`EntryError`]; decoding never panics, and allocates in proportion to
//! the entry's size whatever its counts say.

use bytes::{BufMut as _, Bytes, BytesMut};

use crate::socketio::{BroadcastOptions, Encoded, Room};

/// The tag and version that start every entry: not the start of any JSON text, so an
/// entry of the earlier JSON format is refused as foreign.
const MAGIC: [u8; 4] = *b"SYB\x01";
/// The tag and version of a leave entry: a node of an earlier version, which has no
/// such entry, skips it as foreign.
const LEAVE_MAGIC: [u8; 4] = *b"SYL\x01";
/// The tag and version of a join entry: a node of an earlier version skips it as
/// foreign (its sockets then enter the room on their next request naming it).
const JOIN_MAGIC: [u8; 4] = *b"SYJ\x01";
/// Magic, instance, seq: what [`origin`] reads.
const ORIGIN_LEN: usize = MAGIC.len() + 8 + 8;

/// Why an entry could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// It does not start with this format's tag and version.
    #[error("not a version-1 broadcast entry")]
    Foreign,
    /// It ends in the middle of a field.
    #[error("truncated entry")]
    Truncated,
    /// A name or the packet text is not UTF-8.
    #[error("entry text is not UTF-8")]
    NotUtf8,
    /// A field is longer than a `u32` length can say (encoding only).
    #[error("entry field too long")]
    TooLong,
}

/// One broadcast on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The publishing node's id (for logs).
    pub node: String,
    /// The publishing process: random at start-up, so a restarted node is a new instance.
    pub instance: u64,
    /// Increasing per instance and namespace, from 1.
    pub seq: u64,
    /// The encoded Socket.IO packet.
    pub packet: Encoded,
    /// Which sockets it goes to.
    pub opts: BroadcastOptions,
}

impl Entry {
    /// The entry's bytes.
    pub fn encode(&self) -> Result<Bytes, EntryError> {
        let Self {
            node,
            instance,
            seq,
            packet,
            opts,
        } = self;
        let body = 4
            + packet
                .attachments
                .iter()
                .map(|a| 4 + a.len())
                .sum::<usize>()
            + packet.text.len();
        let mut out = put_head(MAGIC, (*instance, *seq), node, opts, body)?;
        put_len(&mut out, packet.attachments.len())?;
        for attachment in &packet.attachments {
            put_bytes(&mut out, attachment)?;
        }
        out.put_slice(packet.text.as_bytes());
        Ok(out.freeze())
    }

    /// Reads an entry; its attachments share `data`'s buffer.
    pub fn decode(data: &Bytes) -> Result<Self, EntryError> {
        let (mut reader, (instance, seq), node, opts) = read_head(data, MAGIC)?;
        let count = reader.count()?;
        let mut attachments = Vec::new();
        for _ in 0..count {
            let len = reader.count()?;
            attachments.push(reader.take(len)?);
        }
        let text = std::str::from_utf8(&data[reader.at..])
            .map_err(|_| EntryError::NotUtf8)?
            .to_owned();
        Ok(Self {
            node,
            instance,
            seq,
            packet: Encoded { text, attachments },
            opts,
        })
    }
}

/// Sockets to take out of rooms, on every node: those `opts` selects leave `rooms` (the
/// reference server's `socketsLeave`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leave {
    /// The publishing node's id (for logs).
    pub node: String,
    /// The publishing process, as in [`Entry`].
    pub instance: u64,
    /// In the same numbering as the instance's broadcasts.
    pub seq: u64,
    /// Which sockets leave.
    pub opts: BroadcastOptions,
    /// The rooms they leave.
    pub rooms: Vec<Room>,
}

impl Leave {
    /// The entry's bytes.
    pub fn encode(&self) -> Result<Bytes, EntryError> {
        let origin = (self.instance, self.seq);
        encode_rooms(LEAVE_MAGIC, origin, &self.node, &self.opts, &self.rooms)
    }

    /// Reads a leave entry.
    pub fn decode(data: &Bytes) -> Result<Self, EntryError> {
        decode_rooms(data, LEAVE_MAGIC)
    }
}

/// Sockets to put in rooms, on every node: those `opts` selects join `rooms` (the
/// reference server's `socketsJoin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// The publishing node's id (for logs).
    pub node: String,
    /// The publishing process, as in [`Entry`].
    pub instance: u64,
    /// In the same numbering as the instance's broadcasts.
    pub seq: u64,
    /// Which sockets join.
    pub opts: BroadcastOptions,
    /// The rooms they join.
    pub rooms: Vec<Room>,
}

impl Join {
    /// The entry's bytes.
    pub fn encode(&self) -> Result<Bytes, EntryError> {
        let origin = (self.instance, self.seq);
        encode_rooms(JOIN_MAGIC, origin, &self.node, &self.opts, &self.rooms)
    }

    /// Reads a join entry.
    pub fn decode(data: &Bytes) -> Result<Self, EntryError> {
        // The same fields as a leave's, under its own tag.
        let Leave {
            node,
            instance,
            seq,
            opts,
            rooms,
        } = decode_rooms(data, JOIN_MAGIC)?;
        Ok(Self {
            node,
            instance,
            seq,
            opts,
            rooms,
        })
    }
}

/// A leave or join entry (tag `magic`).
fn encode_rooms(
    magic: [u8; 4],
    origin: (u64, u64),
    node: &str,
    opts: &BroadcastOptions,
    rooms: &[Room],
) -> Result<Bytes, EntryError> {
    let body = 4 + rooms.iter().map(|r| 4 + r.as_str().len()).sum::<usize>();
    let mut out = put_head(magic, origin, node, opts, body)?;
    put_rooms(&mut out, rooms)?;
    Ok(out.freeze())
}

/// Reads a leave or join entry (tag `magic`), as a leave's fields.
fn decode_rooms(data: &Bytes, magic: [u8; 4]) -> Result<Leave, EntryError> {
    let (mut reader, (instance, seq), node, opts) = read_head(data, magic)?;
    let rooms = reader.rooms()?;
    if reader.at != data.len() {
        return Err(EntryError::Truncated);
    }
    Ok(Leave {
        node,
        instance,
        seq,
        opts,
        rooms,
    })
}

/// Whether `data` is a leave entry (else a broadcast, a join, or foreign).
pub fn is_leave(data: &[u8]) -> bool {
    data.starts_with(&LEAVE_MAGIC)
}

/// Whether `data` is a join entry (else a broadcast, a leave, or foreign).
pub fn is_join(data: &[u8]) -> bool {
    data.starts_with(&JOIN_MAGIC)
}

/// A buffer for an entry with tag `magic`, holding the header every entry starts with:
/// origin, node, selection; `body` more bytes are to follow.
fn put_head(
    magic: [u8; 4],
    (instance, seq): (u64, u64),
    node: &str,
    opts: &BroadcastOptions,
    body: usize,
) -> Result<BytesMut, EntryError> {
    let names = opts.rooms.iter().chain(&opts.except);
    let size =
        ORIGIN_LEN + 4 * 3 + node.len() + names.map(|r| 4 + r.as_str().len()).sum::<usize>() + body;
    let mut out = BytesMut::with_capacity(size);
    out.put_slice(&magic);
    out.put_u64(instance);
    out.put_u64(seq);
    put_bytes(&mut out, node.as_bytes())?;
    put_rooms(&mut out, &opts.rooms)?;
    put_rooms(&mut out, &opts.except)?;
    Ok(out)
}

/// Reads the header of an entry with tag `magic`: a reader at the body, the origin, the
/// node and the selection.
fn read_head(
    data: &Bytes,
    magic: [u8; 4],
) -> Result<(Reader<'_>, (u64, u64), String, BroadcastOptions), EntryError> {
    if !data.starts_with(&magic) {
        return Err(EntryError::Foreign);
    }
    let origin = origin(data)?;
    let mut reader = Reader {
        data,
        at: ORIGIN_LEN,
    };
    let node = reader.str()?.to_owned();
    let rooms = reader.rooms()?;
    let except = reader.rooms()?;
    Ok((reader, origin, node, BroadcastOptions { rooms, except }))
}

fn put_rooms(out: &mut BytesMut, rooms: &[Room]) -> Result<(), EntryError> {
    put_len(out, rooms.len())?;
    for room in rooms {
        put_bytes(out, room.as_str().as_bytes())?;
    }
    Ok(())
}

/// The publishing instance and sequence number of an entry, read without decoding the
/// rest.
pub fn origin(data: &[u8]) -> Result<(u64, u64), EntryError> {
    let Some(head) = data.get(..ORIGIN_LEN) else {
        return Err(
            if [MAGIC, LEAVE_MAGIC, JOIN_MAGIC]
                .iter()
                .any(|magic| data.starts_with(magic))
            {
                EntryError::Truncated
            } else {
                EntryError::Foreign
            },
        );
    };
    let (magic, numbers) = head.split_at(MAGIC.len());
    if magic != MAGIC && magic != LEAVE_MAGIC && magic != JOIN_MAGIC {
        return Err(EntryError::Foreign);
    }
    let (instance, seq) = numbers.split_at(8);
    let number = |bytes: &[u8]| bytes.try_into().map(u64::from_be_bytes);
    match (number(instance), number(seq)) {
        (Ok(instance), Ok(seq)) => Ok((instance, seq)),
        _ => Err(EntryError::Truncated),
    }
}

fn put_len(out: &mut BytesMut, len: usize) -> Result<(), EntryError> {
    out.put_u32(u32::try_from(len).map_err(|_| EntryError::TooLong)?);
    Ok(())
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) -> Result<(), EntryError> {
    put_len(out, bytes.len())?;
    out.put_slice(bytes);
    Ok(())
}

/// Reads fields from `at` on.
struct Reader<'a> {
    data: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    /// The next `len` bytes, sharing the buffer.
    fn take(&mut self, len: usize) -> Result<Bytes, EntryError> {
        let end = self.at.checked_add(len).ok_or(EntryError::Truncated)?;
        if end > self.data.len() {
            return Err(EntryError::Truncated);
        }
        let taken = self.data.slice(self.at..end);
        self.at = end;
        Ok(taken)
    }

    /// The next `u32`, as a length or a count.
    fn count(&mut self) -> Result<usize, EntryError> {
        let bytes = self
            .data
            .get(self.at..self.at + 4)
            .ok_or(EntryError::Truncated)?;
        self.at += 4;
        let bytes: [u8; 4] = bytes.try_into().map_err(|_| EntryError::Truncated)?;
        usize::try_from(u32::from_be_bytes(bytes)).map_err(|_| EntryError::Truncated)
    }

    fn str(&mut self) -> Result<&str, EntryError> {
        let len = self.count()?;
        let end = self.at.checked_add(len).ok_or(EntryError::Truncated)?;
        let bytes = self.data.get(self.at..end).ok_or(EntryError::Truncated)?;
        self.at = end;
        std::str::from_utf8(bytes).map_err(|_| EntryError::NotUtf8)
    }

    fn rooms(&mut self) -> Result<Vec<Room>, EntryError> {
        let count = self.count()?;
        // Not `with_capacity(count)`: the count is the sender's word.
        let mut rooms = Vec::new();
        for _ in 0..count {
            rooms.push(Room::from(self.str()?));
        }
        Ok(rooms)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample() -> Entry {
        Entry {
            node: "n1".into(),
            instance: 0xdead_beef_0123_4567,
            seq: 42,
            packet: Encoded {
                text: "51-[\"m\",{\"_placeholder\":true,\"num\":0},\"é\\\"q\"]".into(),
                attachments: vec![Bytes::from_static(b"\x00\xff\x01")],
            },
            opts: BroadcastOptions {
                rooms: vec!["red".into(), "blue".into()],
                except: vec!["sender".into()],
            },
        }
    }

    #[test]
    fn an_entry_decodes_to_what_was_encoded_with_its_origin_readable_alone() {
        let entry = sample();
        let bytes = entry.encode().unwrap();
        assert_eq!(Entry::decode(&bytes).unwrap(), entry);
        assert_eq!(origin(&bytes).unwrap(), (entry.instance, 42));
        // The text is at the end, as is: no escaping.
        assert!(bytes.ends_with(entry.packet.text.as_bytes()));
        let empty = Entry {
            packet: Encoded {
                text: String::new(),
                attachments: vec![],
            },
            opts: BroadcastOptions::default(),
            node: String::new(),
            ..entry
        };
        assert_eq!(Entry::decode(&empty.encode().unwrap()).unwrap(), empty);
    }

    #[test]
    fn foreign_truncated_and_invalid_entries_are_refused() {
        let json =
            br#"{"node":"a","instance":7,"seq":1,"text":"2[]","opts":{"rooms":[],"except":[]}}"#;
        assert_eq!(
            Entry::decode(&Bytes::from_static(json)),
            Err(EntryError::Foreign)
        );
        assert_eq!(origin(b""), Err(EntryError::Foreign));
        assert_eq!(
            origin(b"SYB\x02rest-of-a-later-version"),
            Err(EntryError::Foreign)
        );
        let bytes = sample().encode().unwrap();
        // Cut inside the header, and inside each field after it.
        let text_at = bytes.len() - sample().packet.text.len();
        for cut in 0..text_at {
            let cut = bytes.slice(..cut);
            let error = Entry::decode(&cut).unwrap_err();
            let expected = if cut.len() < MAGIC.len() {
                EntryError::Foreign
            } else {
                EntryError::Truncated
            };
            assert_eq!(error, expected, "cut at {}", cut.len());
        }
        let mut bad_text = bytes.to_vec();
        bad_text.push(0xff);
        assert_eq!(
            Entry::decode(&Bytes::from(bad_text)),
            Err(EntryError::NotUtf8)
        );
        // A count far beyond the entry: refused, not allocated.
        let mut huge = bytes[..ORIGIN_LEN].to_vec();
        huge.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            Entry::decode(&Bytes::from(huge)),
            Err(EntryError::Truncated)
        );
    }

    #[test]
    fn a_leave_entry_round_trips_and_is_no_broadcast() {
        let leave = Leave {
            node: "n2".into(),
            instance: 9,
            seq: 3,
            opts: BroadcastOptions {
                rooms: vec!["@u1".into()],
                except: vec![],
            },
            rooms: vec!["#secret".into()],
        };
        let bytes = leave.encode().unwrap();
        assert!(is_leave(&bytes) && !is_leave(&sample().encode().unwrap()));
        assert_eq!(Leave::decode(&bytes).unwrap(), leave);
        assert_eq!(origin(&bytes).unwrap(), (9, 3));
        // A replay reading the log as broadcasts passes over it.
        assert_eq!(Entry::decode(&bytes), Err(EntryError::Foreign));
        assert_eq!(
            Leave::decode(&sample().encode().unwrap()),
            Err(EntryError::Foreign)
        );
        for cut in MAGIC.len()..bytes.len() {
            assert_eq!(
                Leave::decode(&bytes.slice(..cut)),
                Err(EntryError::Truncated),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_join_entry_round_trips_and_is_neither_a_leave_nor_a_broadcast() {
        let join = Join {
            node: "n2".into(),
            instance: 9,
            seq: 4,
            opts: BroadcastOptions {
                rooms: vec!["@u1".into()],
                except: vec![],
            },
            rooms: vec!["#team".into()],
        };
        let bytes = join.encode().unwrap();
        assert!(is_join(&bytes) && !is_leave(&bytes));
        assert_eq!(Join::decode(&bytes).unwrap(), join);
        assert_eq!(origin(&bytes).unwrap(), (9, 4));
        assert_eq!(Entry::decode(&bytes), Err(EntryError::Foreign));
        assert_eq!(Leave::decode(&bytes), Err(EntryError::Foreign));
        for cut in MAGIC.len()..bytes.len() {
            assert_eq!(
                Join::decode(&bytes.slice(..cut)),
                Err(EntryError::Truncated),
                "cut at {cut}"
            );
        }
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_does_not_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&data);
            let _ = Entry::decode(&Bytes::from(data));
            let _ = Entry::decode(&Bytes::from(with_magic));
        }

        #[test]
        fn every_entry_round_trips(
            node in ".{0,8}",
            instance in any::<u64>(),
            seq in any::<u64>(),
            text in ".{0,40}",
            attachments in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..16), 0..3),
            rooms in proptest::collection::vec(".{0,8}", 0..3),
            except in proptest::collection::vec(".{0,8}", 0..3),
        ) {
            let entry = Entry {
                node,
                instance,
                seq,
                packet: Encoded { text, attachments: attachments.into_iter().map(Bytes::from).collect() },
                opts: BroadcastOptions {
                    rooms: rooms.into_iter().map(Room::from).collect(),
                    except: except.into_iter().map(Room::from).collect(),
                },
            };
            prop_assert_eq!(Entry::decode(&entry.encode().unwrap()).unwrap(), entry);
        }
    }
}
