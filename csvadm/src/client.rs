//! The connection to a node's daemon for the admin commands (`cluster`, `node`, `owner`,
//! `volume`, `vhd`): where its admin socket is, connecting with the csv-api client, and
//! how a failure maps to an exit code.
//!
//! The socket comes from `--admin`, else `$CSV_ADMIN`, else the node config at
//! `$CSV_CONFIG` or `/etc/csv/node.toml` (`paths.admin_socket`, default
//! `<paths.data_dir>/admin.sock`).
//!
//! Exit codes: 0 success; 1 local error (usage, config); 2 the cluster refused the request;
//! 3 the daemon could not be reached; 4 unavailable or outcome unknown (no coordinator,
//! timeout: retry later).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use csv_api::ErrorCode;
use csv_api::admin::{Client, ClientError, Response};

/// Node configuration read to find the admin socket when neither `--admin` nor
/// `$CSV_CONFIG` says where it is.
pub const DEFAULT_CONFIG: &str = "/etc/csv/node.toml";

/// Exit code: a local error (bad argument, unreadable config).
pub const EXIT_LOCAL: u8 = 1;
/// Exit code: the cluster refused the request.
pub const EXIT_REFUSED: u8 = 2;
/// Exit code: the daemon could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: unavailable now or outcome unknown.
pub const EXIT_UNAVAILABLE: u8 = 4;

/// A failed admin command: the exit code and the message printed after `csvadm: error: `.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// A local error ([`EXIT_LOCAL`]).
    pub fn local(message: String) -> Failure {
        Failure {
            code: EXIT_LOCAL,
            message,
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        failure(e)
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Failure {
        Failure::local(format!("JSON output: {e}"))
    }
}

/// The failure of a client call, with its exit code.
pub fn failure(e: ClientError) -> Failure {
    let code = match &e {
        ClientError::Connect { .. } => EXIT_UNREACHABLE,
        ClientError::Api(a) => match a.code() {
            ErrorCode::NoLeader
            | ErrorCode::NotLeader
            | ErrorCode::Dropped
            | ErrorCode::Busy
            | ErrorCode::Timeout
            | ErrorCode::Indeterminate
            | ErrorCode::Stopped
            | ErrorCode::Unavailable => EXIT_UNAVAILABLE,
            _ => EXIT_REFUSED,
        },
        ClientError::Frame(_) | ClientError::Closed => EXIT_UNAVAILABLE,
        ClientError::Protocol(_) => EXIT_REFUSED,
    };
    let message = match &e {
        ClientError::Api(a) => format!("{} ({}): {}", a.code().name(), a.code, a.message),
        other => other.to_string(),
    };
    Failure { code, message }
}

/// An answer of a kind the request does not call for.
pub fn unexpected(r: &Response) -> Failure {
    Failure {
        code: EXIT_REFUSED,
        message: format!("unexpected answer {r:?}"),
    }
}

/// Connects to the admin socket at `socket`.
pub fn connect(socket: &Path) -> Result<Client, Failure> {
    Ok(Client::connect(socket)?)
}

/// Finds the admin socket (from `explicit`, the `--admin` value, or the node config) and
/// runs `command` with it; a failure is printed and becomes the exit code.
pub fn run(
    explicit: Option<PathBuf>,
    command: impl FnOnce(&Path) -> Result<(), Failure>,
) -> Result<u8> {
    let socket = admin_socket(explicit)?;
    match command(&socket) {
        Ok(()) => Ok(0),
        Err(e) => {
            eprintln!("csvadm: error: {}", e.message);
            Ok(e.code)
        }
    }
}

/// Where the admin socket is.
pub fn admin_socket(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let cfg = std::env::var_os("CSV_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    socket_from_config(&cfg)
}

fn socket_from_config(path: &Path) -> Result<PathBuf> {
    #[derive(serde::Deserialize)]
    struct Paths {
        data_dir: Option<PathBuf>,
        admin_socket: Option<PathBuf>,
    }
    #[derive(serde::Deserialize)]
    struct File {
        paths: Paths,
    }
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "read node config {} (give --admin SOCKET, or set CSV_ADMIN or CSV_CONFIG)",
            path.display()
        )
    })?;
    let f: File =
        toml::from_str(&text).with_context(|| format!("parse node config {}", path.display()))?;
    f.paths
        .admin_socket
        .or_else(|| f.paths.data_dir.map(|d| d.join("admin.sock")))
        .ok_or_else(|| {
            anyhow!(
                "{}: no paths.admin_socket or paths.data_dir",
                path.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_from_config_file() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("n.toml");
        std::fs::write(&p, "[node]\nid=1\n[paths]\ndata_dir = \"/d\"\n").expect("write");
        assert_eq!(
            socket_from_config(&p).expect("ok"),
            PathBuf::from("/d/admin.sock")
        );
        std::fs::write(&p, "[paths]\ndata_dir = \"/d\"\nadmin_socket = \"/s\"\n").expect("write");
        assert_eq!(socket_from_config(&p).expect("ok"), PathBuf::from("/s"));
        assert!(socket_from_config(&d.path().join("none")).is_err());
        assert_eq!(
            admin_socket(Some(PathBuf::from("/x"))).expect("explicit"),
            PathBuf::from("/x")
        );
    }

    #[test]
    fn failures_map_to_exit_codes() {
        let api = |code| ClientError::Api(csv_api::error::ApiError::new(code, "x"));
        let f = failure(api(ErrorCode::NoLeader));
        assert_eq!(f.code, EXIT_UNAVAILABLE);
        assert_eq!(f.message, "no_leader (1): x");
        assert_eq!(failure(api(ErrorCode::NotFound)).code, EXIT_REFUSED);
        assert_eq!(failure(ClientError::Closed).code, EXIT_UNAVAILABLE);
        assert_eq!(
            failure(ClientError::Protocol("p".into())).code,
            EXIT_REFUSED
        );
        let missing = connect(Path::new("/nonexistent/csvadm-test.sock")).err();
        assert_eq!(missing.map(|f| f.code), Some(EXIT_UNREACHABLE));
    }
}
