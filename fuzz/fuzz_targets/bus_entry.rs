//! A broadcast, leave or join entry read from the bus (Redis): decoded, and encoded back
//! to the same bytes.
#![no_main]

use bytes::Bytes;
use chat_node::cluster::entry::{is_join, is_leave, origin, Entry, Join, Leave};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let data = Bytes::copy_from_slice(data);
    let _ = origin(&data);
    if is_leave(&data) {
        if let Ok(leave) = Leave::decode(&data) {
            assert_eq!(leave.encode().ok(), Some(data.clone()));
        }
    } else if is_join(&data) {
        if let Ok(join) = Join::decode(&data) {
            assert_eq!(join.encode().ok(), Some(data.clone()));
        }
    } else if let Ok(entry) = Entry::decode(&data) {
        assert_eq!(origin(&data).ok(), Some((entry.instance, entry.seq)));
        assert_eq!(entry.encode().ok(), Some(data.clone()));
    }
});
