//! Throw-away test PKI: one CA and server certificates signed by it (rcgen, ring), written as
//! PEM files — independent of the proxy's own `gen-cert`, so TLS helpers can be tested alone
//! and SNI tests can mint certificates for any name.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A test CA whose key stays in memory, to issue any number of server certificates.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
    dir: PathBuf,
    /// The CA certificate file (`<dir>/ca.pem`).
    pub pem: PathBuf,
}

impl TestCa {
    /// Makes a CA and writes its certificate to `<dir>/ca.pem`.
    pub fn new(dir: &Path) -> TestCa {
        let key = KeyPair::generate().expect("generating the CA key");
        let mut params =
            CertificateParams::new(Vec::<String>::new()).expect("empty CA params are valid");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Switchyard test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-signing the CA");
        let pem = dir.join("ca.pem");
        std::fs::write(&pem, cert.pem()).expect("writing ca.pem");
        TestCa {
            cert,
            key,
            dir: dir.to_path_buf(),
            pem,
        }
    }

    /// Issues a server certificate for `names` (DNS names or IP addresses), written as
    /// `<first name>.pem` and `<first name>-key.pem`; returns `(cert, key)` paths.
    pub fn issue(&self, names: &[&str]) -> (PathBuf, PathBuf) {
        let first = names.first().copied().unwrap_or("localhost");
        let key = KeyPair::generate().expect("generating the server key");
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("server names are valid");
        params.distinguished_name.push(DnType::CommonName, first);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signing the server cert");
        let cert_path = self.dir.join(format!("{first}.pem"));
        let key_path = self.dir.join(format!("{first}-key.pem"));
        std::fs::write(&cert_path, cert.pem()).expect("writing the server cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("writing the server key");
        (cert_path, key_path)
    }
}

/// A CA and one server certificate, as files in a directory.
#[derive(Clone, Debug)]
pub struct Certs {
    /// The CA certificate (PEM), to trust in clients.
    pub ca: PathBuf,
    /// The server certificate (PEM).
    pub cert: PathBuf,
    /// The server key (PEM, PKCS#8).
    pub key: PathBuf,
}

impl Certs {
    /// Makes a CA and a server certificate for `names` (e.g. `["localhost", "127.0.0.1"]`) in
    /// `dir`: `ca.pem`, `<first name>.pem`, `<first name>-key.pem`.
    pub fn generate(dir: &Path, names: &[&str]) -> Certs {
        let ca = TestCa::new(dir);
        let (cert, key) = ca.issue(names);
        Certs {
            ca: ca.pem,
            cert,
            key,
        }
    }

    /// The CA certificate's PEM bytes.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.ca).expect("reading ca.pem")
    }
}
