//! The path routes match (percent-decoded, slashes merged, dot-segments resolved) and the
//! Host check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::fuzzing::{route_path, valid_host};

fuzz_target!(|s: &str| {
    let _ = valid_host(s);
    let Ok(path) = route_path(s) else {
        return;
    };
    if !s.starts_with('/') {
        return;
    }
    // What routes see has no dot-segment and no empty segment left to resolve, so a route
    // for `/api` cannot be reached, or escaped, by spelling.
    assert!(path.starts_with('/'), "{s:?} -> {path:?}");
    assert!(!path.contains("//"), "{s:?} -> {path:?}");
    assert!(
        !path.split('/').any(|seg| seg == "." || seg == ".."),
        "{s:?} -> {path:?}"
    );
    if !path.contains('%') {
        assert_eq!(route_path(&path).as_deref(), Ok(&*path), "{s:?}");
    }
});
