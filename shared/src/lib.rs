//! Types and helpers shared by the proxy and the chat nodes.
//!
//! # Layout
//! - [`duration`]: durations written with a unit ("250ms", "5s", "1h"), as the proxy's
//!   config file and both binaries' flags take them, bounded so that no timeout added to
//!   the clock can overflow it.

#![forbid(unsafe_code)]

pub mod duration;
