//! A route's `request_headers` (nginx's `proxy_set_header`): fields set on every request
//! the route sends to a backend, replacing the client's of the same name, or, with an empty
//! value, removing them. Every request path (Switchyard's HTTP/1, pingora's, upgrades) asks
//! the same two questions here: which client fields to drop, and what to write instead.

/// Whether `a` and `b` name one field for a backend: case aside, and with `_` read as `-`,
/// since CGI-style servers (PHP, WSGI, Rack) read `X_Env` and `X-Env` as the same variable.
pub fn same_field(a: &str, b: &str) -> bool {
    let fold = |c: u8| {
        if c == b'_' {
            b'-'
        } else {
            c.to_ascii_lowercase()
        }
    };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

/// One field of a route's `request_headers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetField {
    /// As configured, as it is sent.
    pub name: String,
    /// None: the client's field is removed and nothing is sent in its place.
    pub value: Option<String>,
}

/// A route's `request_headers` (a route without them has none of this: the request paths
/// then only test an `Option`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeaders {
    fields: Box<[SetField]>,
    /// `Host` is among the fields set: the client's Host still routes the request and
    /// makes its `X-Forwarded-Host`, but the backend gets this one.
    host: Option<String>,
}

impl RequestHeaders {
    /// From the validated `(name, value)` pairs of a route (an empty value removes);
    /// None when there are none.
    pub fn new(pairs: &[(String, String)]) -> Option<Self> {
        if pairs.is_empty() {
            return None;
        }
        let host = pairs
            .iter()
            .find(|(n, v)| n.eq_ignore_ascii_case("host") && !v.is_empty())
            .map(|(_, v)| v.clone());
        let fields = pairs
            .iter()
            .map(|(name, value)| SetField {
                name: name.clone(),
                value: (!value.is_empty()).then(|| value.clone()),
            })
            .collect();
        Some(Self { fields, host })
    }

    /// Whether a client's field `name` is one of ours, in any case or spelling: it is not
    /// passed on.
    pub fn replaces(&self, name: &str) -> bool {
        self.fields.iter().any(|f| same_field(&f.name, name))
    }

    /// The `Host` the backend gets instead of the client's, if one is set.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// The fields to send, `(name, value)`: those set, not those removed.
    pub fn sent(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.fields
            .iter()
            .filter_map(|f| Some((f.name.as_str(), f.value.as_deref()?)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_field_is_the_same_in_any_case_and_with_underscores() {
        assert!(same_field("X-Env", "x_env"));
        assert!(same_field("X_Env", "X-ENV"));
        assert!(!same_field("X-Env", "X-Envy"));
        assert!(!same_field("X-Env", "X.Env"));
    }

    #[test]
    fn empty_values_remove_and_host_is_kept_apart() {
        assert!(RequestHeaders::new(&[]).is_none());
        let h = RequestHeaders::new(&pairs(&[
            ("Host", "api.internal"),
            ("X-Debug", ""),
            ("X-Env", "prod"),
        ]))
        .unwrap();
        assert_eq!(h.host(), Some("api.internal"));
        assert!(h.replaces("x_debug") && h.replaces("HOST") && h.replaces("X_ENV"));
        assert!(!h.replaces("x-other"));
        let sent: Vec<_> = h.sent().collect();
        assert_eq!(sent, vec![("Host", "api.internal"), ("X-Env", "prod")]);
    }
}
