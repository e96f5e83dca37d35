//! Session ids: 15 random bytes in URL-safe base64, 20 characters, like the reference server.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;

/// The length of a session id on the wire.
pub const SID_LEN: usize = 20;

/// An Engine.IO session id, also used for Socket.IO socket ids: 20 URL-safe base64
/// characters, stored inline (it is `Copy` and costs no allocation).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sid([u8; SID_LEN]);

/// Maps and sets keyed by session ids, with a fast hash instead of SipHash: the ids are
/// 120 random bits chosen by this server (a client can look one up, never choose the keys
/// inserted), so there is no hash flooding to defend against, and a broadcast hashes one id
/// per recipient.
pub type SidMap<V> = std::collections::HashMap<Sid, V, foldhash::fast::RandomState>;
/// See [`SidMap`].
pub type SidSet = std::collections::HashSet<Sid, foldhash::fast::RandomState>;

/// A string that is not a session id this server could have issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a session id")]
pub struct InvalidSid;

impl Sid {
    /// A fresh random id (120 bits from the thread-local CSPRNG).
    pub fn random() -> Self {
        let mut raw = [0u8; 15];
        rand::rng().fill_bytes(&mut raw);
        let mut out = [0u8; SID_LEN];
        // 15 bytes always encode to exactly 20 characters.
        let written = URL_SAFE_NO_PAD
            .encode_slice(raw, &mut out)
            .unwrap_or_default();
        debug_assert_eq!(written, SID_LEN);
        Self(out)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ever built from URL-safe base64 characters (ASCII).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl FromStr for Sid {
    type Err = InvalidSid;

    fn from_str(s: &str) -> Result<Self, InvalidSid> {
        let bytes: [u8; SID_LEN] = s.as_bytes().try_into().map_err(|_| InvalidSid)?;
        if bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            Ok(Self(bytes))
        } else {
            Err(InvalidSid)
        }
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sid({})", self.as_str())
    }
}

impl serde::Serialize for Sid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Sid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_20_url_safe_characters() {
        let a = Sid::random();
        let b = Sid::random();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), SID_LEN);
        assert_eq!(a.as_str().parse::<Sid>().unwrap(), a);
    }

    #[test]
    fn foreign_strings_are_not_ids() {
        assert!("abc".parse::<Sid>().is_err());
        assert!("aaaaaaaaaaaaaaaaaaa=".parse::<Sid>().is_err());
        assert!("aaaaaaaaaaaaaaaaaaaaa".parse::<Sid>().is_err());
        assert!("aaaaaaaaaaaaaaaaaaa€".parse::<Sid>().is_err());
    }
}
