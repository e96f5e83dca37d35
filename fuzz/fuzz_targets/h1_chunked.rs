//! A chunked body followed to its end: whole, and cut into arbitrary reads, with the same
//! answer either way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::fuzzing::{BadChunk, Chunked, Framing};

/// Feeds `body` in pieces of the `cuts` sizes (the rest at once): the bytes taken up to the
/// end, and whether the body ended, or the error.
fn scan(body: &[u8], cuts: &[u8]) -> Result<(usize, bool), BadChunk> {
    let mut c = Chunked::default();
    let mut at = 0;
    let mut cuts = cuts.iter().map(|&n| usize::from(n));
    while at < body.len() {
        let piece = cuts.next().unwrap_or(body.len()).min(body.len() - at);
        let (n, done) = c.feed(&body[at..at + piece])?;
        assert!(n <= piece);
        at += n;
        if done {
            return Ok((at, true));
        }
        assert_eq!(n, piece, "a body not done takes all it is given");
    }
    Ok((at, false))
}

fuzz_target!(|input: (Vec<u8>, &[u8])| {
    let (cuts, body) = input;
    let whole = scan(body, &[]);
    assert_eq!(scan(body, &cuts), whole);
    let mut framing = Framing::Chunked(Chunked::default());
    assert_eq!(framing.feed(body), Chunked::default().feed(body));
});
