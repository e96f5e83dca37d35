//! What `switchyard up` prints: one line at a time, prefixed with the component's name
//! (`[proxy] …`, `[n1] …`, `[switchyard] …`). Write errors (a closed pipe after
//! `switchyard up | head`) are ignored rather than panicking the supervisor.

use std::io::Write as _;

/// Prints `[name] text` on stdout.
pub fn line(name: &str, text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "[{name}] {text}");
    let _ = out.flush();
}

/// Prints `[switchyard] text`: the supervisor's own messages.
pub fn say(text: &str) {
    line("switchyard", text);
}

/// Prints text as is (the banner).
pub fn raw(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}
