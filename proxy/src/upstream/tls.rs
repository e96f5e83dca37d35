//! TLS to backends (`[upstreams.NAME.tls]`): one client setting per upstream, used by our
//! own HTTP/1 path, the WebSocket handshake and the health checks (through tokio-rustls),
//! and handed to pingora's connector for the requests pingora proxies, so that every path
//! trusts the same roots and checks the same name.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;

use crate::config::{BackendConfig, ClientCert, UpstreamTlsConfig};

/// Distinguishes one client's settings from another's, so that a pooled connection is only
/// reused under the settings it was opened with. A reload or DNS refresh that leaves an
/// upstream's settings as they were keeps its client's id ([`TlsClient::keep_or_new`]).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The host name each backend address is verified for, with its tag.
type Names = std::collections::HashMap<SocketAddr, (ServerName<'static>, u64)>;

/// A number for each host name a backend has been verified for, never reused for another
/// name (1 and up; 0 is "verified for its IP address"): with the client's id it keys the
/// pooled connections ([`TlsClient::pool_key`]), so that a DNS refresh that names an address
/// otherwise keeps the other addresses' connections and never reuses one verified for the
/// old name. Grows with the distinct backend names the process has seen.
fn name_tag(name: &ServerName<'static>) -> u64 {
    static TAGS: std::sync::Mutex<std::collections::BTreeMap<String, u64>> =
        std::sync::Mutex::new(std::collections::BTreeMap::new());
    let key = match name {
        ServerName::DnsName(n) => n.as_ref().to_owned(),
        other => format!("{other:?}"),
    };
    // Poisoned only by a panic in the two lines below, which leave the map whole.
    let mut tags = TAGS.lock().unwrap_or_else(|p| p.into_inner());
    let next = tags.len() as u64 + 1;
    *tags.entry(key).or_insert(next)
}

/// How an upstream's backends are reached over TLS.
#[derive(Clone)]
pub struct TlsClient {
    /// Never 0 (0 keys plain connections in the pool).
    pub id: u64,
    connector: TlsConnector,
    /// The same settings offering h2 alone, for the health checks of an h2 upstream.
    h2_connector: TlsConnector,
    /// The name checked against each backend's certificate and sent as SNI; None: the
    /// backend's host name when it has one (`names`), else its IP address (checked against
    /// the certificate's IP addresses, no SNI sent).
    server_name: Option<ServerName<'static>>,
    /// Without `server_name`: the host name of each backend named `host:port`, as nginx's
    /// `proxy_ssl_name` defaults to the host of `proxy_pass`, with the name's tag
    /// ([`name_tag`]). Empty for backends written as addresses, so that their connections
    /// pay one length check for it.
    names: Names,
    verify: bool,
    /// The configured roots, as pingora's connector takes them; None: the system's.
    pingora_ca: Option<Arc<[WrappedX509]>>,
    /// The client certificate, as pingora's connector takes it.
    pingora_client_cert: Option<Arc<CertKey>>,
    /// What this client was built from, to tell whether the next config can keep it.
    config: UpstreamTlsConfig,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("id", &self.id)
            .field("server_name", &self.server_name)
            .field("verify", &self.verify)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Builds the settings from a resolved config, whose CA certificates were checked to
    /// parse at load, for `backends` (whose host names are their default server names).
    pub fn new(config: &UpstreamTlsConfig, backends: &[BackendConfig]) -> Self {
        Self::with_names(config, backend_names(config, backends))
    }

    /// `previous` when it was built from the same settings and derives the same name for
    /// every address, else a new client (a new id). Kept, its pooled connections (keyed
    /// by its id) and its session cache go on serving: each of them was opened with the
    /// roots, client certificate, verification and name it would be opened with now. A
    /// client whose names differ is not kept even for the addresses whose name stayed:
    /// its pool may hold connections to an address that it named otherwise (one a
    /// refresh removed and a later one brings back under another name).
    pub fn keep_or_new(
        previous: Option<&Arc<TlsClient>>,
        config: &UpstreamTlsConfig,
        backends: &[BackendConfig],
    ) -> Arc<TlsClient> {
        let names = backend_names(config, backends);
        match previous {
            Some(p) if p.config == *config && p.names == names => p.clone(),
            // Same settings, an address named otherwise (a DNS refresh): the same client
            // under the new names. Its pool keys carry each address's name, so the other
            // addresses keep their connections and a renamed one opens new ones.
            Some(p) if p.config == *config => Arc::new(TlsClient {
                names,
                ..TlsClient::clone(p)
            }),
            _ => Arc::new(Self::with_names(config, names)),
        }
    }

    /// What a pooled connection to `addr` is kept under besides the address: this client's
    /// settings (its id) and the name `addr` is verified for (its tag, 0 for the address or
    /// the configured `server_name`). A connection is reused only under both.
    #[inline]
    pub fn pool_key(&self, addr: SocketAddr) -> (u64, u64) {
        (self.id, self.backend_name(addr).map_or(0, |(_, tag)| *tag))
    }

    fn with_names(config: &UpstreamTlsConfig, names: Names) -> Self {
        pingora::tls::install_default_crypto_provider();
        let builder = ClientConfig::builder();
        let builder = if config.verify {
            builder.with_root_certificates(roots(config))
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny::new()))
        };
        let client_key = config.client_cert.as_ref().and_then(certified_key);
        let mut tls = match client_key {
            Some(key) => builder.with_client_cert_resolver(Arc::new(AlwaysSend(key))),
            None => builder.with_no_client_auth(),
        };
        // HTTP/1.1 only on Switchyard's paths (requests, upgrades); pingora's connector
        // offers h2 itself for an h2 upstream.
        let mut h2 = tls.clone();
        h2.alpn_protocols = vec![b"h2".to_vec()];
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let pingora_ca = config.ca.as_ref().map(|ca| {
            ca.certs
                .iter()
                .map(|der| WrappedX509::new(der.clone(), parse_x509))
                .collect::<Vec<_>>()
                .into()
        });
        let pingora_client_cert = config
            .client_cert
            .as_ref()
            .map(|c| Arc::new(CertKey::new(c.chain.to_vec(), c.key.to_vec())));
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            connector: TlsConnector::from(Arc::new(tls)),
            h2_connector: TlsConnector::from(Arc::new(h2)),
            server_name: config
                .server_name
                .as_deref()
                .and_then(|n| ServerName::try_from(n.to_owned()).ok()),
            names,
            verify: config.verify,
            pingora_ca,
            pingora_client_cert,
            config: config.clone(),
        }
    }

    /// The connector offering http/1.1, or h2 when `h2`.
    pub fn connector(&self, h2: bool) -> &TlsConnector {
        if h2 {
            &self.h2_connector
        } else {
            &self.connector
        }
    }

    /// The configured server name, if any.
    pub fn server_name(&self) -> Option<&str> {
        match &self.server_name {
            Some(ServerName::DnsName(name)) => Some(name.as_ref()),
            _ => None,
        }
    }

    /// The name `addr`'s certificate must carry.
    pub fn name_for(&self, addr: SocketAddr) -> ServerName<'static> {
        match (&self.server_name, self.backend_name(addr)) {
            (Some(name), _) | (None, Some((name, _))) => name.clone(),
            (None, None) => ServerName::IpAddress(addr.ip().into()),
        }
    }

    /// The host name of the backend at `addr` and its tag, when it was named `host:port`
    /// and no `server_name` is set.
    #[inline]
    fn backend_name(&self, addr: SocketAddr) -> Option<&(ServerName<'static>, u64)> {
        if self.names.is_empty() {
            return None;
        }
        self.names.get(&addr)
    }

    /// A pingora peer for `addr` with these settings.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let sni = match self
            .server_name
            .as_ref()
            .or_else(|| self.backend_name(addr).map(|(name, _)| name))
        {
            Some(ServerName::DnsName(name)) => name.as_ref().to_owned(),
            Some(ServerName::IpAddress(ip)) => IpAddr::from(*ip).to_string(),
            // pingora takes an empty SNI for "verify nothing": give it the address instead.
            Some(_) | None => addr.ip().to_string(),
        };
        let mut peer = HttpPeer::new(addr, true, sni);
        peer.options.verify_cert = self.verify;
        peer.options.verify_hostname = self.verify;
        peer.options.ca = self.pingora_ca.clone();
        peer.client_cert_key = self.pingora_client_cert.clone();
        // pingora's pool keys connections by address, name and verification flags, not
        // by the roots: without this a reload that changed only `ca` would go on using
        // connections verified under the old one.
        peer.group_key = self.id;
        peer
    }
}

/// The host name of each backend of `backends` named `host:port`, when `config` sets no
/// `server_name` (see [`TlsClient`]'s `names`).
fn backend_names(config: &UpstreamTlsConfig, backends: &[BackendConfig]) -> Names {
    match config.server_name {
        Some(_) => Default::default(),
        None => backends
            .iter()
            .filter_map(|b| {
                let host = &b.dns.as_ref()?.host;
                let name = ServerName::try_from(host.clone()).ok()?;
                let tag = name_tag(&name);
                Some((b.addr, (name, tag)))
            })
            .collect(),
    }
}

/// The signing form of a client certificate, which the config checked at load to be
/// usable; None (logged) if it is not after all.
fn certified_key(c: &ClientCert) -> Option<Arc<CertifiedKey>> {
    let provider = CryptoProvider::get_default()?;
    let key = PrivateKeyDer::try_from(c.key.to_vec())
        .map_err(|e| e.to_string())
        .and_then(|k| {
            provider
                .key_provider
                .load_private_key(k)
                .map_err(|e| e.to_string())
        });
    match key {
        Ok(key) => {
            let chain = c.chain.iter().map(|d| CertificateDer::from(d.clone()));
            Some(Arc::new(CertifiedKey::new(chain.collect(), key)))
        }
        Err(e) => {
            tracing::error!(cert = ?c, "client certificate key unusable, not sent: {e}");
            None
        }
    }
}

/// Presents the one client certificate to every backend that asks.
#[derive(Debug)]
struct AlwaysSend(Arc<CertifiedKey>);

impl ResolvesClientCert for AlwaysSend {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The roots `config` trusts: its `ca`, else the system's (read only when some upstream
/// verifies without a `ca`).
fn roots(config: &UpstreamTlsConfig) -> Arc<RootCertStore> {
    match &config.ca {
        Some(ca) => {
            let mut store = RootCertStore::empty();
            store.add_parsable_certificates(
                ca.certs.iter().map(|c| CertificateDer::from(c.clone())),
            );
            Arc::new(store)
        }
        None => system_roots(),
    }
}

/// The system's trusted roots (honouring `SSL_CERT_FILE` / `SSL_CERT_DIR`), read once.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = RootCertStore::empty();
            match pingora::tls::load_native_certs() {
                Ok(certs) => {
                    let (added, ignored) = store.add_parsable_certificates(certs);
                    tracing::debug!(added, ignored, "system root certificates loaded");
                }
                Err(e) => tracing::warn!(
                    "cannot read the system's root certificates ({e}): backends with \
                     `tls` and no `ca` will fail their handshakes"
                ),
            }
            Arc::new(store)
        })
        .clone()
}

/// `verify = false`: the connection is encrypted but the backend not authenticated, as
/// nginx's default `proxy_ssl_verify off`. Signatures are still checked, so that the
/// handshake itself is sound.
#[derive(Debug)]
struct AcceptAny {
    provider: Arc<CryptoProvider>,
}

impl AcceptAny {
    fn new() -> Self {
        let provider = CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        Self { provider }
    }
}

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::DnsOrigin;

    fn backend(addr: &str, host: Option<&str>) -> BackendConfig {
        BackendConfig {
            id: "x".to_owned(),
            addr: addr.parse().unwrap(),
            weight: 1,
            backup: false,
            max_conns: 0,
            dns: host.map(|h| DnsOrigin {
                host: h.to_owned(),
                entry: 0,
                id: None,
            }),
        }
    }

    #[test]
    fn a_named_backend_is_verified_for_its_name_unless_server_name_says_otherwise() {
        let backends = [
            backend("10.0.0.1:443", Some("node1.internal")),
            backend("10.0.0.2:443", None),
        ];
        let (named, bare) = (backends[0].addr, backends[1].addr);
        let config = UpstreamTlsConfig {
            server_name: None,
            ca: None,
            verify: true,
            client_cert: None,
        };
        let tls = TlsClient::new(&config, &backends);
        let dns = |n: &str| ServerName::try_from(n.to_owned()).unwrap();
        // As nginx's proxy_ssl_name defaults to the proxy_pass host.
        assert_eq!(tls.name_for(named), dns("node1.internal"));
        assert_eq!(tls.peer(named).sni, "node1.internal");
        assert_eq!(tls.name_for(bare), ServerName::IpAddress(bare.ip().into()));
        assert_eq!(tls.peer(bare).sni, "10.0.0.2");

        let config = UpstreamTlsConfig {
            server_name: Some("api.internal".to_owned()),
            ..config
        };
        let tls = TlsClient::new(&config, &backends);
        assert_eq!(tls.name_for(named), dns("api.internal"));
        assert_eq!(tls.peer(named).sni, "api.internal");
    }
}
