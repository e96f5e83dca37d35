//! `expect_status` of an HTTP health check: the answers that pass, written as codes (`200`)
//! and classes (`"2xx"`), one or a list (`expect_status = [200, "3xx"]`).

use std::fmt;

use super::error::ErrorKind;

/// The statuses that pass an HTTP check, as inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet(Vec<(u16, u16)>);

impl Default for StatusSet {
    /// Any 2xx or 3xx, as nginx's and HAProxy's checks pass by default: a backend behind a
    /// login redirect is still up.
    fn default() -> Self {
        StatusSet(vec![(200, 299), (300, 399)])
    }
}

impl StatusSet {
    /// Whether `code` passes.
    pub fn contains(&self, code: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&code))
    }

    /// From the value of `expect_status`; each error comes with the index of the entry it
    /// is about (None: the value as a whole).
    pub(crate) fn from_toml(value: &toml::Value) -> Result<Self, Vec<(Option<usize>, ErrorKind)>> {
        let entries = match value {
            toml::Value::Array(entries) => entries,
            one => {
                return entry(one)
                    .map(|r| StatusSet(vec![r]))
                    .map_err(|e| vec![(None, e)])
            }
        };
        if entries.is_empty() {
            return Err(vec![(None, ErrorKind::NoStatus)]);
        }
        let mut ranges = Vec::with_capacity(entries.len());
        let mut errors = Vec::new();
        for (i, v) in entries.iter().enumerate() {
            match entry(v) {
                Ok(r) => ranges.push(r),
                Err(e) => errors.push((Some(i), e)),
            }
        }
        match errors.is_empty() {
            true => Ok(StatusSet(ranges)),
            false => Err(errors),
        }
    }
}

/// One entry: a code from 100 to 599 (a number, or a string of one), or a class `"1xx"` to
/// `"5xx"` (either case).
fn entry(value: &toml::Value) -> Result<(u16, u16), ErrorKind> {
    let invalid = || ErrorKind::InvalidStatus(value.to_string());
    match value {
        toml::Value::Integer(code) => match u16::try_from(*code) {
            Ok(code) if (100..=599).contains(&code) => Ok((code, code)),
            _ => Err(invalid()),
        },
        toml::Value::String(class) => match class.as_bytes() {
            [d @ b'1'..=b'5', x, y]
                if x.eq_ignore_ascii_case(&b'x') && y.eq_ignore_ascii_case(&b'x') =>
            {
                let lo = u16::from(d - b'0') * 100;
                Ok((lo, lo + 99))
            }
            _ => match class.parse::<u16>() {
                Ok(code) if (100..=599).contains(&code) => Ok((code, code)),
                _ => Err(invalid()),
            },
        },
        _ => Err(invalid()),
    }
}

impl fmt::Display for StatusSet {
    /// `200, 204, 3xx`, as it could be written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, &(lo, hi)) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(", ")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{}xx", lo / 100)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn set(toml_value: &str) -> Result<StatusSet, Vec<(Option<usize>, ErrorKind)>> {
        let doc: toml::Table = toml::from_str(&format!("v = {toml_value}")).unwrap();
        StatusSet::from_toml(&doc["v"])
    }

    #[test]
    fn the_default_passes_2xx_and_3xx_only() {
        let d = StatusSet::default();
        assert!([200, 204, 299, 301, 399].iter().all(|&c| d.contains(c)));
        assert!(![100, 199, 400, 404, 503].iter().any(|&c| d.contains(c)));
        assert_eq!(d.to_string(), "2xx, 3xx");
    }

    #[test]
    fn codes_and_classes() {
        let s = set(r#"[200, 204, "3XX"]"#).unwrap();
        assert!(s.contains(200) && s.contains(204) && s.contains(302));
        assert!(!s.contains(201) && !s.contains(400));
        assert_eq!(s.to_string(), "200, 204, 3xx");
        assert_eq!(set("200").unwrap().to_string(), "200");
        assert_eq!(set(r#"["204"]"#).unwrap().to_string(), "204");
        assert_eq!(set(r#""5xx""#).unwrap().to_string(), "5xx");
    }

    #[test]
    fn refused() {
        assert!(matches!(
            set("[]").unwrap_err()[..],
            [(None, ErrorKind::NoStatus)]
        ));
        for (v, at) in [
            ("99", None),
            ("600", None),
            ("-200", None),
            (r#""2000""#, None),
            (r#""6xx""#, None),
            (r#""2x""#, None),
            ("2.0", None),
            ("[200, 1000]", Some(1)),
            (r#"[[200]]"#, Some(0)),
        ] {
            let e = set(v).unwrap_err();
            assert!(
                matches!(e[..], [(i, ErrorKind::InvalidStatus(_))] if i == at),
                "{v}"
            );
        }
    }
}
