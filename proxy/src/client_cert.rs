//! Client certificates on TLS listeners (mutual TLS): the verifier a reload swaps, and what
//! a verified certificate tells the backends (`x-forwarded-client-cert`, Envoy's format).
//!
//! Every TLS listener gets a [`ClientCerts`] verifier and a [`PeerCertCallback`] at start,
//! whether or not its config asks for client certificates: rustls fixes the verifier when
//! the listener starts, so one that asks for nothing until a reload says otherwise is what
//! lets a reload add, change or remove `client_ca` without a restart.

use std::any::Any;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::{SslDigest, TlsRef};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::config::{ClientAuth, ClientAuthMode};

/// The request field that tells a backend which certificate the client presented.
pub const XFCC: &str = "x-forwarded-client-cert";

/// Why a verifier could not be built from a listener's client certificate settings.
#[derive(Debug, thiserror::Error)]
pub enum ClientVerifierError {
    #[error("no TLS crypto provider installed")]
    NoProvider,
    #[error(transparent)]
    Build(#[from] VerifierBuilderError),
}

/// The rustls verifier for `auth`: certificates chaining to its CAs, revoked ones refused
/// when it has CRLs (a certificate whose issuer has no CRL there too, as nginx's
/// `ssl_crl` does), a client without one let in when optional.
pub fn client_verifier(
    auth: &ClientAuth,
) -> Result<Arc<dyn ClientCertVerifier>, ClientVerifierError> {
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default().ok_or(ClientVerifierError::NoProvider)?;
    let mut roots = RootCertStore::empty();
    // Each was checked to be a trust anchor at load; none left is `NoRootAnchors` below.
    roots.add_parsable_certificates(
        auth.ca
            .certs
            .iter()
            .map(|d| CertificateDer::from(d.clone())),
    );
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone());
    if let Some(crls) = &auth.crls {
        builder = builder.with_crls(
            crls.crls
                .iter()
                .map(|d| CertificateRevocationListDer::from(d.clone())),
        );
    }
    if auth.mode == ClientAuthMode::Optional {
        builder = builder.allow_unauthenticated();
    }
    Ok(builder.build()?)
}

/// The client certificate verifier of one TLS listener, swapped by a reload. Clones share
/// it. Without client authentication configured it asks for no certificate at all.
#[derive(Debug, Clone, Default)]
pub struct ClientCerts {
    current: Arc<ArcSwap<Current>>,
    /// Every distinct list of CA names handed out as hints, kept for the process's life:
    /// rustls borrows the hints from the verifier, past any one load of `current`.
    hints: Arc<Mutex<Vec<&'static [DistinguishedName]>>>,
}

#[derive(Debug, Default)]
struct Current {
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    hints: &'static [DistinguishedName],
}

impl ClientCerts {
    /// A verifier for `auth` (None: no client certificates asked for).
    pub fn new(auth: Option<&ClientAuth>) -> Result<Self, ClientVerifierError> {
        let certs = Self::default();
        certs.store(auth)?;
        Ok(certs)
    }

    /// Handshakes that start after this use `auth`.
    pub fn store(&self, auth: Option<&ClientAuth>) -> Result<(), ClientVerifierError> {
        self.store_verifier(auth.map(client_verifier).transpose()?);
        Ok(())
    }

    /// Handshakes that start after this use `verifier` (see [`client_verifier`]); None asks
    /// for no certificate.
    pub fn store_verifier(&self, verifier: Option<Arc<dyn ClientCertVerifier>>) {
        let hints = match &verifier {
            Some(v) => self.intern(v.root_hint_subjects()),
            None => &[],
        };
        self.current.store(Arc::new(Current { verifier, hints }));
    }

    /// The same CA names as a list handed out before, or a new one kept for good: only a
    /// reload that brings other CAs adds one.
    fn intern(&self, names: &[DistinguishedName]) -> &'static [DistinguishedName] {
        let mut seen = self.hints.lock().unwrap_or_else(|p| p.into_inner());
        let same = |kept: &&&[DistinguishedName]| {
            kept.len() == names.len()
                && kept
                    .iter()
                    .zip(names)
                    .all(|(a, b)| a.as_ref() == b.as_ref())
        };
        if let Some(kept) = seen.iter().find(same) {
            return kept;
        }
        let kept: &'static [DistinguishedName] = Box::leak(names.to_vec().into_boxed_slice());
        seen.push(kept);
        kept
    }
}

impl ClientCerts {
    /// `check` with the current verifier; an error when the listener asks for no client
    /// certificate (rustls does not call the checks then).
    fn with_current<T>(
        &self,
        check: impl FnOnce(&dyn ClientCertVerifier) -> Result<T, rustls::Error>,
    ) -> Result<T, rustls::Error> {
        match &self.current.load().verifier {
            Some(v) => check(v.as_ref()),
            None => Err(rustls::Error::General(
                "this listener asks for no client certificate".to_owned(),
            )),
        }
    }
}

impl ClientCertVerifier for ClientCerts {
    fn offer_client_auth(&self) -> bool {
        self.current.load().verifier.is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.current
            .load()
            .verifier
            .as_ref()
            .is_some_and(|v| v.client_auth_mandatory())
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.current.load().hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.with_current(|v| v.verify_client_cert(end_entity, intermediates, now))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.with_current(|v| v.verify_tls12_signature(message, cert, dss))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.with_current(|v| v.verify_tls13_signature(message, cert, dss))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        match &self.current.load().verifier {
            Some(v) => v.supported_verify_schemes(),
            None => CryptoProvider::get_default()
                .map(|p| p.signature_verification_algorithms.supported_schemes())
                .unwrap_or_default(),
        }
    }
}

/// A verified client certificate, as the backends and the access log are told of it.
#[derive(Debug, PartialEq, Eq)]
pub struct PeerCert {
    /// The `x-forwarded-client-cert` value: `Hash=<sha256 hex>;Subject="<RFC 4514>"`, then
    /// `URI=` (the first URI name) and `DNS=` (each DNS name) when the certificate has them.
    pub xfcc: String,
    /// The subject, RFC 4514 (most specific name first, as OpenSSL's RFC 2253 form).
    pub subject: String,
}

impl PeerCert {
    /// Reads the leaf certificate `der`. Its hash is always given; a subject the parser
    /// cannot read (the handshake's verifier accepted it, so hardly ever) is left empty.
    pub fn from_der(der: &[u8]) -> PeerCert {
        let hash = Sha256::digest(der);
        let mut xfcc = String::with_capacity(160);
        xfcc.push_str("Hash=");
        for b in hash {
            let _ = write!(xfcc, "{b:02x}");
        }
        let parsed = x509_parser::parse_x509_certificate(der)
            .ok()
            .map(|(_, c)| c);
        let subject = parsed
            .as_ref()
            .map(|c| rfc4514(c.subject()))
            .unwrap_or_default();
        // RFC 4514 escapes `"` and `\`, so the subject needs no more inside the quotes.
        let _ = write!(xfcc, ";Subject=\"{subject}\"");
        if let Some(Ok(Some(san))) = parsed.as_ref().map(|c| c.subject_alternative_name()) {
            use x509_parser::extensions::GeneralName;
            let names = &san.value.general_names;
            if let Some(uri) = names.iter().find_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            }) {
                push_value(&mut xfcc, "URI", uri);
            }
            for n in names {
                if let GeneralName::DNSName(d) = n {
                    push_value(&mut xfcc, "DNS", d);
                }
            }
        }
        PeerCert { xfcc, subject }
    }

    /// The verified client certificate of a TLS connection, if it presented one.
    pub fn of(ssl: Option<&SslDigest>) -> Option<Arc<PeerCert>> {
        ssl?.extension.get::<Arc<PeerCert>>().cloned()
    }
}

/// `;<key>=<value>`, quoted as Envoy quotes a value holding `,`, `;`, `=` or `"`; a value
/// with bytes a header field cannot carry as text is left out rather than sent mangled.
fn push_value(out: &mut String, key: &str, value: &str) {
    if !value.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return;
    }
    let _ = write!(out, ";{key}=");
    if value.contains([',', ';', '=', '"', ' ']) {
        out.push('"');
        for c in value.chars() {
            if matches!(c, '"' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// A distinguished name as RFC 4514 writes it: the last RDN first, `,` between RDNs and `+`
/// inside one, the short names RFC 4514 lists (others as dotted OIDs), values escaped.
/// Non-ASCII and control bytes are escaped as `\XX` (as OpenSSL's RFC 2253 form does), so
/// the text is plain ASCII that a header field carries as is.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let mut out = String::with_capacity(64);
    for (i, rdn) in name
        .iter()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = atv.attr_type().to_id_string();
            match short_name(&oid) {
                Some(short) => out.push_str(short),
                None => out.push_str(&oid),
            }
            out.push('=');
            match atv.as_str() {
                Ok(text) => escape_value(&mut out, text.as_bytes()),
                // Other string types and non-strings: `#` and the value's DER in hex.
                Err(_) => {
                    use x509_parser::der_parser::asn1_rs::ToDer as _;
                    out.push('#');
                    for b in atv.attr_value().to_der_vec().unwrap_or_default() {
                        let _ = write!(out, "{b:02x}");
                    }
                }
            }
        }
    }
    out
}

fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

/// RFC 4514 §2.4: `"+,;<>\` escaped anywhere, a leading `#` or space and a trailing space
/// too; bytes outside printable ASCII as `\XX`.
fn escape_value(out: &mut String, v: &[u8]) {
    for (i, &b) in v.iter().enumerate() {
        let edge = (i == 0 && (b == b' ' || b == b'#')) || (i + 1 == v.len() && b == b' ');
        if matches!(b, b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\') || edge {
            out.push('\\');
            out.push(char::from(b));
        } else if b.is_ascii_graphic() || b == b' ' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\{b:02X}");
        }
    }
}

/// Reads the client's certificate once, when the handshake completes, so that requests
/// only clone what it made (a connection without one costs nothing more per request).
///
/// It also checks the certificate again against the listener's current verifier. rustls
/// does not verify anything when a client resumes a session from its cache: the session
/// brings back the certificate (or the lack of one) of the handshake that made it, perhaps
/// under the CAs or CRLs of before a reload. nginx keeps such sessions apart with a session
/// id context derived from its client certificate settings; pingora's rustls listener has
/// no such setting, and the callback cannot tell a resumed handshake from a full one, so it
/// checks every handshake: a full one that presented a certificate is verified twice.
#[derive(Debug)]
pub struct PeerCertCallback {
    clients: ClientCerts,
}

impl PeerCertCallback {
    pub fn new(clients: ClientCerts) -> Self {
        Self { clients }
    }
}

/// Left on a connection whose (resumed) session has a client certificate the listener's
/// current settings refuse, or none where they require one: it is closed before any request
/// ([`refused`]).
#[derive(Debug)]
pub struct Refused;

/// Whether the handshake of a connection was marked [`Refused`].
pub fn refused(ssl: Option<&SslDigest>) -> bool {
    ssl.is_some_and(|d| d.extension.get::<Refused>().is_some())
}

#[async_trait]
impl TlsAccept for PeerCertCallback {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let current = self.clients.current.load();
        // Without client authentication now, a certificate from a session of before is
        // not passed on: a new handshake would not have asked for it.
        let verifier = current.verifier.as_ref()?;
        let Some((leaf, intermediates)) = tls.peer_cert_chain_der().and_then(|c| c.split_first())
        else {
            return verifier
                .client_auth_mandatory()
                .then(|| Arc::new(Refused) as Arc<dyn Any + Send + Sync>);
        };
        match verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
            Ok(_) => Some(Arc::new(Arc::new(PeerCert::from_der(leaf)))),
            Err(_) => Some(Arc::new(Refused)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cert(dn: &[(rcgen::DnType, &str)], sans: &[rcgen::SanType]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        // The default holds a CN already, which would come first.
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in dn {
            params.distinguished_name.push(t.clone(), *v);
        }
        params.subject_alt_names = sans.to_vec();
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_header_has_the_hash_the_subject_last_rdn_first_and_the_names() {
        use rcgen::{DnType, SanType};
        let der = cert(
            &[
                (DnType::CountryName, "FR"),
                (DnType::OrganizationName, "Acme, Inc."),
                (DnType::CommonName, "client one"),
            ],
            &[
                SanType::URI("spiffe://acme/client".try_into().unwrap()),
                SanType::DnsName("a.example".try_into().unwrap()),
                SanType::DnsName("b.example".try_into().unwrap()),
            ],
        );
        let peer = PeerCert::from_der(&der);
        let hash: String = Sha256::digest(&der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(peer.subject, r"CN=client one,O=Acme\, Inc.,C=FR");
        assert_eq!(
            peer.xfcc,
            format!(
                r#"Hash={hash};Subject="CN=client one,O=Acme\, Inc.,C=FR";URI=spiffe://acme/client;DNS=a.example;DNS=b.example"#
            )
        );
        assert!(http::HeaderValue::from_str(&peer.xfcc).is_ok());
    }

    #[test]
    fn values_are_escaped_as_rfc_4514_says_and_stay_ascii() {
        let mut out = String::new();
        escape_value(&mut out, "#a\"b+c;d<e>f\\g ".as_bytes());
        assert_eq!(out, r#"\#a\"b\+c\;d\<e\>f\\g\ "#);
        let mut out = String::new();
        escape_value(&mut out, "é\n".as_bytes());
        assert_eq!(out, r"\C3\A9\0A");
        let mut out = String::new();
        push_value(&mut out, "URI", "urn:a;b");
        assert_eq!(out, r#";URI="urn:a;b""#);
        let mut out = String::new();
        push_value(&mut out, "DNS", "bad\r\nname");
        assert_eq!(out, "");
    }

    #[test]
    fn without_client_auth_nothing_is_asked_and_a_store_turns_it_on() {
        let dir = tempfile::tempdir().unwrap();
        crate::tls::gen_cert(dir.path()).unwrap();
        let ca = crate::config::CaCerts {
            path: dir.path().join("ca.pem"),
            certs: vec![rustls_pemfile::certs(
                &mut std::fs::read(dir.path().join("ca.pem")).unwrap().as_slice(),
            )
            .next()
            .unwrap()
            .unwrap()
            .to_vec()]
            .into(),
        };
        let certs = ClientCerts::new(None).unwrap();
        assert!(!certs.offer_client_auth());
        assert!(!certs.client_auth_mandatory());
        assert!(certs.root_hint_subjects().is_empty());
        let mut auth = ClientAuth {
            ca,
            mode: ClientAuthMode::Required,
            crls: None,
        };
        certs.store(Some(&auth)).unwrap();
        assert!(certs.offer_client_auth());
        assert!(certs.client_auth_mandatory());
        let hints = certs.root_hint_subjects().as_ptr();
        assert_eq!(certs.root_hint_subjects().len(), 1);
        auth.mode = ClientAuthMode::Optional;
        certs.store(Some(&auth)).unwrap();
        assert!(certs.offer_client_auth());
        assert!(!certs.client_auth_mandatory());
        // The same CAs reuse the names kept before.
        assert_eq!(certs.root_hint_subjects().as_ptr(), hints);
        certs.store(None).unwrap();
        assert!(!certs.offer_client_auth());
    }
}
