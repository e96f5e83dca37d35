//! The chat's checks of what clients send: display and room names, message text, history
//! cursors, token shapes. A name or room that passes passes again unchanged.
#![no_main]

use chat_node::chat::validate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, u16)| {
    let (s, max_chars) = input;
    if let Ok(name) = validate::name(Some(s)) {
        assert_eq!(validate::name(Some(&name)), Ok(name.clone()));
    }
    if let Ok(room) = validate::room(s) {
        assert_eq!(validate::room(&room).ok(), Some(room.clone()));
    }
    let _ = validate::text(s, usize::from(max_chars));
    if let Ok((ms, seq)) = validate::message_id(s) {
        assert_eq!(
            validate::message_id(&format!("{ms}-{seq}")).ok(),
            Some((ms, seq))
        );
    }
    let _ = validate::secret_shape(s);
});
