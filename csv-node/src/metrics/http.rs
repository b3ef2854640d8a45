//! The metrics endpoint: HTTP/1 (hyper) on `[metrics] listen`, `GET /metrics` answered
//! with the OpenMetrics text (state gauges refreshed first), 404 for any other path,
//! 405 for another method there. Bounded: at most [`MAX_CONNECTIONS`] connections at
//! once (more are closed at accept), each for at most [`CONNECTION_LIFETIME`], with a
//! deadline on reading a request's head. The encoding runs in the blocking pool.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE as CONTENT_TYPE_HEADER, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::CONTENT_TYPE;
use super::collect::StateCollector;
use crate::task::Tasks;

/// Connections served at once (a scraper needs one; a few for people with curl).
pub const MAX_CONNECTIONS: usize = 16;
/// A connection is closed after this long, idle or not (a scraper reconnects).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Deadline for a request's head once a connection is open or between requests.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. out of file descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Binds the endpoint's listener.
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("bind the metrics endpoint on {addr}: {e}"))
}

/// Serves the endpoint until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    collector: Arc<StateCollector>,
    tasks: Tasks,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics endpoint: connection limit reached; closed");
            continue;
        };
        let collector = collector.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let svc = service_fn(move |req| {
                let c = collector.clone();
                async move { Ok::<_, Infallible>(answer(&c, &req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = tokio::time::timeout(CONNECTION_LIFETIME, conn) => {
                    if let Ok(Err(e)) = r {
                        tracing::debug!(%peer, "metrics connection: {e}");
                    }
                }
                () = stop.cancelled() => {}
            }
            drop(slot);
        });
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE_HEADER,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn answer(c: &StateCollector, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    match scrape(c).await {
        Ok(text) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut()
                .insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(CONTENT_TYPE));
            r
        }
        Err(e) => {
            tracing::warn!("metrics encoding failed: {e}");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics encoding failed\n",
            )
        }
    }
}

/// Refreshes the state gauges, then encodes every family (in the blocking pool).
pub async fn scrape(c: &StateCollector) -> anyhow::Result<String> {
    c.refresh().await;
    let m = c.metrics().clone();
    tokio::task::spawn_blocking(move || m.encode())
        .await
        .map_err(|e| anyhow::anyhow!("encoding task: {e}"))?
        .map_err(|e| anyhow::anyhow!("encode: {e}"))
}
