//! Key paths (`upstreams.chat.backends[1].weight`) and finding the line they are on.
//!
//! Semantic checks run on the deserialized structs, which carry no positions. Each error
//! instead names its key path, and [`Locator`] walks the same path through a span-keeping
//! parse of the text (`toml_edit`) to find the line: the line of the key itself when it is
//! written, else of the nearest enclosing key (e.g. the `[upstreams.chat]` header for a
//! missing `backends`).

use std::fmt;

use toml_edit::{ImDocument, Item};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A path to a key or array element, displayed as `upstreams.chat.backends[1].weight`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(Vec<Seg>);

impl KeyPath {
    pub(crate) fn root() -> Self {
        KeyPath(Vec::new())
    }

    /// This path extended by a table key.
    pub(crate) fn key(&self, k: impl Into<String>) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.into()));
        p
    }

    /// This path extended by an array index.
    pub(crate) fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if n > 0 {
                        f.write_str(".")?;
                    }
                    if is_bare_key(k) {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

fn is_bare_key(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Finds lines in one config text.
pub(crate) struct Locator<'a> {
    text: &'a str,
    doc: Option<ImDocument<&'a str>>,
}

impl<'a> Locator<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Self {
            text,
            doc: ImDocument::parse(text).ok(),
        }
    }

    /// 1-based line of a byte offset.
    pub(crate) fn line_of_offset(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The key a `key = value` line sets (1-based `line`), under the table header above
    /// it (`limits.max_connections`, `listeners[1].listen`), read from the text alone: for
    /// an error the TOML parser reports with a line but no key (a number too large for
    /// any integer), when the file does not parse. None for a header or a line without
    /// `=`.
    pub(crate) fn key_at_line(&self, line: usize) -> Option<String> {
        let lines: Vec<&str> = self.text.lines().collect();
        let this = lines.get(line.checked_sub(1)?)?.trim_start();
        if this.starts_with('[') {
            return None;
        }
        let key = this.split_once('=')?.0.trim();
        // A line inside a multi-line array or inline table (`{ addr = ...`) sets no key of
        // its table: better no key than a wrong one.
        let bare = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"');
        if key.is_empty() || !key.chars().all(bare) {
            return None;
        }
        let header = lines[..line - 1]
            .iter()
            .rev()
            .map(|l| l.trim())
            .find(|l| l.starts_with('['));
        let Some(header) = header else {
            return Some(key.to_owned());
        };
        let table = |h: &str| h.split('#').next().unwrap_or("").trim().to_owned();
        let prefix = match header.strip_prefix("[[") {
            Some(rest) => {
                let name = table(rest).trim_end_matches(']').trim().to_owned();
                // The array's index: how many headers of that name come before, from 0.
                let index = lines[..line - 1]
                    .iter()
                    .filter(|l| {
                        l.trim()
                            .strip_prefix("[[")
                            .is_some_and(|r| table(r).trim_end_matches(']').trim() == name)
                    })
                    .count()
                    .checked_sub(1)?;
                format!("{name}[{index}]")
            }
            None => table(&header[1..]).trim_end_matches(']').trim().to_owned(),
        };
        Some(format!("{prefix}.{key}"))
    }

    /// Line of the deepest part of `path` present in the file.
    pub(crate) fn line_of_path(&self, path: &KeyPath) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut item: &Item = doc.as_item();
        let mut best: Option<usize> = None;
        for seg in &path.0 {
            let (next, span) = match seg {
                Seg::Key(k) => {
                    let Some((key, value)) = item.as_table_like().and_then(|t| t.get_key_value(k))
                    else {
                        break;
                    };
                    (value, key.span().or_else(|| value.span()))
                }
                Seg::Index(i) => {
                    let Some(value) = item.get(*i) else {
                        break;
                    };
                    (value, value.span())
                }
            };
            if let Some(span) = span {
                best = Some(span.start);
            }
            item = next;
        }
        best.map(|off| self.line_of_offset(off))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[server]\nthreads = 3\n\n[upstreams.chat]\nbackends = [\n  { addr = \"a\" },\n  { addr = \"b\", weight = 0 },\n]\n\n[[routes]]\nupstream = \"x\"\n[[routes]]\nupstream = \"y\"\n";

    #[test]
    fn displays_paths() {
        let p = KeyPath::root()
            .key("upstreams")
            .key("chat")
            .key("backends")
            .index(1)
            .key("weight");
        assert_eq!(p.to_string(), "upstreams.chat.backends[1].weight");
        assert_eq!(
            KeyPath::root().key("upstreams").key("a.b").to_string(),
            "upstreams.\"a.b\""
        );
    }

    #[test]
    fn finds_lines_of_keys_elements_and_nearest_parent() {
        let l = Locator::new(TEXT);
        let up = KeyPath::root().key("upstreams").key("chat");
        assert_eq!(
            l.line_of_path(&KeyPath::root().key("server").key("threads")),
            Some(2)
        );
        assert_eq!(l.line_of_path(&up), Some(4));
        assert_eq!(l.line_of_path(&up.key("backends").index(1)), Some(7));
        assert_eq!(
            l.line_of_path(&up.key("backends").index(1).key("weight")),
            Some(7)
        );
        // Missing key: the nearest present parent.
        assert_eq!(l.line_of_path(&up.key("health").key("path")), Some(4));
        assert_eq!(
            l.line_of_path(&KeyPath::root().key("routes").index(1).key("upstream")),
            Some(13)
        );
        assert_eq!(l.line_of_path(&KeyPath::root().key("listeners")), None);
    }
}
