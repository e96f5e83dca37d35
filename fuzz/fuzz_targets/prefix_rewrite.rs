//! A route's `prefix_rewrite`: whatever the client spells, the target a backend gets stays
//! under the rewritten prefix, is a valid origin-form target, and is what routes would see.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::fuzzing::{rewrite_target, route_path};

/// (path_prefix, prefix_rewrite) pairs of each shape the config allows.
const ROUTES: [(&str, &str); 5] = [
    ("/api/", "/"),
    ("/a/b/", "/c/"),
    ("/", "/base/"),
    ("/old", "/new"),
    ("/x/", "/y/z/"),
];

fuzz_target!(|input: (u8, &str)| {
    let (pick, pq) = input;
    let (prefix, rewrite) = ROUTES[usize::from(pick) % ROUTES.len()];
    // What a request line can carry (the HTTP/1 parsers refuse the rest before routing).
    if pq
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'#')
    {
        return;
    }
    let path = pq.split_once('?').map_or(pq, |(p, _)| p);
    // Only what a route with this prefix would take.
    let Ok(routed) = route_path(path) else {
        return;
    };
    if !routed.starts_with(prefix) {
        return;
    }
    let Some(target) = rewrite_target(pq, prefix, rewrite) else {
        // Only a decoded byte that is not UTF-8 makes the routed text and the bytes part.
        assert!(routed.contains('\u{FFFD}'), "{pq:?} under {prefix} refused");
        return;
    };
    assert!(target.starts_with(rewrite), "{pq:?} -> {target:?}");
    let (sent, query) = target
        .split_once('?')
        .map_or((&*target, None), |(p, q)| (p, Some(q)));
    assert_eq!(
        query,
        pq.split_once('?').map(|(_, q)| q),
        "{pq:?} -> {target:?}"
    );
    // A backend resolving it as routes do stays under the rewrite.
    let resolved = route_path(sent).unwrap_or_else(|e| panic!("{pq:?} -> {target:?}: {e}"));
    assert!(
        resolved.starts_with(rewrite),
        "{pq:?} -> {target:?} -> {resolved:?}"
    );
    // Nothing a request line cannot carry.
    assert!(
        sent.bytes()
            .all(|b| !b.is_ascii_control() && b != b' ' && b != b'?' && b != b'#'),
        "{pq:?} -> {target:?}"
    );
});
