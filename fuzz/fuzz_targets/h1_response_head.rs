//! A backend's response head and the start of its body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::fuzzing::parse_response;

fuzz_target!(|input: (bool, u16, &[u8])| {
    let (request_was_head, max, buf) = input;
    let Ok(Some(mut head)) = parse_response(buf, request_was_head, usize::from(max)) else {
        return;
    };
    assert!(head.len <= buf.len() && head.len <= usize::from(max));
    assert!(head.out.starts_with(b"HTTP/1.1 ") && head.out.ends_with(b"\r\n"));
    let body = &buf[head.len..];
    if let Ok((n, _)) = head.framing.feed(body) {
        assert!(n <= body.len());
    }
});
