//! Socket.IO: a connection's text and binary messages through the decoder (binary packets
//! waiting for their attachments); every packet it yields encodes back to itself.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use chat_node::socketio::packet::{Decoder, Packet};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Message {
    Text(String),
    Binary(Vec<u8>),
}

fuzz_target!(|input: (u8, Vec<Message>)| {
    let (max, messages) = input;
    let mut decoder = Decoder::with_max_attachments(usize::from(max % 16));
    for message in messages {
        let got = match message {
            Message::Text(text) => {
                // The one-unit decoder (bus entries) must agree with no attachments.
                let _ = Packet::decode(&text, Vec::new());
                decoder.push_text(&text)
            }
            Message::Binary(data) => decoder.push_binary(Bytes::from(data)),
        };
        if let Ok(Some(packet)) = got {
            let encoded = packet.encode();
            let again = Packet::decode(&encoded.text, encoded.attachments.clone());
            assert_eq!(again.as_ref().ok(), Some(&packet), "{encoded:?}");
        }
    }
});
