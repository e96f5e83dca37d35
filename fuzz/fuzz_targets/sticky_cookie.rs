//! The sticky cookie a client sends back: verified, and signed then verified.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::balance::CookieSigner;

fuzz_target!(|input: (&[u8], &str, &str, &str)| {
    let (key, upstream, id, value) = input;
    let signer = CookieSigner::new(key, upstream);
    if let Some(got) = signer.verify(value) {
        assert!(value.starts_with(got) && !got.is_empty());
    }
    if !id.is_empty() {
        assert_eq!(signer.verify(&signer.sign(id)), Some(id));
    }
});
