//! Packet codec throughput: Engine.IO polling payloads and Socket.IO packets, encode and
//! decode, for a typical chat message, a binary event, and a batch of 32 messages.
//!
//! `cargo bench -p chat-node --bench codec`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use chat_node::engineio::packet::Packet as EioPacket;
use chat_node::engineio::payload;
use chat_node::socketio::{Data, Decoder, Namespace, Packet};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::json;
use std::hint::black_box;

fn chat_message() -> Packet {
    let message = json!({
        "id": "1764291234567-0",
        "room": "lobby",
        "from": "alice",
        "text": "hello there, how is everyone doing today? shipping the release at five",
        "ts": 1_764_291_234_567_u64,
    });
    Packet::event(Namespace::root(), "message", vec![message.into()], None)
}

fn binary_event() -> Packet {
    let payload = Data::Binary(Bytes::from(vec![7u8; 1024]));
    Packet::event(Namespace::root(), "upload", vec![payload], Some(12))
}

fn socketio(c: &mut Criterion) {
    let mut group = c.benchmark_group("socketio");
    for (name, packet) in [
        ("chat_message", chat_message()),
        ("binary_1k", binary_event()),
    ] {
        let encoded = packet.encode();
        group.throughput(Throughput::Bytes(
            (encoded.text.len() + encoded.attachments.iter().map(Bytes::len).sum::<usize>()) as u64,
        ));
        group.bench_with_input(BenchmarkId::new("encode", name), &packet, |b, p| {
            b.iter(|| black_box(p.encode()));
        });
        group.bench_with_input(BenchmarkId::new("decode", name), &encoded, |b, e| {
            b.iter(|| {
                let mut decoder = Decoder::new();
                let mut out = decoder.push_text(&e.text).unwrap();
                for attachment in &e.attachments {
                    out = decoder.push_binary(attachment.clone()).unwrap();
                }
                black_box(out.expect("a whole packet"))
            });
        });
        let with_offset = encoded.clone();
        group.bench_with_input(
            BenchmarkId::new("append_offset", name),
            &with_offset,
            |b, e| {
                b.iter(|| black_box(e.with_offset("1764291234567-12")));
            },
        );
    }
    group.finish();
}

fn engineio(c: &mut Criterion) {
    let mut group = c.benchmark_group("engineio_payload");
    let text = chat_message().encode().text;
    let packets: Vec<EioPacket> = (0..32)
        .map(|_| EioPacket::Message(text.as_str().into()))
        .collect();
    let body = payload::encode(&packets, usize::MAX).body;
    group.throughput(Throughput::Elements(packets.len() as u64));
    group.bench_function("encode_32_messages", |b| {
        b.iter(|| black_box(payload::encode(&packets, usize::MAX)));
    });
    group.bench_function("decode_32_messages", |b| {
        b.iter(|| black_box(payload::decode(body.as_bytes()).unwrap()));
    });
    group.finish();
}

criterion_group!(benches, socketio, engineio);
criterion_main!(benches);
