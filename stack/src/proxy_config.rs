//! The proxy's configuration for the stack: HTTPS with the dev certificate, HTTP redirecting
//! to it, the admin API with a token, one upstream of chat nodes with active health checks on
//! `/healthz` that fail open, and a sticky-cookie key when that strategy is chosen. Secrets go into the file
//! (kept in a private temporary directory) so that it can be validated in-process first.

use std::net::SocketAddr;
use std::path::Path;

use proxy::balance::StrategyKind;

/// What the generated config needs.
#[derive(Debug, Clone)]
pub struct StackProxy<'a> {
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub cert: &'a Path,
    pub key: &'a Path,
    pub strategy: StrategyKind,
    /// `(id, addr)` of each chat node.
    pub nodes: &'a [(String, SocketAddr)],
    pub admin_token: &'a str,
    /// Used only with `sticky_cookie`.
    pub sticky_key: &'a str,
}

/// A TOML string literal (quotes and escapes done by the `toml` crate).
fn lit(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

impl StackProxy<'_> {
    /// The TOML text.
    pub fn toml(&self) -> String {
        let backends: Vec<String> = self
            .nodes
            .iter()
            .map(|(id, addr)| format!("{{ addr = {}, id = {} }}", lit(&addr.to_string()), lit(id)))
            .collect();
        // A short grace: `switchyard` stops the proxy before the nodes, and open WebSockets
        // would otherwise hold it for the default 5 s.
        let mut out = format!(
            "# Written by `switchyard up`; regenerated on every start.\n\
             [server]\n\
             grace_period = \"1s\"\n\n\
             [admin]\n\
             listen = {admin}\n\
             token = {token}\n\n\
             [[listeners]]\n\
             listen = {http}\n\
             redirect_https_port = {https_port}\n\n\
             [[listeners]]\n\
             listen = {https}\n\
             tls = {{ cert = {cert}, key = {key} }}\n\n\
             [upstreams.chat]\n\
             strategy = {strategy}\n\
             backends = [\n  {backends},\n]\n\n\
             [upstreams.chat.health]\n\
             kind = \"http\"\n\
             path = \"/healthz\"\n\
             interval = \"1s\"\n\
             timeout = \"1s\"\n\
             rise = 1\n\
             fall = 2\n\
             # A node says 503 while Redis is unreachable, so that the proxy prefers one\n\
             # that can reach it; when none can, they still serve the page and keep\n\
             # their sessions, and are back the moment Redis is.\n\
             fail_open = true\n",
            admin = lit(&self.admin.to_string()),
            token = lit(self.admin_token),
            http = lit(&self.http.to_string()),
            https_port = self.https.port(),
            https = lit(&self.https.to_string()),
            cert = lit(&self.cert.to_string_lossy()),
            key = lit(&self.key.to_string_lossy()),
            strategy = lit(self.strategy.as_str()),
            backends = backends.join(",\n  "),
        );
        if self.strategy == StrategyKind::StickyCookie {
            out.push_str(&format!(
                "\n[upstreams.chat.sticky]\nkey = {}\n",
                lit(self.sticky_key)
            ));
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_strategy_gives_a_config_the_proxy_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let certs = crate::certs::ensure(&dir.path().join("certs")).unwrap();
        let nodes: Vec<(String, SocketAddr)> = (1..=3)
            .map(|i| {
                (
                    format!("n{i}"),
                    SocketAddr::from(([127, 0, 0, 1], 9100 + i)),
                )
            })
            .collect();
        for strategy in StrategyKind::ALL {
            let toml = StackProxy {
                https: "127.0.0.1:8443".parse().unwrap(),
                http: "127.0.0.1:8080".parse().unwrap(),
                admin: "127.0.0.1:9900".parse().unwrap(),
                cert: &certs.cert,
                key: &certs.key,
                strategy,
                nodes: &nodes,
                admin_token: "t\"oken\\",
                sticky_key: "0123456789abcdef0123456789abcdef",
            }
            .toml();
            let path = dir.path().join("proxy.toml");
            std::fs::write(&path, &toml).unwrap();
            let config = match proxy::config::Config::load(&path) {
                Ok(c) => c,
                Err(e) => panic!("{strategy:?}: {e}\n{toml}"),
            };
            assert_eq!(config.listeners.len(), 2, "{strategy:?}");
            let chat = config.upstream("chat").unwrap();
            assert!(chat.health.active.is_some() && chat.health.fail_open);
            assert_eq!(
                config.admin.as_ref().and_then(|a| a.token.as_deref()),
                Some("t\"oken\\")
            );
        }
    }
}
