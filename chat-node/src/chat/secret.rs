//! Fresh secrets and ids: user tokens and invites (256 bits), public user ids and room
//! creation ids (96 bits), URL-safe base64 from the thread-local CSPRNG; and a comparison
//! that takes the same time wherever two secrets differ.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;

fn random_b64<const N: usize>() -> String {
    let mut raw = [0u8; N];
    rand::rng().fill_bytes(&mut raw);
    URL_SAFE_NO_PAD.encode(raw)
}

/// A user's secret token or a private room's invite: 32 random bytes, 43 characters.
pub fn secret() -> String {
    random_b64::<32>()
}

/// A public user id: `u` and 12 random bytes (16 characters).
pub fn user_id() -> String {
    format!("u{}", random_b64::<12>())
}

/// A room's creation id ([`RoomMeta::creation`]): 12 random bytes (16 characters), so
/// that two creations of one name never share one.
///
/// [`RoomMeta::creation`]: crate::chat::store::RoomMeta::creation
pub fn creation() -> String {
    random_b64::<12>()
}

/// Whether two secrets are equal, in a time that depends only on their lengths.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_unique_and_url_safe() {
        let (a, b) = (secret(), secret());
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(crate::chat::validate::secret_shape(&a));
        assert!(user_id().starts_with('u'));
        assert!(same(&a, &a.clone()));
        assert!(!same(&a, &b));
        assert!(!same("abc", "abcd"));
    }
}
