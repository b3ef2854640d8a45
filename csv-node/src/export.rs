//! `csv-node export`: serve image files over NBD (Unix socket, TCP, or sockets from
//! systemd socket activation) until SIGINT/SIGTERM, then shut down gracefully.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use csv_node::data::file_device::IoMode;
use nbd::server::{ExportOptions, Server, ServerConfig, TlsPolicy, listener};

use crate::image::{self, Format};

/// How long a graceful shutdown may take before the process exits anyway.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsArg {
    /// No TLS (STARTTLS is refused).
    Off,
    /// Clients may upgrade with STARTTLS.
    On,
    /// Clients must upgrade before anything else (FORCEDTLS).
    Require,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Listen on this Unix socket (created with mode --socket-mode; a stale socket file
    /// is replaced).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Mode of the Unix socket file, in octal.
    #[arg(long, value_name = "MODE", default_value = "600", value_parser = parse_mode)]
    socket_mode: u32,
    /// Listen on TCP (repeatable).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    /// Refuse writes on every export.
    #[arg(long, short = 'r')]
    read_only: bool,
    /// Image format (auto detects VHD by its footer).
    #[arg(long, value_enum, default_value = "auto")]
    format: Format,
    /// TLS mode (defaults to "on" when --tls-cert is given). TCP listeners require
    /// TLS: without credentials, serving TCP needs an explicit `--tls off`.
    #[arg(long, value_enum)]
    tls: Option<TlsArg>,
    /// Server certificate chain (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// Connections served at once.
    #[arg(long, default_value_t = nbd::server::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Where file I/O runs: auto (non-blocking attempt, then thread pool), inline, pool.
    #[arg(long, default_value = "auto", hide = true)]
    io_mode: IoMode,
    /// Runtime worker threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// Images to export, each FILE or FILE=NAME (NAME defaults to the file name). A
    /// single image is also the default export "".
    #[arg(required = true, value_name = "FILE[=NAME]")]
    images: Vec<String>,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode"))
}

/// `FILE=NAME` splits at the last '=' unless the whole argument names an existing file.
fn parse_image_arg(arg: &str) -> (PathBuf, Option<String>) {
    if !Path::new(arg).exists()
        && let Some((file, name)) = arg.rsplit_once('=')
    {
        return (PathBuf::from(file), Some(name.to_owned()));
    }
    (PathBuf::from(arg), None)
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        rt.worker_threads(n);
    }
    let rt = rt.build().context("start the async runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: ExportArgs) -> anyhow::Result<()> {
    let tls_cfg = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(
            nbd::tls::server_config(c, k, args.tls_ca.as_deref())
                .context("load TLS credentials")?,
        ),
        _ => None,
    };
    let tls_policy = match (args.tls, tls_cfg.is_some()) {
        (None, false) | (Some(TlsArg::Off), false) => TlsPolicy::Off,
        (None, true) | (Some(TlsArg::On), true) => TlsPolicy::Optional,
        (Some(TlsArg::Require), true) => TlsPolicy::Required,
        (Some(TlsArg::Off), true) => bail!("--tls off with --tls-cert makes no sense"),
        (Some(_), false) => bail!("--tls on/require needs --tls-cert and --tls-key"),
    };
    let config = ServerConfig {
        max_connections: args.max_connections,
        tls: if tls_policy == TlsPolicy::Off {
            None
        } else {
            tls_cfg
        },
        tls_policy,
        ..ServerConfig::default()
    };
    let server = Server::new(config).context("server configuration")?;

    let parsed: Vec<(PathBuf, Option<String>)> =
        args.images.iter().map(|a| parse_image_arg(a)).collect();
    let single_unnamed = parsed.len() == 1 && parsed[0].1.is_none();
    let mut names = BTreeSet::new();
    let mut devices = Vec::new();
    for (path, name) in &parsed {
        let name = match name {
            Some(n) => n.clone(),
            None => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .with_context(|| format!("{} has no file name", path.display()))?,
        };
        if !names.insert(name.clone()) {
            bail!("two images are exported as {name:?}: give one a name with FILE=NAME");
        }
        let (dev, format) = image::open(path, args.format, args.read_only, args.io_mode)?;
        devices.push((path.clone(), dev.clone()));
        let options = ExportOptions {
            read_only: args.read_only,
            description: format!("{} ({format:?})", path.display()),
            observer: None,
        };
        server
            .add_export(&name, dev.clone(), options.clone())
            .with_context(|| format!("export {}", path.display()))?;
        if single_unnamed && !name.is_empty() {
            server
                .add_export("", dev, options)
                .context("add the default export")?;
        }
    }

    let mut listeners = Vec::new();
    if let Some(p) = &args.socket {
        listeners.push(
            listener::bind_unix(p, args.socket_mode)
                .with_context(|| format!("listen on {}", p.display()))?,
        );
    }
    for a in &args.listen {
        listeners.push(
            listener::bind_tcp(*a)
                .await
                .with_context(|| format!("listen on {a}"))?,
        );
    }
    if listeners.is_empty() {
        match listener::from_systemd().context("socket activation")? {
            Some(l) => listeners = l,
            None => bail!("nowhere to listen: give --socket PATH or --listen ADDR:PORT"),
        }
    }
    // NBD over TCP carries VM disks across the network: TLS unless asked otherwise.
    let tcp = listeners
        .iter()
        .any(|l| matches!(l, listener::Listener::Tcp(_)));
    if tcp && tls_policy == TlsPolicy::Off && args.tls != Some(TlsArg::Off) {
        bail!(
            "NBD over TCP requires TLS: give --tls-cert and --tls-key (and --tls-ca to \
             require client certificates), or --tls off to serve plaintext"
        );
    }
    let serving = listeners
        .iter()
        .map(|l| l.describe())
        .collect::<Vec<_>>()
        .join(", ");
    for l in listeners {
        server.spawn_listener(l);
    }
    // The handlers first: a service manager may stop us as soon as we are ready.
    let mut signals = Signals::new()?;
    // Under systemd (Type=notify, packaging/systemd/csv-node-export@.service): ready
    // once every listener runs. Outside systemd, nothing is sent.
    notify(
        true,
        format!("serving {} exports on {serving}", names.len()),
    )
    .await;

    signals.recv().await;
    tracing::info!("shutting down");
    notify(false, "shutting down".into()).await;
    server.shutdown();
    tokio::select! {
        _ = server.wait() => {}
        _ = tokio::time::sleep(SHUTDOWN_DEADLINE) => tracing::warn!("shutdown deadline passed"),
        () = signals.recv() => tracing::warn!("second signal: exiting now"),
    }
    // Writes a client never flushed (and image metadata such as a VHD's BAT) are made
    // durable before the process goes.
    let mut failed = false;
    for (path, dev) in devices {
        if dev.capabilities().read_only {
            continue;
        }
        if let Err(e) = dev.flush().await {
            tracing::error!(image = %path.display(), "final flush failed: {e}");
            failed = true;
        }
    }
    if failed {
        bail!("some images could not be flushed at shutdown");
    }
    Ok(())
}

/// `READY=1` (or `STOPPING=1`) with `STATUS=` to systemd, from the blocking pool (the
/// notification socket is a blocking datagram socket). A failure is logged.
async fn notify(ready: bool, status: String) {
    let sent = tokio::task::spawn_blocking(move || {
        let state = if ready {
            sd_notify::NotifyState::Ready
        } else {
            sd_notify::NotifyState::Stopping
        };
        sd_notify::notify(&[state, sd_notify::NotifyState::Status(&status)])
    })
    .await;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("systemd notification failed: {e}"),
        Err(e) => tracing::warn!("systemd notification task failed: {e}"),
    }
}

/// SIGTERM and SIGINT, caught from creation on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("install SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("install SIGINT handler")?,
        })
    }

    /// The next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_arguments() {
        assert_eq!(
            parse_image_arg("/nonexistent/a.img=disk"),
            (PathBuf::from("/nonexistent/a.img"), Some("disk".into()))
        );
        assert_eq!(
            parse_image_arg("/nonexistent/a.img"),
            (PathBuf::from("/nonexistent/a.img"), None)
        );
        assert_eq!(
            parse_image_arg("/x/a=b=c"),
            (PathBuf::from("/x/a=b"), Some("c".into()))
        );
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert!(parse_mode("800").is_err());
    }
}
