//! Property tests of the Engine.IO codec: packets and polling payloads round-trip, and no
//! input makes the decoders panic.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use chat_node::engineio::payload::{self, SEPARATOR};
use chat_node::engineio::{Frame, OpenPacket, Packet, Transport};
use proptest::prelude::*;

fn open_packet() -> impl Strategy<Value = OpenPacket> {
    (
        "[A-Za-z0-9_-]{1,24}",
        proptest::sample::subsequence(vec![Transport::Polling, Transport::Websocket], 0..=2),
        any::<u32>(),
        any::<u32>(),
        any::<usize>(),
    )
        .prop_map(
            |(sid, upgrades, interval, timeout, max_payload)| OpenPacket {
                sid,
                upgrades,
                ping_interval: Duration::from_millis(interval.into()),
                ping_timeout: Duration::from_millis(timeout.into()),
                max_payload,
            },
        )
}

/// Text that can travel in a polling payload: anything but the record separator.
fn text() -> impl Strategy<Value = String> {
    "[^\x1e]{0,40}"
}

fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        open_packet().prop_map(Packet::Open),
        Just(Packet::Close),
        prop_oneof![Just(String::new()), Just("probe".to_owned()), text()].prop_map(Packet::Ping),
        prop_oneof![Just(String::new()), Just("probe".to_owned()), text()].prop_map(Packet::Pong),
        text().prop_map(|t| Packet::Message(t.into())),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| Packet::Binary(b.into())),
        Just(Packet::Upgrade),
        Just(Packet::Noop),
    ]
}

/// Strings made mostly of the characters the decoders branch on.
fn tricky_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            proptest::sample::select(vec![
                '0', '1', '2', '3', '4', '5', '6', '7', 'b', '\x1e', '{', '}', '"', ':', '=', '/',
                '+', 'A', '€',
            ]),
            any::<char>(),
        ],
        0..40,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

proptest! {
    #[test]
    fn text_form_round_trips(packet in packet()) {
        prop_assert_eq!(Packet::decode_text(&packet.to_text()).unwrap(), packet);
    }

    #[test]
    fn websocket_frames_round_trip(packet in packet()) {
        let frame = packet.to_frame();
        if let Packet::Binary(bytes) = &packet {
            prop_assert_eq!(&frame, &Frame::Binary(bytes.clone()));
        }
        prop_assert_eq!(Packet::decode_frame(frame).unwrap(), packet);
    }

    #[test]
    fn any_text_in_a_websocket_frame_round_trips(text in any::<String>()) {
        let packet = Packet::Message(text.into());
        prop_assert_eq!(Packet::decode_frame(packet.to_frame()).unwrap(), packet);
    }

    #[test]
    fn payloads_round_trip(packets in proptest::collection::vec(packet(), 1..8)) {
        let batch = payload::encode(&packets, usize::MAX);
        prop_assert_eq!(batch.taken, packets.len());
        prop_assert_eq!(payload::decode(batch.body.as_bytes()).unwrap(), packets);
    }

    #[test]
    fn batches_fit_max_payload(
        packets in proptest::collection::vec(packet(), 1..8),
        max_payload in 0usize..400,
    ) {
        let batch = payload::encode(&packets, max_payload);
        prop_assert!(batch.taken >= 1 && batch.taken <= packets.len());
        // Only a lone first packet may exceed the limit.
        prop_assert!(batch.body.len() <= max_payload || batch.taken == 1);
        prop_assert_eq!(
            payload::decode(batch.body.as_bytes()).unwrap(),
            packets[..batch.taken].to_vec()
        );
        // The next packet did not fit.
        if let Some(next) = packets.get(batch.taken) {
            let with_next = batch.body.len() + SEPARATOR.len_utf8() + next.to_text().len();
            prop_assert!(with_next > max_payload);
        }
    }

    #[test]
    fn decoding_any_string_never_panics(text in any::<String>()) {
        let _ = Packet::decode_text(&text);
        let _ = payload::decode(text.as_bytes());
    }

    #[test]
    fn decoding_tricky_strings_never_panics(text in tricky_text()) {
        let _ = Packet::decode_text(&text);
        let _ = payload::decode(text.as_bytes());
        let _ = Packet::decode_frame(Frame::Text(text.into()));
    }

    #[test]
    fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = payload::decode(&bytes);
        prop_assert_eq!(
            Packet::decode_frame(Frame::Binary(Bytes::from(bytes.clone()))).unwrap(),
            Packet::Binary(bytes.into())
        );
    }
}
