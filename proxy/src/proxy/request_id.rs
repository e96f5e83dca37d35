//! `X-Request-Id` (`[server] request_id = true`): a fresh id for every request, sent to the
//! backend, set on the answer (the backend's or the proxy's own) and written to the access
//! log, so that a line of the backend's log, a user's report of an error and the proxy's
//! access log can be matched (nginx's `$request_id`, Envoy's `x-request-id`).
//!
//! A client's own `X-Request-Id` is replaced, as an edge Envoy replaces it: the proxy is
//! the edge, and an id a client chooses could collide with another request's, or make a
//! log line seem to belong to a request it does not.

use std::borrow::Cow;
use std::fmt;

/// The field's name, lowercase.
pub const HEADER: &str = "x-request-id";

/// Whether a client's field `name` is `X-Request-Id` in any case, with `_` for some `-`
/// too (`X_Request_Id`): with `[server] request_id` all of them are dropped, since
/// CGI-style servers (PHP, WSGI, Rack) read the underscore spelling as the same variable,
/// and the client's id would reach the backend beside the proxy's (as the forwarded
/// fields' underscore spellings would, see `is_forwarded_field`).
pub fn is_id_field(name: &str) -> bool {
    super::request_headers::same_field(HEADER, name)
}

/// 128 random bits as 32 lowercase hex digits, as nginx's `$request_id`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestId([u8; 32]);

impl RequestId {
    pub fn new() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bits: u128 = rand::random();
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = HEX[((bits >> (124 - 4 * i)) & 0xf) as usize];
        }
        Self(out)
    }

    pub fn as_str(&self) -> &str {
        // Hex digits only: always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The listener's `response_headers` plus the request's id, if it has one: the fields of
/// every answer to the request. Borrowed as they are when there is no id: always inlined,
/// so that this costs a branch per request with `request_id` off.
#[inline(always)]
pub fn answer_fields<'a>(
    added: &'a [(String, String)],
    id: Option<&RequestId>,
) -> Cow<'a, [(String, String)]> {
    match id {
        None => Cow::Borrowed(added),
        Some(id) => Cow::Owned(with_id(added, id)),
    }
}

fn with_id(added: &[(String, String)], id: &RequestId) -> Vec<(String, String)> {
    let mut fields = Vec::with_capacity(added.len() + 1);
    fields.extend(
        added
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case(HEADER))
            .cloned(),
    );
    fields.push((HEADER.to_owned(), id.as_str().to_owned()));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_hex_digits_and_differ() {
        let a = RequestId::new();
        let b = RequestId::new();
        assert_eq!(a.as_str().len(), 32);
        assert!(a
            .as_str()
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }

    #[test]
    fn id_field_in_any_spelling() {
        for name in [
            "x-request-id",
            "X-Request-Id",
            "X_REQUEST_ID",
            "x-request_id",
        ] {
            assert!(is_id_field(name), "{name}");
        }
        for name in [
            "x-request-ids",
            "x-requestid",
            "x-correlation-id",
            "x request id",
        ] {
            assert!(!is_id_field(name), "{name}");
        }
    }

    #[test]
    fn answer_fields_add_the_id_last_and_once() {
        let added = vec![
            ("x-request-id".to_owned(), "operator's".to_owned()),
            (
                "strict-transport-security".to_owned(),
                "max-age=1".to_owned(),
            ),
        ];
        assert_eq!(answer_fields(&added, None).as_ref(), added.as_slice());
        let id = RequestId::new();
        let fields = answer_fields(&added, Some(&id));
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["strict-transport-security", "x-request-id"]);
        assert_eq!(fields[1].1, id.as_str());
    }
}
