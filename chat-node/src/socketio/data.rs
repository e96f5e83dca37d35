//! The arguments of Socket.IO events and acks: JSON values whose leaves may also be binary.
//!
//! On the wire each binary leaf is a placeholder `{"_placeholder":true,"num":N}` in the JSON
//! and the bytes travel as attachment `N` after the text packet. [`Data`] holds the bytes in
//! place, so applications never see placeholders. Object keys keep the order they were sent
//! in, so that an echo or a broadcast returns a client's objects unchanged.

use std::cell::RefCell;
use std::fmt;

use bytes::Bytes;
use indexmap::IndexMap;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// A JSON object of [`Data`], in the order its keys were sent.
pub type Object = IndexMap<String, Data>;

/// The key that marks a placeholder object.
const PLACEHOLDER_KEY: &str = "_placeholder";
/// The key of a placeholder's attachment index.
const NUM_KEY: &str = "num";

/// One argument of an event or an ack: JSON, with binary leaves.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Data {
    /// `null`.
    #[default]
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A JSON number.
    Number(serde_json::Number),
    /// A JSON string.
    String(String),
    /// Binary data (a `Buffer` or `ArrayBuffer` on the JavaScript side).
    Binary(Bytes),
    /// A JSON array.
    Array(Vec<Data>),
    /// A JSON object.
    Object(Object),
}

/// Binary data where only JSON can go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("binary data has no JSON representation")]
pub struct BinaryNotJson;

/// A placeholder whose attachment index is missing, not a number or out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid binary placeholder (attachments: {attachments})")]
pub struct InvalidPlaceholder {
    /// How many attachments the packet announced.
    pub attachments: usize,
}

impl Data {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes, if this is binary.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Self::Binary(b) => Some(b),
            _ => None,
        }
    }

    /// Whether there is binary data anywhere in this value.
    pub fn has_binary(&self) -> bool {
        match self {
            Self::Binary(_) => true,
            Self::Array(items) => items.iter().any(Self::has_binary),
            Self::Object(map) => map.values().any(Self::has_binary),
            _ => false,
        }
    }

    /// How many binary leaves this value has: the attachments it needs on the wire.
    pub fn count_binary(&self) -> usize {
        match self {
            Self::Binary(_) => 1,
            Self::Array(items) => items.iter().map(Self::count_binary).sum(),
            Self::Object(map) => map.values().map(Self::count_binary).sum(),
            _ => 0,
        }
    }

    /// `Some(index)` if this is a placeholder object, with `Err` for a malformed index.
    fn placeholder(&self, attachments: usize) -> Option<Result<usize, InvalidPlaceholder>> {
        let Self::Object(map) = self else {
            return None;
        };
        if map.get(PLACEHOLDER_KEY) != Some(&Self::Bool(true)) {
            return None;
        }
        let num = match map.get(NUM_KEY) {
            Some(Self::Number(n)) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
            _ => None,
        };
        Some(
            num.filter(|&n| n < attachments)
                .ok_or(InvalidPlaceholder { attachments }),
        )
    }

    /// Checks that every placeholder refers to one of `attachments` attachments.
    pub(crate) fn check_placeholders(&self, attachments: usize) -> Result<(), InvalidPlaceholder> {
        if let Some(num) = self.placeholder(attachments) {
            return num.map(drop);
        }
        match self {
            Self::Array(items) => items
                .iter()
                .try_for_each(|d| d.check_placeholders(attachments)),
            Self::Object(map) => map
                .values()
                .try_for_each(|d| d.check_placeholders(attachments)),
            _ => Ok(()),
        }
    }

    /// Replaces every placeholder with its attachment.
    pub(crate) fn fill_placeholders(
        &mut self,
        attachments: &[Bytes],
    ) -> Result<(), InvalidPlaceholder> {
        if let Some(num) = self.placeholder(attachments.len()) {
            let bytes = num
                .ok()
                .and_then(|n| attachments.get(n))
                .ok_or(InvalidPlaceholder {
                    attachments: attachments.len(),
                })?;
            *self = Self::Binary(bytes.clone());
            return Ok(());
        }
        match self {
            Self::Array(items) => items
                .iter_mut()
                .try_for_each(|d| d.fill_placeholders(attachments)),
            Self::Object(map) => map
                .values_mut()
                .try_for_each(|d| d.fill_placeholders(attachments)),
            _ => Ok(()),
        }
    }
}

impl From<bool> for Data {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

impl From<i64> for Data {
    fn from(v: i64) -> Self {
        Self::Number(v.into())
    }
}

impl From<u64> for Data {
    fn from(v: u64) -> Self {
        Self::Number(v.into())
    }
}

impl From<f64> for Data {
    /// A non-finite float becomes `null`, as `JSON.stringify` does.
    fn from(v: f64) -> Self {
        serde_json::Number::from_f64(v).map_or(Self::Null, Self::Number)
    }
}

impl From<&str> for Data {
    fn from(v: &str) -> Self {
        Self::String(v.to_owned())
    }
}

impl From<String> for Data {
    fn from(v: String) -> Self {
        Self::String(v)
    }
}

impl From<Bytes> for Data {
    fn from(v: Bytes) -> Self {
        Self::Binary(v)
    }
}

impl From<Vec<u8>> for Data {
    fn from(v: Vec<u8>) -> Self {
        Self::Binary(v.into())
    }
}

impl From<Vec<Data>> for Data {
    fn from(v: Vec<Data>) -> Self {
        Self::Array(v)
    }
}

impl From<Object> for Data {
    fn from(v: Object) -> Self {
        Self::Object(v)
    }
}

impl From<serde_json::Value> for Data {
    fn from(v: serde_json::Value) -> Self {
        use serde_json::Value;
        match v {
            Value::Null => Self::Null,
            Value::Bool(b) => Self::Bool(b),
            Value::Number(n) => Self::Number(n),
            Value::String(s) => Self::String(s),
            Value::Array(items) => Self::Array(items.into_iter().map(Self::from).collect()),
            Value::Object(map) => {
                Self::Object(map.into_iter().map(|(k, v)| (k, Self::from(v))).collect())
            }
        }
    }
}

impl TryFrom<Data> for serde_json::Value {
    type Error = BinaryNotJson;

    fn try_from(d: Data) -> Result<Self, BinaryNotJson> {
        Ok(match d {
            Data::Null => Self::Null,
            Data::Bool(b) => Self::Bool(b),
            Data::Number(n) => Self::Number(n),
            Data::String(s) => Self::String(s),
            Data::Binary(_) => return Err(BinaryNotJson),
            Data::Array(items) => Self::Array(
                items
                    .into_iter()
                    .map(Self::try_from)
                    .collect::<Result<_, _>>()?,
            ),
            Data::Object(map) => Self::Object(
                map.into_iter()
                    .map(|(k, v)| Self::try_from(v).map(|v| (k, v)))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

/// Parses JSON (no placeholders are resolved here: that needs the attachments).
impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DataVisitor)
    }
}

struct DataVisitor;

impl<'de> Visitor<'de> for DataVisitor {
    type Value = Data;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Data, E> {
        Ok(Data::Null)
    }

    fn visit_none<E>(self) -> Result<Data, E> {
        Ok(Data::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Data, D::Error> {
        Data::deserialize(d)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Data, E> {
        Ok(Data::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Data, E> {
        Ok(Data::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Data, E> {
        Ok(Data::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Data, E> {
        serde_json::Number::from_f64(v)
            .map(Data::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Data, E> {
        Ok(Data::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Data, E> {
        Ok(Data::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Data, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Data::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Data, A::Error> {
        let mut map = Object::new();
        // A repeated key keeps its first position and its last value, like `JSON.parse`.
        while let Some((key, value)) = access.next_entry::<String, Data>()? {
            map.insert(key, value);
        }
        Ok(Data::Object(map))
    }
}

/// Serializes [`Data`] with each binary leaf replaced by the next placeholder, collecting
/// the attachments in placeholder order.
pub(crate) struct WithPlaceholders<'a> {
    pub(crate) data: &'a Data,
    pub(crate) attachments: &'a RefCell<Vec<Bytes>>,
}

impl Serialize for WithPlaceholders<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.data {
            Data::Null => serializer.serialize_unit(),
            Data::Bool(b) => serializer.serialize_bool(*b),
            Data::Number(n) => n.serialize(serializer),
            Data::String(s) => serializer.serialize_str(s),
            Data::Binary(bytes) => {
                let num = {
                    let mut attachments = self.attachments.borrow_mut();
                    attachments.push(bytes.clone());
                    attachments.len() - 1
                };
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry(PLACEHOLDER_KEY, &true)?;
                map.serialize_entry(NUM_KEY, &num)?;
                map.end()
            }
            Data::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&self.nested(item))?;
                }
                seq.end()
            }
            Data::Object(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    map.serialize_entry(key, &self.nested(value))?;
                }
                map.end()
            }
        }
    }
}

impl<'a> WithPlaceholders<'a> {
    fn nested(&self, data: &'a Data) -> Self {
        Self {
            data,
            attachments: self.attachments,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Data {
        serde_json::from_str(json).unwrap()
    }

    fn serialize(data: &Data) -> (String, Vec<Bytes>) {
        let attachments = RefCell::new(Vec::new());
        let json = serde_json::to_string(&WithPlaceholders {
            data,
            attachments: &attachments,
        })
        .unwrap();
        (json, attachments.into_inner())
    }

    #[test]
    fn object_keys_keep_their_order() {
        let json = r#"{"z":1,"a":[true,null,"x"],"m":{"b":2.5,"a":-3}}"#;
        assert_eq!(serialize(&parse(json)).0, json);
    }

    #[test]
    fn repeated_keys_behave_like_json_parse() {
        assert_eq!(
            serialize(&parse(r#"{"a":1,"b":2,"a":3}"#)).0,
            r#"{"a":3,"b":2}"#
        );
    }

    #[test]
    fn binary_leaves_become_numbered_placeholders() {
        let data = Data::Array(vec![
            Data::from(vec![1u8, 2]),
            Data::Object(Object::from([("f".to_owned(), Data::from(vec![3u8, 4]))])),
        ]);
        assert_eq!(data.count_binary(), 2);
        let (json, attachments) = serialize(&data);
        assert_eq!(
            json,
            r#"[{"_placeholder":true,"num":0},{"f":{"_placeholder":true,"num":1}}]"#
        );
        assert_eq!(
            attachments,
            vec![Bytes::from_static(&[1, 2]), Bytes::from_static(&[3, 4])]
        );
    }

    #[test]
    fn placeholders_are_filled_and_checked() {
        let mut data = parse(r#"[{"_placeholder":true,"num":1},{"_placeholder":true,"num":0}]"#);
        data.check_placeholders(2).unwrap();
        assert_eq!(
            data.check_placeholders(1),
            Err(InvalidPlaceholder { attachments: 1 })
        );
        data.fill_placeholders(&[Bytes::from_static(b"a"), Bytes::from_static(b"b")])
            .unwrap();
        assert_eq!(
            data,
            Data::Array(vec![Data::from(b"b".to_vec()), Data::from(b"a".to_vec())])
        );
    }

    #[test]
    fn malformed_placeholders_are_errors() {
        for json in [
            r#"{"_placeholder":true}"#,
            r#"{"_placeholder":true,"num":-1}"#,
            r#"{"_placeholder":true,"num":0.5}"#,
            r#"{"_placeholder":true,"num":"0"}"#,
            r#"[{"_placeholder":true,"num":1}]"#,
        ] {
            assert!(parse(json).check_placeholders(1).is_err(), "{json}");
            assert!(
                parse(json).fill_placeholders(&[Bytes::new()]).is_err(),
                "{json}"
            );
        }
        // Not a placeholder: `_placeholder` must be `true`.
        assert!(parse(r#"{"_placeholder":1,"num":9}"#)
            .check_placeholders(0)
            .is_ok());
    }

    #[test]
    fn converts_to_and_from_serde_json() {
        let value = serde_json::json!({"a": [1, "x", null, true, 1.5]});
        let data = Data::from(value.clone());
        assert_eq!(serde_json::Value::try_from(data).unwrap(), value);
        assert_eq!(
            serde_json::Value::try_from(Data::Array(vec![Data::from(vec![1u8])])),
            Err(BinaryNotJson)
        );
        assert_eq!(Data::from(f64::NAN), Data::Null);
    }
}
