//! Throw-away test PKI: one CA and server certificates signed by it (rcgen, ring), written as
//! PEM files — independent of the proxy's own `gen-cert`, so TLS helpers can be tested alone
//! and SNI tests can mint certificates for any name.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SanType, SerialNumber,
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

impl TestCa {
    /// Issues a client certificate (mutual TLS) with the subject `CN=<cn>,O=Switchyard
    /// tests`, serial number `serial` (for [`TestCa::crl`]) and the URI name
    /// `spiffe://switchyard.test/<cn>`, written as `<cn>-client.pem` and `<cn>-client-key.pem`.
    pub fn issue_client(&self, cn: &str, serial: u64) -> ClientCert {
        let key = KeyPair::generate().expect("generating the client key");
        let mut params =
            CertificateParams::new(Vec::<String>::new()).expect("empty client params are valid");
        // Encoded O first, then CN: RFC 4514 writes the last first, `CN=<cn>,O=...`.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Switchyard tests");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://switchyard.test/{cn}")
                .try_into()
                .expect("a valid URI"),
        )];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signing the client cert");
        let cert_path = self.dir.join(format!("{cn}-client.pem"));
        let key_path = self.dir.join(format!("{cn}-client-key.pem"));
        std::fs::write(&cert_path, cert.pem()).expect("writing the client cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("writing the client key");
        ClientCert {
            cert: cert_path,
            key: key_path,
            der: cert.der().to_vec(),
        }
    }

    /// Writes a revocation list of this CA revoking the certificates with `serials` to
    /// `<dir>/crl.pem`, and returns its path.
    pub fn crl(&self, serials: &[u64]) -> PathBuf {
        let now = rcgen::date_time_ymd(2024, 1, 1);
        let crl = CertificateRevocationListParams {
            this_update: now,
            next_update: rcgen::date_time_ymd(2035, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|&s| RevokedCertParams {
                    serial_number: SerialNumber::from(s),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.cert, &self.key)
        .expect("signing the CRL");
        let path = self.dir.join("crl.pem");
        std::fs::write(&path, crl.pem().expect("CRL PEM")).expect("writing crl.pem");
        path
    }
}

/// A client certificate and its key, as files, and the certificate's DER.
#[derive(Clone, Debug)]
pub struct ClientCert {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM, PKCS#8).
    pub key: PathBuf,
    /// The certificate, DER (what `x-forwarded-client-cert`'s `Hash` is of).
    pub der: Vec<u8>,
}

impl ClientCert {
    /// The certificate and key in one PEM, as `reqwest::Identity::from_pem` takes them.
    pub fn identity_pem(&self) -> Vec<u8> {
        let mut pem = std::fs::read(&self.cert).expect("reading the client cert");
        pem.extend(std::fs::read(&self.key).expect("reading the client key"));
        pem
    }

    /// The `Hash=` of `x-forwarded-client-cert`: SHA-256 of the DER, lowercase hex.
    pub fn sha256_hex(&self) -> String {
        use sha2::Digest as _;
        sha2::Sha256::digest(&self.der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
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
