//! Certificate and key files named by the config: a listener's certificate and key as the
//! listener loads them, and an upstream's CA and client certificate as the config check
//! reads them. The fuzzer writes DER; it is wrapped in PEM here, so that mutations reach
//! the X.509 and key parsers rather than break the base64.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use proxy::config::Config;

const KEY_LABELS: [&str; 3] = ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"];

/// This process's own directory for the two files.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("switchyard-fuzz-tls-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("a temporary directory");
        d
    })
}

fn pem(label: &str, ders: &[Vec<u8>]) -> Vec<u8> {
    let mut out = String::new();
    for der in ders {
        out.push_str(&format!("-----BEGIN {label}-----\n"));
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
    }
    out.into_bytes()
}

// Input: a key label byte, the certificate's DER length (2 bytes, big-endian), its DER,
// then the key's DER: plain, so that seeds are real files' DER as they are.
fuzz_target!(|data: &[u8]| {
    let [label, hi, lo, rest @ ..] = data else {
        return;
    };
    let (cert_der, key) =
        rest.split_at(usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len()));
    let chain = [cert_der.to_vec()];
    let cert = dir().join("cert.pem");
    let key_path = dir().join("key.pem");
    let label = KEY_LABELS[usize::from(*label) % KEY_LABELS.len()];
    std::fs::write(&cert, pem("CERTIFICATE", &chain)).expect("write cert.pem");
    std::fs::write(&key_path, pem(label, &[key.to_vec()])).expect("write key.pem");

    let _ = proxy::tls::load_certified_key(&cert, &key_path);
    let (c, k) = (cert.display(), key_path.display());
    let text = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:8443\"\ntls = {{ cert = \"{c}\", key = \"{k}\" }}\n\
         [upstreams.a]\nbackends = [{{ addr = \"127.0.0.1:9000\" }}]\n\
         [upstreams.a.tls]\nca = \"{c}\"\ncert = \"{c}\"\nkey = \"{k}\"\n\
         [[routes]]\nupstream = \"a\"\n"
    );
    if let Err(errors) = Config::from_toml_str(&text, None) {
        let _ = errors.to_string();
    }
});
