//! Test PKI: a CA, a server certificate for localhost/127.0.0.1 and a client
//! certificate, written in the layout qemu (`tls-creds-x509,dir=`) and libnbd
//! (`tls-certificates=`) read: ca-cert.pem, server-cert.pem, server-key.pem,
//! client-cert.pem, client-key.pem.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Paths of a generated PKI.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn leaf(
    name: &str,
    sans: &[&str],
    eku: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("params");
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![eku];
    let cert = p.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

/// Generates a PKI in `dir`.
pub fn generate(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.distinguished_name
        .push(DnType::CommonName, "csv test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca, ca_key);
    let (sc, sk) = leaf(
        "localhost",
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
        &issuer,
    );
    let (cc, ck) = leaf(
        "client",
        &["client"],
        ExtendedKeyUsagePurpose::ClientAuth,
        &issuer,
    );
    let pki = Pki {
        dir: dir.to_owned(),
        ca: dir.join("ca-cert.pem"),
        server_cert: dir.join("server-cert.pem"),
        server_key: dir.join("server-key.pem"),
        client_cert: dir.join("client-cert.pem"),
        client_key: dir.join("client-key.pem"),
    };
    std::fs::write(&pki.ca, ca_cert.pem()).expect("write");
    std::fs::write(&pki.server_cert, sc).expect("write");
    std::fs::write(&pki.server_key, sk).expect("write");
    std::fs::write(&pki.client_cert, cc).expect("write");
    std::fs::write(&pki.client_key, ck).expect("write");
    pki
}
