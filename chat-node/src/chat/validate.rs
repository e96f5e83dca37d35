//! Checks of what clients send: display names, room names, message text, history cursors
//! and identity tokens. Pure functions, no I/O.

use icu_properties::props::GeneralCategory;
use icu_properties::CodePointMapData;
use unicode_normalization::UnicodeNormalization;

use super::error::ChatError;

/// The longest display name, in characters after trimming.
pub const MAX_NAME_CHARS: usize = 32;
/// The longest room name, in characters after trimming.
pub const MAX_ROOM_CHARS: usize = 64;
/// The longest token or invite accepted before any look-up (ours are 43 characters).
pub const MAX_SECRET_CHARS: usize = 128;

/// Why a display name is refused; the text is the CONNECT_ERROR message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// No auth payload, or no string `name` in it.
    #[error("name required")]
    Missing,
    /// Only white space.
    #[error("name is empty")]
    Empty,
    /// More than [`MAX_NAME_CHARS`] characters.
    #[error("name is longer than 32 characters")]
    TooLong,
    /// A control or invisible formatting character.
    #[error("name contains invisible characters")]
    Invisible,
    /// Letters that imitate others: Latin mixed with Greek or Cyrillic, full-width or
    /// mathematical styled letters.
    #[error("name mixes look-alike characters")]
    LookAlike,
}

/// The general category of `c`.
fn category(c: char) -> GeneralCategory {
    CodePointMapData::<GeneralCategory>::new().get(c)
}

/// Whether `c` shows nothing, or nothing but a space: control characters, white space
/// other than the plain space, every format character (zero-width spaces and joiners,
/// direction marks, the BOM, tags, the Arabic number signs), the characters that render
/// blank (Hangul and Braille blanks, variation selectors), private-use and unassigned code
/// points (no font shows them alike) — each would let two names look alike.
fn invisible(c: char) -> bool {
    c.is_control()
        || matches!(
            category(c),
            GeneralCategory::Format | GeneralCategory::PrivateUse | GeneralCategory::Unassigned
        )
        || (c.is_whitespace() && c != ' ')
        || matches!(c, '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}'
            | '\u{17B4}' | '\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}'
            | '\u{2800}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

/// Whether `text` has letters made to imitate others: Latin mixed with Greek or Cyrillic
/// in one word or name (`lоbby` with a Cyrillic `о`), full-width forms (`ｌｏｂｂｙ`) and
/// mathematical styled letters (`𝐥𝐨𝐛𝐛𝐲`). Single-script names in any language pass.
fn look_alike(text: &str) -> bool {
    let (mut latin, mut greek, mut cyrillic) = (false, false, false);
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        match c {
            '\u{FF01}'..='\u{FF5E}' | '\u{1D400}'..='\u{1D7FF}' => return true,
            'a'..='z' | 'A'..='Z' | '\u{00C0}'..='\u{024F}' | '\u{1E00}'..='\u{1EFF}' => {
                latin = true
            }
            '\u{0370}'..='\u{03FF}' | '\u{1F00}'..='\u{1FFF}' => greek = true,
            '\u{0400}'..='\u{052F}' => cyrillic = true,
            _ => {}
        }
    }
    u8::from(latin) + u8::from(greek) + u8::from(cyrillic) > 1
}

/// A display name: trimmed, runs of spaces made one, 1–32 characters, none of them
/// invisible, no look-alike letters.
pub fn name(raw: Option<&str>) -> Result<String, NameError> {
    // The length is the stored name's: counted after runs of spaces become one.
    let name = raw
        .ok_or(NameError::Missing)?
        .trim()
        .split(' ')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(NameError::TooLong);
    }
    if name.chars().any(invisible) {
        return Err(NameError::Invisible);
    }
    if look_alike(&name) {
        return Err(NameError::LookAlike);
    }
    Ok(name)
}

/// A room name: trimmed, 1–64 characters, each a letter or digit (any script), a space,
/// `-`, `_` or `.`; no two spaces in a row, nothing invisible, no look-alike letters (a
/// room must not pass for another in the room list), no stray marks.
pub fn room(raw: &str) -> Result<String, ChatError> {
    let room = raw.trim();
    let chars = room.chars().count();
    // Marks too (a virama is neither a letter nor a digit), where they belong to a letter.
    let allowed = |c: char| {
        (c.is_alphanumeric() && !invisible(c)) || is_mark(c) || matches!(c, ' ' | '-' | '_' | '.')
    };
    if chars == 0
        || chars > MAX_ROOM_CHARS
        || !room.chars().all(allowed)
        || room.contains("  ")
        || look_alike(room)
        || stray_mark(room)
    {
        return Err(ChatError::InvalidRoomName);
    }
    Ok(room.to_owned())
}

/// Whether `c` is a combining mark (Mn, Mc, Me).
fn is_mark(c: char) -> bool {
    matches!(
        category(c),
        GeneralCategory::NonspacingMark
            | GeneralCategory::EnclosingMark
            | GeneralCategory::SpacingMark
    )
}

/// Whether `room` has a combining mark that is not part of a letter: one with nothing
/// before it, or one left after a Latin, Greek or Cyrillic letter (or a digit, a space,
/// `-`, `_`, `.`) once composed (NFC). Those scripts write every letter of their
/// languages precomposed (`é`, `ῳ`, `й`); a mark they do not compose with, such as
/// `lobby` + U+0345, renders as a dot or nothing and lets a name pass for another, which
/// the confusable skeleton keeps apart. Scripts whose letters take marks (Devanagari,
/// Thai, Tibetan) keep them after their letters.
fn stray_mark(room: &str) -> bool {
    let mut before: Option<char> = None;
    for c in room.nfc() {
        let mark = is_mark(c);
        if mark {
            let composes_only = before.is_none_or(|b| {
                b.is_ascii()
                    || matches!(b, '\u{00C0}'..='\u{024F}' | '\u{1E00}'..='\u{1EFF}'
                        | '\u{0370}'..='\u{03FF}' | '\u{1F00}'..='\u{1FFF}'
                        | '\u{0400}'..='\u{052F}')
            });
            if composes_only {
                return true;
            }
        }
        // A run of marks belongs to the letter before it.
        if !mark {
            before = Some(c);
        }
    }
    false
}

/// What `room` looks like: its confusable skeleton (Unicode TR39 §4), the same for two
/// names a reader cannot tell apart in the room list (`pop` and Cyrillic `рор`, `ABE` and
/// Greek `ΑΒΕ`, `lobby` and `1obby`, `m` and `rn`), each in a single script, which
/// [`room`]'s mixed-script check lets through. The store keeps one room per look.
pub fn look(room: &str) -> String {
    unicode_security::confusable_detection::skeleton(room).collect()
}

/// Message text: 1 to `max_chars` characters, something visible among them (not only
/// white space, control or invisible characters). Kept as sent.
pub fn text(raw: &str, max_chars: usize) -> Result<&str, ChatError> {
    if raw.chars().all(|c| c.is_whitespace() || invisible(c)) {
        return Err(ChatError::EmptyText);
    }
    if raw.chars().count() > max_chars {
        return Err(ChatError::TextTooLong);
    }
    Ok(raw)
}

/// A history cursor: a message id, `<milliseconds>-<sequence>` as Redis stream ids are.
pub fn message_id(raw: &str) -> Result<(u64, u64), ChatError> {
    let (ms, seq) = raw.split_once('-').ok_or(ChatError::InvalidCursor)?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(ms) || !digits(seq) {
        return Err(ChatError::InvalidCursor);
    }
    match (ms.parse(), seq.parse()) {
        (Ok(ms), Ok(seq)) => Ok((ms, seq)),
        _ => Err(ChatError::InvalidCursor),
    }
}

/// Whether `raw` could be a token or invite we issued (URL-safe base64, bounded length):
/// anything else is never looked up.
pub fn secret_shape(raw: &str) -> bool {
    !raw.is_empty()
        && raw.len() <= MAX_SECRET_CHARS
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rooms_that_cannot_be_told_apart_look_the_same() {
        for (a, b) in [
            ("pop", "\u{440}\u{43e}\u{440}"),
            ("ABE", "\u{391}\u{392}\u{395}"),
            ("lobby", "1obby"),
            ("modern", "rnodern"),
            ("caf\u{E9}", "cafe\u{0301}"),
        ] {
            assert_eq!(look(a), look(b), "{a} / {b}");
        }
        for (a, b) in [
            ("pop", "pip"),
            ("ops", "ops-2"),
            ("lobby", "Lobby"),
            ("a b", "a_b"),
        ] {
            assert_ne!(look(a), look(b), "{a} / {b}");
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(name(Some("  alice ")).unwrap(), "alice");
        assert_eq!(name(Some("Zoë 李")).unwrap(), "Zoë 李");
        assert_eq!(name(None), Err(NameError::Missing));
        assert_eq!(name(Some(" \t ")), Err(NameError::Empty));
        assert_eq!(name(Some("")), Err(NameError::Empty));
        assert_eq!(name(Some(&"é".repeat(32))).unwrap().chars().count(), 32);
        assert_eq!(name(Some(&"é".repeat(33))), Err(NameError::TooLong));
        // Runs of spaces count as the one they become.
        let spaced = format!("a{}b", " ".repeat(40));
        assert_eq!(name(Some(&spaced)).unwrap(), "a b");
        let long = format!("{}{}{}", "é".repeat(15), " ".repeat(9), "é".repeat(16));
        assert_eq!(name(Some(&long)).unwrap().chars().count(), 32);
        assert_eq!(name(Some("al\u{0}ice")), Err(NameError::Invisible));
        assert_eq!(name(Some("al\u{200B}ice")), Err(NameError::Invisible));
        assert_eq!(name(Some("a\nb")), Err(NameError::Invisible));
        for blank in [
            "alice\u{3164}",
            "\u{3164}",
            "\u{2800}",
            "a\u{034F}b",
            "alice\u{E0020}",
            "\u{115F}\u{1160}",
            "a\u{2003}b",
            "a\u{FE0F}",
            // Format characters the list did not name, private use, unassigned.
            "alice\u{1BCA1}",
            "alice\u{13430}",
            "\u{0600}alice",
            "alice\u{E000}",
            "alice\u{0378}",
        ] {
            assert_eq!(name(Some(blank)), Err(NameError::Invisible), "{blank:?}");
        }
        assert_eq!(name(Some("a   b")).unwrap(), "a b");
        for spoof in ["\u{0430}lice", "ｌｏｂｂｙ", "\u{1D41A}lice", "p\u{03B1}ul"] {
            assert_eq!(name(Some(spoof)), Err(NameError::LookAlike), "{spoof:?}");
        }
        for real in ["Алиса", "Ζωή", "Zoë", "José María", "李小龍", "Jürgen 2"] {
            assert!(name(Some(real)).is_ok(), "{real:?}");
        }
    }

    #[test]
    fn room_names_allow_letters_digits_and_a_few_marks() {
        assert_eq!(room(" general ").unwrap(), "general");
        assert_eq!(room("Team-2_b.x y").unwrap(), "Team-2_b.x y");
        assert_eq!(room("café").unwrap(), "café");
        assert_eq!(room(&"r".repeat(64)).unwrap().len(), 64);
        for bad in [
            "",
            "   ",
            "a/b",
            "a:b",
            "<script>",
            "tab\there",
            "a\u{200B}b",
            "lobby\u{3164}",
            "\u{3164}",
            "l\u{043E}bby",
            "ｌｏｂｂｙ",
            "a  b",
        ] {
            assert_eq!(room(bad), Err(ChatError::InvalidRoomName), "{bad:?}");
        }
        assert_eq!(room(&"r".repeat(65)), Err(ChatError::InvalidRoomName));
        // Marks that compose with no letter: after Latin, Greek or Cyrillic, or first.
        for stray in [
            "lobby\u{0345}",
            "TEAM\u{0345}",
            "\u{0F71}",
            "a\u{0301}\u{0301}",
            "ops-\u{0301}",
            "\u{0434}\u{0488}",
        ] {
            assert_eq!(room(stray), Err(ChatError::InvalidRoomName), "{stray:?}");
        }
        // Marks that are part of letters: precomposed, or of a script whose letters take
        // them.
        for real in [
            "caf\u{E9}",
            "cafe\u{0301}",
            "\u{939}\u{93F}\u{928}\u{94D}\u{926}\u{940}",
            "\u{E20}\u{E32}\u{E29}\u{E32}\u{E44}\u{E17}\u{E22}",
            "\u{F56}\u{F7C}\u{F51}",
            "ti\u{1EBF}ng vi\u{1EC7}t",
        ] {
            assert!(room(real).is_ok(), "{real:?}");
        }
    }

    #[test]
    fn text_is_bounded_in_characters_not_bytes() {
        assert_eq!(text(" hi ", 10).unwrap(), " hi ");
        assert_eq!(text(&"é".repeat(10), 10).unwrap().chars().count(), 10);
        assert_eq!(text(&"é".repeat(11), 10), Err(ChatError::TextTooLong));
        assert_eq!(text("", 10), Err(ChatError::EmptyText));
        assert_eq!(text(" \n ", 10), Err(ChatError::EmptyText));
        for blank in ["\u{200B}\u{200B}", "\0\0", " \u{FEFF}\n", "\u{2060}"] {
            assert_eq!(text(blank, 10), Err(ChatError::EmptyText), "{blank:?}");
        }
        assert_eq!(text("a\u{200B}", 10).unwrap(), "a\u{200B}");
    }

    #[test]
    fn cursors_are_stream_ids() {
        assert_eq!(
            message_id("1732751234567-0").unwrap(),
            (1_732_751_234_567, 0)
        );
        for bad in [
            "",
            "1",
            "-1",
            "1-",
            "a-1",
            "1-1-1",
            "+",
            "(1-0",
            "99999999999999999999999-0",
        ] {
            assert_eq!(message_id(bad), Err(ChatError::InvalidCursor), "{bad:?}");
        }
    }

    #[test]
    fn secrets_have_a_shape() {
        assert!(secret_shape("abc-_XYZ09"));
        assert!(!secret_shape(""));
        assert!(!secret_shape("a b"));
        assert!(!secret_shape("syd:chat:x"));
        assert!(!secret_shape(&"a".repeat(129)));
    }
}
