//! Readiness: the stack is up when `https://localhost:<port>/healthz` answers 200 through the
//! proxy (trusting the dev CA, as a browser that trusts it would) and the proxy's admin
//! `/status` shows every chat node up. Bounded by a deadline.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::ports::connectable;

/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(100);

/// What was last seen, for the timeout message.
#[derive(Debug, Default)]
struct Seen {
    healthz: String,
    up: usize,
}

/// Waits until the proxy serves `/healthz` over TLS and reports `nodes` backends up.
pub async fn wait_for_proxy(
    https: SocketAddr,
    admin: SocketAddr,
    ca: &Path,
    nodes: usize,
    timeout: Duration,
) -> Result<()> {
    let ca_pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .resolve("localhost", connectable(https));
    for cert in reqwest::Certificate::from_pem_bundle(&ca_pem)
        .with_context(|| format!("reading {}", ca.display()))?
    {
        builder = builder.add_root_certificate(cert);
    }
    let client = builder.build().context("building an HTTPS client")?;
    let healthz = format!("https://localhost:{}/healthz", https.port());
    let status = format!("http://{}/status", connectable(admin));
    let deadline = Instant::now() + timeout;
    let mut seen = Seen::default();
    loop {
        seen.healthz = match client.get(&healthz).send().await {
            Ok(r) => r.status().to_string(),
            Err(e) => format!("{e}"),
        };
        if seen.healthz.starts_with("200") {
            seen.up = backends_up(&client, &status).await;
            if seen.up >= nodes {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "not ready after {timeout:?}: GET {healthz} gave {}, {} of {nodes} nodes up \
                 in {status}",
                seen.healthz,
                seen.up
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How many backends the admin `/status` shows with `"health": "up"`.
async fn backends_up(client: &reqwest::Client, url: &str) -> usize {
    let Ok(reply) = client.get(url).send().await else {
        return 0;
    };
    let Ok(json) = reply.json::<serde_json::Value>().await else {
        return 0;
    };
    count_up(&json)
}

fn count_up(status: &serde_json::Value) -> usize {
    status["upstreams"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|u| u["backends"].as_array().into_iter().flatten())
        .filter(|b| b["health"] == "up")
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_backends_that_are_up_count() {
        let status = serde_json::json!({"upstreams": [{"backends": [
            {"id": "n1", "health": "up"},
            {"id": "n2", "health": "pending"},
            {"id": "n3", "health": "up"},
        ]}]});
        assert_eq!(count_up(&status), 2);
        assert_eq!(count_up(&serde_json::json!({})), 0);
    }
}
