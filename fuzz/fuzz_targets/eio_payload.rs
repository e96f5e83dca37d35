//! Engine.IO: a long-polling POST body (packets joined by `\x1e`, binary as `b<base64>`) and
//! a WebSocket text frame; what decodes encodes back to the same packets.
#![no_main]

use chat_node::engineio::packet::Utf8Bytes;
use chat_node::engineio::{payload, Frame, Packet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(packets) = payload::decode(body) {
        let batch = payload::encode(&packets, usize::MAX);
        assert_eq!(batch.taken, packets.len());
        let again = payload::decode(batch.body.as_bytes());
        assert_eq!(
            again.ok().as_ref(),
            Some(&packets),
            "{}",
            batch.body.escape_debug()
        );
    }
    if let Ok(text) = std::str::from_utf8(body) {
        let from_text = Packet::decode_text(text);
        let from_frame = Packet::decode_frame(Frame::Text(Utf8Bytes::from(text)));
        assert_eq!(from_text.as_ref().ok(), from_frame.as_ref().ok());
        if let Ok(packet) = from_frame {
            let frame = packet.to_frame();
            assert_eq!(Packet::decode_frame(frame).ok(), Some(packet));
        }
    }
});
