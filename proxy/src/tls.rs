//! TLS for listeners (certificates loaded and checked up front, chosen by SNI, swapped by a
//! reload, with the client certificate checks of [`crate::client_cert`]) and the dev CA
//! generator behind `proxy gen-cert`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};

use crate::client_cert::{ClientCerts, PeerCertCallback};
use crate::config::{TlsConfig, TlsFileProblem};

/// A certificate or key file a listener cannot serve with: the file at fault and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct TlsFileError {
    /// The file at fault, as configured.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: TlsFileProblem,
}

impl TlsFileError {
    fn new(path: &Path, problem: TlsFileProblem) -> Self {
        Self {
            path: path.to_path_buf(),
            problem,
        }
    }
}

/// Loads one certificate chain and its private key, as a handshake will use them. Errors
/// name the file; pingora's own loader panics on bad files, so every listener goes through
/// this instead. A key that is not the certificate's is refused here: rustls would accept
/// the pair and then fail every handshake ("bad signature"), which nginx and HAProxy refuse
/// at start for the same reason.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsFileError> {
    pingora::tls::install_default_crypto_provider();
    let cert_pem = fs::read(cert).map_err(|e| TlsFileError::new(cert, TlsFileProblem::Read(e)))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsFileError::new(cert, TlsFileProblem::InvalidPem(e.to_string())))?;
    if certs.is_empty() {
        return Err(TlsFileError::new(cert, TlsFileProblem::NoCertificate));
    }
    let key_pem = fs::read(key).map_err(|e| TlsFileError::new(key, TlsFileProblem::Read(e)))?;
    let private_key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| TlsFileError::new(key, TlsFileProblem::InvalidPem(e.to_string())))?
        .ok_or_else(|| TlsFileError::new(key, TlsFileProblem::NoPrivateKey))?;
    let unusable = |reason: String| TlsFileError::new(key, TlsFileProblem::UnusableKey(reason));
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| unusable("no TLS crypto provider installed".to_owned()))?;
    let signing = provider
        .key_provider
        .load_private_key(private_key)
        .map_err(|e| unusable(e.to_string()))?;
    // Without the key's public half (a provider that cannot tell), the pair is taken as
    // written, as rustls itself does.
    let knows_public_key = signing.public_key().is_some();
    let pair = CertifiedKey::new(certs, signing);
    if knows_public_key && pair.keys_match().is_err() {
        return Err(TlsFileError::new(
            key,
            TlsFileProblem::KeyMismatch {
                cert: cert.to_path_buf(),
            },
        ));
    }
    Ok(Arc::new(pair))
}

/// The certificates of one listener: a default and more by SNI name.
#[derive(Debug)]
pub struct SniCerts {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
    /// Wildcard entries `*.<suffix>`, by suffix.
    by_suffix: HashMap<String, Arc<CertifiedKey>>,
}

impl SniCerts {
    /// Loads every certificate `cfg` names; the first bad file fails the whole set.
    pub fn load(cfg: &TlsConfig) -> Result<Self, TlsFileError> {
        let default = load_certified_key(&cfg.cert, &cfg.key)?;
        let mut by_name = HashMap::new();
        let mut by_suffix = HashMap::new();
        for s in &cfg.sni {
            let name = s.server_name.to_ascii_lowercase();
            let key = load_certified_key(&s.cert, &s.key)?;
            match name.strip_prefix("*.") {
                Some(suffix) => by_suffix.insert(suffix.to_owned(), key),
                None => by_name.insert(name, key),
            };
        }
        Ok(Self {
            default,
            by_name,
            by_suffix,
        })
    }

    /// The certificate for an SNI name: an exact entry, else a wildcard one for the name
    /// without its first label (one label only, as a wildcard certificate covers), else the
    /// default.
    fn pick(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return &self.default;
        };
        if let Some(key) = self.by_name.get(&name) {
            return key;
        }
        name.split_once('.')
            .and_then(|(_, suffix)| self.by_suffix.get(suffix))
            .unwrap_or(&self.default)
    }
}

/// Picks a certificate by SNI name (exact, then `*.` wildcard); unknown or missing names
/// get the default. Clones share
/// the certificates, so a reload swaps them under the listener (renewed certificates need
/// no restart); handshakes in progress keep the ones they picked.
#[derive(Debug, Clone)]
pub struct SniResolver {
    certs: Arc<ArcSwap<SniCerts>>,
}

impl SniResolver {
    pub fn new(certs: SniCerts) -> Self {
        Self {
            certs: Arc::new(ArcSwap::from_pointee(certs)),
        }
    }

    pub fn store(&self, certs: SniCerts) {
        self.certs.store(Arc::new(certs));
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        Some(certs.pick(hello.server_name()).clone())
    }
}

/// What a reload swaps under a running TLS listener: its certificates and its client
/// certificate checks.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub certs: SniResolver,
    pub clients: ClientCerts,
}

/// TLS settings for one listener: TLS 1.2 and 1.3 (pingora's rustls defaults), our SNI
/// resolver, our client certificate verifier (asking for none unless configured), the
/// client certificate read once per connection, ALPN h2 + http/1.1 when enabled. The
/// resolver and verifier are returned too, for reloads.
pub fn listener_settings(cfg: &TlsConfig) -> Result<(TlsSettings, ListenerTls)> {
    let resolver = SniResolver::new(SniCerts::load(cfg)?);
    let clients = ClientCerts::new(cfg.client_auth.as_ref())?;
    let mut settings =
        TlsSettings::with_callbacks(Box::new(PeerCertCallback::new(clients.clone())))
            .map_err(|e| anyhow!("TLS settings: {e}"))?;
    settings.set_cert_resolver(Arc::new(resolver.clone()));
    settings.set_client_cert_verifier(Arc::new(clients.clone()));
    if cfg.h2 {
        settings.enable_h2();
    } else {
        settings.set_alpn(pingora::listeners::ALPN::H1);
    }
    Ok((
        settings,
        ListenerTls {
            certs: resolver,
            clients,
        },
    ))
}

/// Writes a development CA (`ca.pem`, `ca-key.pem`) and a certificate for localhost,
/// 127.0.0.1 and ::1 signed by it (`localhost.pem`, `localhost-key.pem`) into `dir`.
/// An existing CA in `dir` is reused so that browsers that already trust it keep working.
/// Returns whether the CA is new (and needs trusting).
pub fn gen_cert(dir: &Path) -> Result<bool> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let ca_cert_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca-key.pem");

    let mut ca_params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Switchyard development CA");
    dn.push(DnType::OrganizationName, "Switchyard (dev only)");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    ca_params.not_after = rcgen::date_time_ymd(2036, 1, 1);

    let kept = ca_cert_path.exists() && ca_key_path.exists();
    let (ca_key, ca_cert) = if kept {
        let key_pem = fs::read_to_string(&ca_key_path)
            .with_context(|| format!("read {}", ca_key_path.display()))?;
        let key =
            KeyPair::from_pem(&key_pem).map_err(|e| anyhow!("{}: {e}", ca_key_path.display()))?;
        // Re-signing the same parameters with the same key yields an equivalent CA
        // certificate (same name and key), so existing trust stays valid.
        let cert = ca_params
            .self_signed(&key)
            .map_err(|e| anyhow!("CA certificate: {e}"))?;
        (key, cert)
    } else {
        let key = KeyPair::generate().map_err(|e| anyhow!("CA key: {e}"))?;
        let cert = ca_params
            .self_signed(&key)
            .map_err(|e| anyhow!("CA certificate: {e}"))?;
        write_private(&ca_key_path, &key.serialize_pem())?;
        fs::write(&ca_cert_path, cert.pem())
            .with_context(|| format!("write {}", ca_cert_path.display()))?;
        (key, cert)
    };

    let mut leaf = CertificateParams::new(vec!["localhost".to_string()])
        .map_err(|e| anyhow!("leaf params: {e}"))?;
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse()?));
    leaf.subject_alt_names
        .push(SanType::IpAddress("::1".parse()?));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "localhost");
    leaf.distinguished_name = dn;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = rcgen::date_time_ymd(2024, 1, 1);
    leaf.not_after = rcgen::date_time_ymd(2027, 12, 31);
    let leaf_key = KeyPair::generate().map_err(|e| anyhow!("leaf key: {e}"))?;
    let leaf_cert = leaf
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .map_err(|e| anyhow!("leaf certificate: {e}"))?;
    let leaf_path = dir.join("localhost.pem");
    // The chain: leaf then CA, so clients that trust the CA can build the path.
    fs::write(&leaf_path, format!("{}{}", leaf_cert.pem(), ca_cert.pem()))
        .with_context(|| format!("write {}", leaf_path.display()))?;
    write_private(&dir.join("localhost-key.pem"), &leaf_key.serialize_pem())?;
    Ok(!kept)
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_certs_load_and_reuse_the_ca() {
        let dir = std::env::temp_dir().join(format!("syd-certs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert!(gen_cert(&dir).unwrap(), "a new CA");
        let ca1 = fs::read_to_string(dir.join("ca-key.pem")).unwrap();
        load_certified_key(&dir.join("localhost.pem"), &dir.join("localhost-key.pem")).unwrap();
        assert!(!gen_cert(&dir).unwrap(), "the CA kept");
        assert_eq!(ca1, fs::read_to_string(dir.join("ca-key.pem")).unwrap());
        let err = load_certified_key(&dir.join("missing.pem"), &dir.join("localhost-key.pem"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.pem"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        gen_cert(a.path()).unwrap();
        gen_cert(b.path()).unwrap();
        let cert = a.path().join("localhost.pem");
        let err = load_certified_key(&cert, &b.path().join("localhost-key.pem")).unwrap_err();
        assert_eq!(err.path, b.path().join("localhost-key.pem"));
        assert!(
            matches!(&err.problem, TlsFileProblem::KeyMismatch { cert: c } if *c == cert),
            "{err}"
        );
        // A chain whose first certificate is not the key's (the CA put first) too.
        let ca_first = a.path().join("ca-first.pem");
        let chain = fs::read_to_string(&cert).unwrap();
        let ca = fs::read_to_string(a.path().join("ca.pem")).unwrap();
        fs::write(&ca_first, format!("{ca}{chain}")).unwrap();
        let err = load_certified_key(&ca_first, &a.path().join("localhost-key.pem")).unwrap_err();
        assert!(
            matches!(err.problem, TlsFileProblem::KeyMismatch { .. }),
            "{err}"
        );
    }
}
