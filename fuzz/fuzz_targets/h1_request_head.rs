//! A client's request head on the HTTP/1 path: parsed, rewritten for the backend, or handed
//! to pingora and measured there.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::fuzzing::{self, Framing, RequestHead};

fuzz_target!(|buf: &[u8]| {
    if let RequestHead::Ready {
        len,
        content_length,
        upstream,
    } = fuzzing::request_head(buf)
    {
        assert!(len <= buf.len());
        // The head the backend gets must be read as one complete head with the same body
        // length, by this path's parser and by the framing pingora's path applies: anything
        // else would let the client's bytes frame the backend's requests differently.
        // (The forwarded fields may take it past the fields this path takes: a handoff.)
        match fuzzing::request_head(&upstream) {
            RequestHead::Ready {
                len: again,
                content_length: n,
                ..
            } => {
                assert_eq!(again, upstream.len());
                assert_eq!(n, content_length);
            }
            RequestHead::Handoff => {}
            other => panic!(
                "the upstream head does not parse: {other:?}\n{}",
                upstream.escape_ascii()
            ),
        }
        let framing = fuzzing::handoff_framing(&upstream);
        let want = match content_length {
            0 => Framing::Empty,
            n => Framing::Length(n),
        };
        assert_eq!(framing, Ok((upstream.len(), want)));
    }
    // Whatever the HTTP/1 path made of it, the handoff's measurements must not panic either.
    if let Ok((len, _)) = fuzzing::handoff_framing(buf) {
        assert!(len <= buf.len());
    }
    if let Some(rewritten) = fuzzing::host_from_target(buf) {
        assert!(fuzzing::host_from_target(&rewritten).is_none());
    }
    for limit in [0, 1, 16, buf.len() / 2] {
        let status = fuzzing::oversized(buf, limit);
        assert!(status == 414 || status == 431);
    }
});
