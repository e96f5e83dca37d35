//! WebSocket frame headers followed in a relayed stream: whole or in arbitrary reads, and
//! the proxy's own Close frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::tunnel::frames::{close_frame, Cursor};

fuzz_target!(|input: (Vec<u8>, &[u8], u16, String, Option<[u8; 4]>)| {
    let (cuts, stream, code, reason, mask) = input;
    let mut whole = Cursor::default();
    whole.advance(stream);

    let mut pieces = Cursor::default();
    let mut at = 0;
    let mut cuts = cuts.iter().map(|&n| usize::from(n));
    while at < stream.len() {
        let piece = cuts.next().unwrap_or(stream.len()).min(stream.len() - at);
        pieces.advance(&stream[at..at + piece]);
        at += piece;
    }
    assert_eq!(pieces.at_boundary(), whole.at_boundary());
    assert_eq!(pieces.closed(), whole.closed());

    // Frame by frame: each call ends at a boundary or takes every byte.
    let mut frames = Cursor::default();
    let mut at = 0;
    while at < stream.len() {
        let n = frames.advance_to_frame_end(&stream[at..]);
        assert!(n >= 1 && n <= stream.len() - at);
        at += n;
        assert!(frames.at_boundary() || at == stream.len());
    }
    assert_eq!(frames.at_boundary(), whole.at_boundary());

    // The Close frame the proxy writes is one whole frame.
    let frame = close_frame(code, &reason, mask);
    let mut c = Cursor::default();
    assert_eq!(c.advance_to_frame_end(&frame), frame.len());
    assert!(c.at_boundary() && c.closed());
});
