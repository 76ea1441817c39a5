//! The accept loop. `axum::serve` gives hyper no timer, so a client that trickles its
//! headers (or holds an idle connection) would keep a connection open for ever; here
//! hyper gets one: a request's headers must arrive within `header_read_timeout`, and an
//! idle keep-alive connection is closed after the same time. Connections are capped, so
//! a flood of them cannot take every file descriptor; past the cap new ones wait in the
//! listen backlog. Shutdown stops accepting and lets connections finish their requests.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// File descriptors kept free for the database, logs and the rest when the connection
/// cap is derived from the process's limit.
const SPARE_DESCRIPTORS: u64 = 64;

impl Limits {
    /// `max_connections`, lowered if the process may not open that many files.
    pub fn clamped(header_read_timeout: Duration, max_connections: usize) -> Limits {
        let allowed = open_files_limit()
            .map(|limit| limit.saturating_sub(SPARE_DESCRIPTORS).max(16))
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(max_connections);
        if allowed < max_connections {
            tracing::info!(
                max_connections = allowed,
                "connection cap lowered to fit the open-files limit"
            );
        }
        Limits {
            header_read_timeout,
            max_connections: max_connections.min(allowed).max(1),
        }
    }
}

#[cfg(unix)]
fn open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

#[cfg(not(unix))]
fn open_files_limit() -> Option<u64> {
    None
}

/// Serves `router` on `listener` until `shutdown` resolves, then waits up to `grace`
/// for the connections to finish. Answers whether every connection finished in time.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> bool {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.header_read_timeout);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(peer));
            router.clone().oneshot(request)
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A connection's end (the client gone, a timeout) is no error of ours.
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => true,
        () = tokio::time::sleep(grace) => false,
    }
}
