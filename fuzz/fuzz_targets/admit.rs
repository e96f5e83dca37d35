//! A request's admission on both paths: the head as Switchyard's HTTP/1 path and as
//! pingora's read it, through the request rules of pingora's path, the routes (host,
//! prefix, rewrite, slash redirect), the HTTPS redirect, the limits, sticky cookies and
//! trusted proxies, to the backend picked. Nothing the client sends may put a byte a head
//! cannot carry into a location, a target or a cookie, and a redirect never leaves for
//! another site.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::fuzzing::{admit_native, admit_pingora, Admission};

/// Bytes a field value or request target may carry unencoded (no controls, no space).
fn visible(s: &[u8]) -> bool {
    s.iter().all(|&b| b > b' ' && b != 0x7f)
}

fn check(admission: &Admission, head: &[u8]) {
    let head = head.escape_ascii();
    match admission {
        Admission::Redirect(location) => {
            assert!(visible(location.as_bytes()), "{location:?} for {head}");
            // The slash redirect stays on this site; the HTTPS one names the request's
            // own host.
            assert!(
                (location.starts_with('/') && !location.starts_with("//"))
                    || location.starts_with("https://"),
                "{location:?} for {head}"
            );
        }
        Admission::Reject(status) => assert!((400..600).contains(status), "{status} for {head}"),
        Admission::Forward {
            target, set_cookie, ..
        } => {
            if let Some(t) = target {
                assert!(
                    t.starts_with('/') && visible(t.as_bytes()),
                    "{t:?} for {head}"
                );
            }
            if let Some(c) = set_cookie {
                assert!(
                    c.bytes().all(|b| b >= b' ' && b != 0x7f),
                    "{c:?} for {head}"
                );
            }
        }
    }
}

fuzz_target!(|input: (u8, u8, &[u8])| {
    let (listener, peer, head) = input;
    if let Some(a) = admit_native(head, listener, peer) {
        check(&a, head);
    }
    if let Some(p) = admit_pingora(head, listener, peer) {
        check(&p.admission, head);
        if let Some(origin) = &p.origin_form {
            assert!(
                visible(origin) && (origin.first() == Some(&b'/') || origin == b"*"),
                "{} for {}",
                origin.escape_ascii(),
                head.escape_ascii()
            );
            assert!(p.routable, "{}", head.escape_ascii());
        }
        if let Some(a) = &p.authority {
            assert!(visible(a.as_bytes()), "{a:?}");
        }
    }
});
