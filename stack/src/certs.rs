//! The development CA and localhost certificate in `certs/`: made with the proxy's own
//! generator (`proxy gen-cert`) when missing, and how to trust the CA.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// The files the proxy's TLS listener and the clients need.
#[derive(Debug, Clone)]
pub struct DevCerts {
    /// The CA certificate to trust (`ca.pem`).
    pub ca: PathBuf,
    /// The localhost chain (`localhost.pem`).
    pub cert: PathBuf,
    /// Its private key (`localhost-key.pem`, git-ignored).
    pub key: PathBuf,
    /// Whether the CA was made just now (and needs trusting); a localhost certificate made
    /// for a CA that was there already does not.
    pub created: bool,
}

/// Uses the certificate in `dir` when all three files exist, else makes them (an existing CA
/// key is kept, so a CA that browsers already trust stays valid). Paths come back absolute,
/// since the proxy child reads them from its own working directory.
pub fn ensure(dir: &Path) -> Result<DevCerts> {
    let files = ["ca.pem", "localhost.pem", "localhost-key.pem"];
    let mut created = false;
    if !files.iter().all(|f| dir.join(f).is_file()) {
        created = proxy::tls::gen_cert(dir)
            .with_context(|| format!("creating the dev certificate in {}", dir.display()))?;
    }
    let dir = dir
        .canonicalize()
        .with_context(|| format!("reading {}", dir.display()))?;
    Ok(DevCerts {
        ca: dir.join(files[0]),
        cert: dir.join(files[1]),
        key: dir.join(files[2]),
        created,
    })
}

/// How to make tools and browsers trust the CA, for the banner.
pub fn trust_help(ca: &Path, https_port: u16) -> String {
    let dir = ca.parent().unwrap_or(ca).display();
    let ca = ca.display();
    format!(
        "Trust the development CA once, so that browsers accept https://localhost:{https_port}/\n\
         \x20 curl:            curl --cacert {ca} https://localhost:{https_port}/healthz\n\
         \x20 Debian/Ubuntu:   sudo cp {ca} /usr/local/share/ca-certificates/switchyard-dev.crt \
         && sudo update-ca-certificates\n\
         \x20 Chromium/Chrome: Settings > Privacy and security > Security > Manage certificates \
         > Authorities > Import {ca}\n\
         \x20 Firefox:         Settings > Certificates > View Certificates > Authorities > Import {ca}\n\
         \x20 The private keys stay in {dir} (git-ignored)."
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let certs_dir = dir.path().join("certs");
        let first = ensure(&certs_dir).unwrap();
        assert!(first.created);
        assert!(first.ca.is_absolute() && first.key.is_file());
        let ca = std::fs::read_to_string(&first.ca).unwrap();
        let second = ensure(&certs_dir).unwrap();
        assert!(!second.created);
        assert_eq!(std::fs::read_to_string(&second.ca).unwrap(), ca);
        // A lost localhost key is made again, for the same CA: nothing new to trust.
        std::fs::remove_file(&second.key).unwrap();
        let third = ensure(&certs_dir).unwrap();
        assert!(!third.created && third.key.is_file());
        assert_eq!(std::fs::read_to_string(&third.ca).unwrap(), ca);
        let help = trust_help(&second.ca, 8443);
        assert!(help.contains("--cacert") && help.contains("update-ca-certificates"));
    }
}
