//! Property tests of the Socket.IO codec: packets (binary ones included) round-trip through
//! the encoder and the decoder, and no sequence of messages makes the decoder panic.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use chat_node::socketio::packet::RESERVED_EVENTS;
use chat_node::socketio::{Data, Decoder, Namespace, Object, Packet, PacketData, PacketType};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn namespace() -> impl Strategy<Value = Namespace> {
    prop_oneof![
        Just(Namespace::root()),
        "/[a-z0-9_-]{1,10}".prop_map(|n| Namespace::new(n).unwrap()),
        // Anything after the slash but a comma: digits, brackets, quotes, non-ASCII.
        "/[^,]{0,10}".prop_map(|n| Namespace::new(n).unwrap()),
    ]
}

fn number() -> impl Strategy<Value = serde_json::Number> {
    prop_oneof![
        any::<i64>().prop_map(serde_json::Number::from),
        any::<u64>().prop_map(serde_json::Number::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::Number::from_f64(f).unwrap()),
    ]
}

/// Object keys; never `_placeholder`, which marks binary on the wire.
fn key() -> impl Strategy<Value = String> {
    "[a-z0-9_\"\\\\ é]{0,8}".prop_filter("not a placeholder key", |k| k != "_placeholder")
}

fn data() -> impl Strategy<Value = Data> {
    let leaf = prop_oneof![
        Just(Data::Null),
        any::<bool>().prop_map(Data::Bool),
        number().prop_map(Data::Number),
        any::<String>().prop_map(Data::String),
        proptest::collection::vec(any::<u8>(), 0..32).prop_map(Data::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Data::Array),
            proptest::collection::vec((key(), inner), 0..6)
                .prop_map(|entries| Data::Object(entries.into_iter().collect::<Object>())),
        ]
    })
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number().prop_map(Value::Number),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            json_object(inner).prop_map(Value::Object),
        ]
    })
}

fn json_object(value: impl Strategy<Value = Value>) -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::vec((key(), value), 0..4).prop_map(|e| e.into_iter().collect())
}

fn event_name() -> impl Strategy<Value = String> {
    any::<String>().prop_filter("not reserved", |n| !RESERVED_EVENTS.contains(&n.as_str()))
}

fn packet_data() -> impl Strategy<Value = PacketData> {
    let args = || proptest::collection::vec(data(), 0..5);
    prop_oneof![
        proptest::option::of(json_object(json())).prop_map(PacketData::Connect),
        Just(PacketData::Disconnect),
        (event_name(), args(), proptest::option::of(any::<u64>()))
            .prop_map(|(name, args, id)| PacketData::Event { name, args, id }),
        (any::<u64>(), args()).prop_map(|(id, args)| PacketData::Ack { id, args }),
        prop_oneof![
            any::<String>().prop_map(Value::String),
            json_object(json()).prop_map(Value::Object),
        ]
        .prop_map(PacketData::ConnectError),
    ]
}

fn packet() -> impl Strategy<Value = Packet> {
    (namespace(), packet_data()).prop_map(|(nsp, data)| Packet { nsp, data })
}

/// A message as a transport delivers it to the decoder.
#[derive(Debug, Clone)]
enum Message {
    Text(String),
    Binary(Bytes),
}

/// Strings made mostly of the characters the decoder branches on.
fn tricky_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            proptest::sample::select(vec![
                '0', '1', '2', '3', '4', '5', '6', '7', '9', '-', '/', ',', '[', ']', '{', '}',
                '"', ':', 'a', '_',
            ]),
            any::<char>(),
        ],
        0..40,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        any::<String>().prop_map(Message::Text),
        tricky_text().prop_map(Message::Text),
        // Well-formed packets, so that the decoder also reaches its binary states.
        packet().prop_map(|p| Message::Text(p.encode().text)),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(|b| Message::Binary(b.into())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn packets_round_trip(packet in packet()) {
        let encoded = packet.encode();
        let binary_args: usize = match &packet.data {
            PacketData::Event { args, .. } | PacketData::Ack { args, .. } => {
                args.iter().map(Data::count_binary).sum()
            }
            _ => 0,
        };
        prop_assert_eq!(encoded.attachments.len(), binary_args);
        prop_assert_eq!(packet.packet_type().is_binary(), binary_args > 0);
        prop_assert!(encoded.text.starts_with(packet.packet_type().as_char()));

        // Message by message, as a transport delivers them.
        let mut decoder = Decoder::new();
        let mut decoded = decoder.push_text(&encoded.text).unwrap();
        for attachment in &encoded.attachments {
            prop_assert!(decoded.is_none());
            decoded = decoder.push_binary(attachment.clone()).unwrap();
        }
        prop_assert!(!decoder.is_awaiting_attachments());
        prop_assert_eq!(decoded.as_ref(), Some(&packet));

        // All at once.
        prop_assert_eq!(Packet::decode(&encoded.text, encoded.attachments).unwrap(), packet);
    }

    #[test]
    fn a_decoder_keeps_decoding_packet_after_packet(packets in proptest::collection::vec(packet(), 1..6)) {
        let mut decoder = Decoder::new();
        for packet in packets {
            let encoded = packet.encode();
            let mut decoded = decoder.push_text(&encoded.text).unwrap();
            for attachment in encoded.attachments {
                decoded = decoder.push_binary(attachment).unwrap();
            }
            prop_assert_eq!(decoded, Some(packet));
        }
    }

    #[test]
    fn binary_events_announce_their_attachments(
        nsp in namespace(),
        name in event_name(),
        blobs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..8), 1..5),
        id in proptest::option::of(any::<u64>()),
    ) {
        let args: Vec<Data> = blobs.iter().cloned().map(Data::from).collect();
        let packet = Packet::event(nsp, name, args, id);
        let encoded = packet.encode();
        let prefix = format!("{}{}-", PacketType::BinaryEvent.as_char(), blobs.len());
        prop_assert!(encoded.text.starts_with(&prefix));
        let expected: Vec<Bytes> = blobs.into_iter().map(Bytes::from).collect();
        prop_assert_eq!(encoded.attachments, expected);
    }

    #[test]
    fn decoding_any_string_never_panics(text in any::<String>()) {
        let _ = Decoder::new().push_text(&text);
        let _ = Packet::decode(&text, vec![Bytes::new()]);
    }

    #[test]
    fn decoding_tricky_strings_never_panics(text in tricky_text()) {
        let _ = Decoder::new().push_text(&text);
        let _ = Packet::decode(&text, vec![Bytes::from_static(b"x"); 2]);
    }

    #[test]
    fn any_message_sequence_never_panics(messages in proptest::collection::vec(message(), 0..12)) {
        let mut decoder = Decoder::with_max_attachments(4);
        for message in messages {
            let _ = match message {
                Message::Text(text) => decoder.push_text(&text),
                Message::Binary(bytes) => decoder.push_binary(bytes),
            };
        }
    }
}
