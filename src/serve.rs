//! The HTTP/1.1 connection loop: axum's own, plus the limits it leaves out — how long a client may
//! take to send a request's headers, and how large they may be — so that a slow or hostile
//! client cannot hold a connection (and its task) open forever.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Limits on every connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A client that has not sent a request's complete headers within this is disconnected
    /// (this also closes idle keep-alive connections).
    pub header_read_timeout: Duration,
    /// The largest request head (request line and headers); larger ones are answered 431.
    pub max_head_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { header_read_timeout: Duration::from_secs(10), max_head_bytes: 64 * 1024 }
    }
}

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting, lets every
/// open connection finish the request it is serving, and returns once all are closed.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, shutdown: impl Future<Output = ()>) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper's smallest allowed buffer is 8 KiB.
        .max_buf_size(limits.max_head_bytes.max(8192));
    // Dropping the sender tells connections to finish; each holds a receiver of `open` until
    // it is closed.
    let (stop, stopping) = watch::channel(());
    let (open, _) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors, most often: wait for some to be freed.
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone())).with_upgrades();
        let mut stopping = stopping.clone();
        let open = open.subscribe();
        tokio::spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "connection closed with an error");
                    }
                    return;
                }
                _ = stopping.changed() => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
            drop(open);
        });
    }
    drop(listener);
    drop(stop);
    open.closed().await;
}
