//! The PROXY protocol header (v1 text, v2 binary) before a connection's first byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::proxy_protocol::parse;

fuzz_target!(|buf: &[u8]| {
    let Ok(Some((addresses, len))) = parse(buf) else {
        return;
    };
    assert!(len > 0 && len <= buf.len());
    // Complete only once: no shorter prefix reads as a header, the header alone reads the
    // same.
    let again = parse(&buf[..len]).ok().flatten();
    assert_eq!(again, Some((addresses, len)));
    for cut in [len - 1, len / 2] {
        assert!(!matches!(parse(&buf[..cut]), Ok(Some(_))), "cut at {cut}");
    }
});
