//! `csvadm cluster certs init|issue|issue-client`: the cluster CA for mutual TLS between
//! nodes and for NBD over TCP (offline: files in a directory, no node involved).
//! Certificates are never overwritten; keys are written owner-only.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use csv_tls::pki;
use serde::Serialize;

use crate::output::{Output, print};

/// Default validity of the CA (ten years).
const CA_DAYS: u32 = 3650;
/// Default validity of an issued certificate (825 days, the usual server maximum).
const LEAF_DAYS: u32 = 825;

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Create the cluster CA (ca.pem, ca.key) in DIR.
    Init {
        /// Directory of the CA and what it issues (created 0700).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "csv cluster CA")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = CA_DAYS)]
        days: u32,
    },
    /// Issue node NODE's certificate (node-NODE.pem, node-NODE.key), for mutual TLS
    /// between nodes and as the server certificate of its NBD over TCP.
    Issue {
        /// The node id.
        node: u64,
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Also valid for this host name or address (NBD clients check the host they
        /// dial); repeatable.
        #[arg(long = "host", value_name = "NAME|IP")]
        hosts: Vec<String>,
        #[arg(long, default_value_t = LEAF_DAYS)]
        days: u32,
    },
    /// Issue a client certificate (client-NAME.pem, .key) for an NBD client such as QEMU.
    IssueClient {
        /// Client name (letters, digits, - and _).
        name: String,
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[arg(long, default_value_t = LEAF_DAYS)]
        days: u32,
    },
}

/// What was written.
#[derive(Debug, Serialize)]
struct CertView {
    what: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// For a node: the `[tls]` section of its configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<String>,
}

impl fmt::Display for CertView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.what)?;
        writeln!(f, "  certificate: {}", self.cert.display())?;
        write!(f, "  key:         {} (mode 0600)", self.key.display())?;
        if let Some(c) = &self.config {
            write!(
                f,
                "\n\nCopy the three files to the node and put in its configuration:\n{c}"
            )?;
        }
        Ok(())
    }
}

fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(dir).with_context(|| format!("{}", dir.display()))
}

/// Runs a `cluster certs` command.
pub fn run(cmd: CertsCommand, json: bool) -> anyhow::Result<u8> {
    let out = Output::json_if(json);
    let view = match cmd {
        CertsCommand::Init { dir, name, days } => {
            let dir = absolute(&dir)?;
            let i = pki::init_ca(&dir, &name, days)?;
            CertView {
                what: format!("cluster CA {name:?} created"),
                ca: i.cert.clone(),
                cert: i.cert,
                key: i.key,
                config: None,
            }
        }
        CertsCommand::Issue {
            node,
            dir,
            hosts,
            days,
        } => {
            let dir = absolute(&dir)?;
            let i = pki::issue_node(&dir, node, &hosts, days)?;
            let ca = pki::ca_cert_path(&dir);
            let config = format!(
                "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"",
                ca.display(),
                i.cert.display(),
                i.key.display()
            );
            CertView {
                what: format!(
                    "certificate of node {node} ({}) issued",
                    csv_tls::node_name(node)
                ),
                ca,
                cert: i.cert,
                key: i.key,
                config: Some(config),
            }
        }
        CertsCommand::IssueClient { name, dir, days } => {
            let dir = absolute(&dir)?;
            let i = pki::issue_client(&dir, &name, days)?;
            CertView {
                what: format!("client certificate {name:?} issued"),
                ca: pki::ca_cert_path(&dir),
                cert: i.cert,
                key: i.key,
                config: None,
            }
        }
    };
    print(&view, out)?;
    Ok(0)
}
