//! The cluster's certificate authority (`csvadm cluster certs init|issue`).
//!
//! A directory holds the CA (`ca.pem`, `ca.key`) and what it issued: `node-<id>.pem` and
//! `node-<id>.key` for nodes (DNS name [`crate::node_name`] plus the host names and
//! addresses given, usable as server and client), `client-<name>.pem`/`.key` for NBD
//! clients such as QEMU. Keys are ECDSA P-256, written owner-only and never overwritten.

use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::peer::node_name;

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file to write exists already (certificates and keys are never overwritten).
    #[error("{0} exists already; remove it first to replace it")]
    Exists(PathBuf),
    /// No CA in the directory.
    #[error("no CA in {0}: run `csvadm cluster certs init --dir {0}` first")]
    NoCa(PathBuf),
    /// A bad argument.
    #[error("{0}")]
    Invalid(String),
    /// rcgen refused.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// Files of one issued certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key: PathBuf,
}

/// The CA certificate's path in `dir`.
pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

fn ca_key_path(dir: &Path) -> PathBuf {
    dir.join("ca.key")
}

/// Node `id`'s certificate and key paths in `dir`.
pub fn node_paths(dir: &Path, id: u64) -> Issued {
    Issued {
        cert: dir.join(format!("node-{id}.pem")),
        key: dir.join(format!("node-{id}.key")),
    }
}

fn validity(p: &mut CertificateParams, days: u32) -> Result<(), PkiError> {
    if days == 0 || days > 36_500 {
        return Err(PkiError::Invalid(format!(
            "validity of {days} days: 1 to 36500"
        )));
    }
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks a little behind.
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(i64::from(days));
    Ok(())
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                PkiError::Exists(path.to_owned())
            } else {
                io(e)
            }
        })?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

fn refuse_existing(paths: &[&Path]) -> Result<(), PkiError> {
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(PkiError::Exists(p.to_path_buf())),
        None => Ok(()),
    }
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PkiError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// Creates a CA named `name` in `dir` (made 0700 when missing), valid for `days`.
pub fn init_ca(dir: &Path, name: &str, days: u32) -> Result<Issued, PkiError> {
    let out = Issued {
        cert: ca_cert_path(dir),
        key: ca_key_path(dir),
    };
    refuse_existing(&[&out.cert, &out.key])?;
    if name.trim().is_empty() {
        return Err(PkiError::Invalid("empty CA name".into()));
    }
    create_dir(dir)?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p, days)?;
    let cert = p.self_signed(&key)?;
    // The key first: a CA certificate without its key would be useless.
    write_new(&out.key, &key.serialize_pem(), 0o600)?;
    write_new(&out.cert, &cert.pem(), 0o644)?;
    Ok(out)
}

fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                PkiError::NoCa(dir.to_owned())
            } else {
                PkiError::Io { path: p, source }
            }
        })
    };
    let cert = read(ca_cert_path(dir))?;
    let key = KeyPair::from_pem(&read(ca_key_path(dir))?)?;
    Ok(Issuer::from_ca_cert_pem(&cert, key)?)
}

fn sans(names: &[String]) -> Result<Vec<SanType>, PkiError> {
    names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) if !is_host_name(n) => Err(PkiError::Invalid(format!(
                "{n:?} is neither a host name nor an IP address"
            ))),
            Err(_) => {
                n.clone().try_into().map(SanType::DnsName).map_err(|_| {
                    PkiError::Invalid(format!("{n:?} is neither a host name nor an IP"))
                })
            }
        })
        .collect()
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
fn is_host_name(n: &str) -> bool {
    n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn issue(
    dir: &Path,
    out: &Issued,
    common_name: &str,
    names: &[String],
    ekus: Vec<ExtendedKeyUsagePurpose>,
    days: u32,
) -> Result<(), PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.subject_alt_names = sans(names)?;
    validity(&mut p, days)?;
    refuse_existing(&[&out.cert, &out.key])?;
    let issuer = load_issuer(dir)?;
    let key = KeyPair::generate()?;
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = ekus;
    p.use_authority_key_identifier_extension = true;
    let cert = p.signed_by(&key, &issuer)?;
    write_new(&out.key, &key.serialize_pem(), 0o600)?;
    write_new(&out.cert, &cert.pem(), 0o644)
}

/// Issues node `id`'s certificate (server and client use) for its cluster name plus
/// `hosts` (names or addresses, for NBD clients that check the host they dial).
pub fn issue_node(dir: &Path, id: u64, hosts: &[String], days: u32) -> Result<Issued, PkiError> {
    if id == 0 {
        return Err(PkiError::Invalid("node id 0".into()));
    }
    if let Some(h) = hosts
        .iter()
        .find(|h| h.to_ascii_lowercase().ends_with(".csv"))
    {
        // Such a name could make this certificate pass as another node.
        return Err(PkiError::Invalid(format!(
            "host {h:?}: names under .csv are the nodes' own"
        )));
    }
    let out = node_paths(dir, id);
    let mut names = vec![node_name(id)];
    names.extend(hosts.iter().cloned());
    issue(
        dir,
        &out,
        &node_name(id),
        &names,
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        days,
    )?;
    Ok(out)
}

/// Issues a client-only certificate named `name` (an NBD client such as QEMU); it can
/// never pass as a node, whose name it cannot carry.
pub fn issue_client(dir: &Path, name: &str, days: u32) -> Result<Issued, PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(PkiError::Invalid(format!(
            "client name {name:?}: 1 to 64 of [A-Za-z0-9_-]"
        )));
    }
    let out = Issued {
        cert: dir.join(format!("client-{name}.pem")),
        key: dir.join(format!("client-{name}.key")),
    };
    issue(
        dir,
        &out,
        &format!("client {name}"),
        &[],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        days,
    )?;
    Ok(out)
}
