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
