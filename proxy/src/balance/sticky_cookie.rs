//! Sticky sessions: the backend named by a signed cookie, else a fallback strategy; and the cookie codec.

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{build, PickContext, Position, Strategy, StrategyKind};
use crate::upstream::Backend;

/// Sends a request to the backend its (already verified) cookie names, while that backend
/// can take it; otherwise lets the fallback strategy choose, and the caller then sets a
/// cookie for the backend chosen.
#[derive(Debug)]
pub struct StickyCookie {
    fallback: Box<dyn Strategy>,
    /// Backend id → index, so a pick costs one hash lookup however many backends there are.
    by_id: HashMap<String, usize>,
}

impl StickyCookie {
    /// `fallback` of `sticky_cookie` itself is taken as `least_conn` (it would recurse).
    pub fn new(backends: &[Arc<Backend>], fallback: StrategyKind) -> Self {
        let fallback = match fallback {
            StrategyKind::StickyCookie => StrategyKind::LeastConn,
            k => k,
        };
        let mut by_id = HashMap::with_capacity(backends.len());
        for (i, b) in backends.iter().enumerate() {
            // Ids are unique after config validation; if not, the first one keeps the name.
            by_id.entry(b.id.clone()).or_insert(i);
        }
        Self {
            fallback: build(fallback, backends, StrategyKind::LeastConn),
            by_id,
        }
    }

    /// The strategy used for requests without a usable cookie.
    pub fn fallback_kind(&self) -> StrategyKind {
        self.fallback.kind()
    }
}

impl Strategy for StickyCookie {
    fn kind(&self) -> StrategyKind {
        StrategyKind::StickyCookie
    }

    fn pick(
        &self,
        backends: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        ctx: &PickContext,
    ) -> Option<usize> {
        if let Some(&i) = ctx.sticky_id.and_then(|id| self.by_id.get(id)) {
            if i < backends.len() && eligible(i) {
                return Some(i);
            }
        }
        self.fallback.pick(backends, eligible, ctx)
    }

    fn position(&self) -> Position {
        self.fallback.position()
    }

    fn resume(&self, position: &Position) {
        self.fallback.resume(position);
    }
}

type HmacSha256 = Hmac<Sha256>;

/// Length of the MAC kept in the cookie: 128 bits is plenty against forgery and keeps the
/// cookie short.
const TAG_LEN: usize = 16;
/// `TAG_LEN` bytes in unpadded base64.
const TAG_B64_LEN: usize = (TAG_LEN * 4).div_ceil(3);

/// Signs and verifies sticky cookie values
/// `<backend-id>.<base64url(HMAC-SHA256(key, len(upstream) ‖ upstream ‖ id))>`, the length
/// a big-endian u64.
///
/// The signature stops clients from steering themselves onto a backend of their choice by
/// writing the cookie by hand; it is not encryption, and the backend id is visible. The
/// upstream's name is in the MAC so that two upstreams sharing a key and a cookie name
/// (backend ids are only unique within an upstream) do not follow each other's cookies.
/// The length prefix keeps (`ab`, `c`) and (`a`, `bc`) apart, whatever the names contain.
#[derive(Clone)]
pub struct CookieSigner {
    /// The keyed HMAC state with the upstream's name already fed, prepared once: each sign
    /// or verify clones it instead of rehashing the key.
    mac: HmacSha256,
}

impl std::fmt::Debug for CookieSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieSigner").finish_non_exhaustive()
    }
}

impl CookieSigner {
    /// A signer for the cookies of upstream `upstream`: it verifies only what it signed
    /// for that upstream's name.
    pub fn new(key: &[u8], upstream: &str) -> Self {
        #[allow(clippy::expect_used)]
        let mut mac = HmacSha256::new_from_slice(key)
            // HMAC takes keys of any length (long ones are hashed first): this cannot fail.
            .expect("HMAC accepts keys of any length");
        mac.update(&(upstream.len() as u64).to_be_bytes());
        mac.update(upstream.as_bytes());
        Self { mac }
    }

    fn tag(&self, backend_id: &str) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(backend_id.as_bytes());
        mac
    }

    /// The cookie value for `backend_id`.
    pub fn sign(&self, backend_id: &str) -> String {
        let full = self.tag(backend_id).finalize().into_bytes();
        let mut out = String::with_capacity(backend_id.len() + 1 + TAG_B64_LEN);
        out.push_str(backend_id);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(&full[..TAG_LEN], &mut out);
        out
    }

    /// The backend id in `value` when its MAC checks out; None for anything else.
    ///
    /// Splits at the last `.`, since ids may themselves contain `.` (and `:`). The MAC is
    /// compared in constant time.
    pub fn verify<'a>(&self, value: &'a str) -> Option<&'a str> {
        let (id, tag_b64) = value.rsplit_once('.')?;
        if id.is_empty() || tag_b64.len() != TAG_B64_LEN {
            return None;
        }
        // Room for the decoder's estimate; only exactly TAG_LEN decoded bytes are accepted.
        let mut tag = [0u8; TAG_LEN + 2];
        let n = URL_SAFE_NO_PAD.decode_slice(tag_b64, &mut tag).ok()?;
        if n != TAG_LEN {
            return None;
        }
        self.tag(id).verify_truncated_left(&tag[..n]).ok()?;
        Some(id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::balance::testutil::{all, backends, set_active};
    use proptest::prelude::{prop_assert_eq, prop_assume, proptest};

    fn ctx(id: Option<&str>) -> PickContext<'_> {
        PickContext {
            client_ip: None,
            sticky_id: id,
        }
    }

    #[test]
    fn cookie_names_the_backend_while_it_is_eligible() {
        let bs = backends(&[1, 1, 1]);
        let s = StickyCookie::new(&bs, StrategyKind::LeastConn);
        set_active(&bs, &[0, 9, 0]);
        for _ in 0..5 {
            assert_eq!(s.pick(&bs, &all, &ctx(Some("b1"))), Some(1));
        }
        // Ineligible: the fallback (least_conn) chooses, and never b1.
        for _ in 0..5 {
            let i = s.pick(&bs, &|i| i != 1, &ctx(Some("b1"))).unwrap();
            assert!(i == 0 || i == 2);
        }
        assert_eq!(s.pick(&bs, &|_| false, &ctx(Some("b1"))), None);
    }

    #[test]
    fn no_or_unknown_cookie_uses_the_fallback() {
        let bs = backends(&[1, 1, 1]);
        let s = StickyCookie::new(&bs, StrategyKind::LeastConn);
        assert_eq!(s.fallback_kind(), StrategyKind::LeastConn);
        set_active(&bs, &[3, 3, 0]);
        assert_eq!(s.pick(&bs, &all, &ctx(None)), Some(2));
        assert_eq!(s.pick(&bs, &all, &ctx(Some("gone"))), Some(2));

        let rr = StickyCookie::new(&bs, StrategyKind::RoundRobin);
        assert_eq!(rr.fallback_kind(), StrategyKind::RoundRobin);
        let picks: Vec<_> = (0..3)
            .map(|_| rr.pick(&bs, &all, &ctx(None)).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2]);
    }

    #[test]
    fn sticky_fallback_of_itself_is_least_conn() {
        let bs = backends(&[1, 1]);
        let s = StickyCookie::new(&bs, StrategyKind::StickyCookie);
        assert_eq!(s.fallback_kind(), StrategyKind::LeastConn);
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let signer = CookieSigner::new(b"secret key", "app");
        for id in ["b0", "web-1", "10.0.0.7:8080", "a.b.c", "[::1]:80", "ü"] {
            let v = signer.sign(id);
            assert!(v.starts_with(id));
            assert_eq!(v.len(), id.len() + 1 + 22);
            assert_eq!(signer.verify(&v), Some(id), "{v}");
        }
    }

    #[test]
    fn signing_is_deterministic_and_url_safe() {
        let signer = CookieSigner::new(b"k", "app");
        let v = signer.sign("b0");
        assert_eq!(v, signer.sign("b0"));
        let tag = v.rsplit_once('.').unwrap().1;
        assert!(tag
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn tampering_is_rejected() {
        let signer = CookieSigner::new(b"secret key", "app");
        let v = signer.sign("b0");
        let (_, tag) = v.rsplit_once('.').unwrap();
        // Another id with b0's MAC.
        assert_eq!(signer.verify(&format!("b1.{tag}")), None);
        // One character of the MAC changed.
        let mut bad = v.clone().into_bytes();
        let last = bad.len() - 3;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(signer.verify(std::str::from_utf8(&bad).unwrap()), None);
        // Truncated or extended MAC.
        assert_eq!(signer.verify(&v[..v.len() - 1]), None);
        assert_eq!(signer.verify(&format!("{v}A")), None);
        // A dotted id cannot borrow a shorter id's MAC.
        let dotted = signer.sign("a.b");
        assert_eq!(signer.verify(&dotted), Some("a.b"));
        assert_eq!(
            signer.verify(&format!("a.{}", dotted.rsplit_once('.').unwrap().1)),
            None
        );
    }

    #[test]
    fn a_different_key_is_rejected() {
        let a = CookieSigner::new(b"key a", "app");
        let b = CookieSigner::new(b"key b", "app");
        assert_eq!(b.verify(&a.sign("b0")), None);
        // Long keys (hashed by HMAC first) work too.
        let long = CookieSigner::new(&[7u8; 200], "app");
        assert_eq!(long.verify(&long.sign("b0")), Some("b0"));
        assert_eq!(a.verify(&long.sign("b0")), None);
    }

    #[test]
    fn garbage_is_rejected() {
        let signer = CookieSigner::new(b"k", "app");
        let valid_tag = signer.sign("b0").rsplit_once('.').unwrap().1.to_owned();
        for v in [
            "",
            ".",
            "b0",
            "b0.",
            &format!(".{valid_tag}"),
            "b0.!!!!!!!!!!!!!!!!!!!!!!",
            "b0.AAAAAAAAAAAAAAAAAAAAAA",
            "b0.AAAAAAAAAAAAAAAAAAAAA=",
            "b0.AAAAAAAAAAAAAAAAAAAAA+",
            "b0.ÿÿÿÿÿÿÿÿÿÿÿ",
        ] {
            assert_eq!(signer.verify(v), None, "{v:?}");
        }
    }

    #[test]
    fn another_upstreams_cookie_is_rejected() {
        // Same key, same backend id, another upstream: the cookie is not followed.
        let a = CookieSigner::new(b"secret key", "a");
        let b = CookieSigner::new(b"secret key", "b");
        assert_eq!(a.verify(&a.sign("b0")), Some("b0"));
        assert_eq!(b.verify(&b.sign("b0")), Some("b0"));
        assert_eq!(b.verify(&a.sign("b0")), None);
        assert_eq!(a.verify(&b.sign("b0")), None);
        assert_ne!(a.sign("b0"), b.sign("b0"));
        // A signer built again for the same upstream (a reload, a replica) accepts them.
        let a2 = CookieSigner::new(b"secret key", "a");
        assert_eq!(a2.verify(&a.sign("b0")), Some("b0"));
    }

    #[test]
    fn name_and_id_boundary_is_unambiguous() {
        // Without the length prefix, upstream `ab` + id `c` and upstream `a` + id `bc`
        // would feed the same bytes to the MAC.
        let ab = CookieSigner::new(b"secret key", "ab");
        let a = CookieSigner::new(b"secret key", "a");
        let signed = ab.sign("c");
        let (_, tag) = signed.rsplit_once('.').unwrap();
        assert_eq!(a.verify(&format!("bc.{tag}")), None);
        assert_eq!(ab.verify(&format!("c.{tag}")), Some("c"));
    }

    #[test]
    fn signer_debug_hides_the_key() {
        let s = format!("{:?}", CookieSigner::new(b"hunter2", "app"));
        assert!(!s.contains("hunter2"));
    }

    proptest! {
        #[test]
        fn verify_never_panics(s in ".*") {
            let signer = CookieSigner::new(b"k", "app");
            let _ = signer.verify(&s);
        }

        #[test]
        fn round_trip_any_id(id in "[^\\x00]{1,64}") {
            let signer = CookieSigner::new(b"k", "app");
            let signed = signer.sign(&id);
            prop_assert_eq!(signer.verify(&signed), Some(id.as_str()));
        }

        #[test]
        fn other_upstream_never_verifies(a in "[a-z0-9_-]{1,12}", b in "[a-z0-9_-]{1,12}", id in "[a-z0-9.:-]{1,20}") {
            prop_assume!(a != b);
            let sa = CookieSigner::new(b"k", &a);
            let sb = CookieSigner::new(b"k", &b);
            let signed = sa.sign(&id);
            prop_assert_eq!(sb.verify(&signed), None);
        }

        #[test]
        fn forged_tag_is_rejected(id in "[a-z0-9.:-]{1,20}", tag in "[A-Za-z0-9_-]{22}") {
            let signer = CookieSigner::new(b"k", "app");
            let forged = format!("{id}.{tag}");
            prop_assume!(forged != signer.sign(&id));
            prop_assert_eq!(signer.verify(&forged), None);
        }
    }
}
