//! Wiring: a store, the router and the background tasks, served until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{DatabaseArgs, ServeArgs};
use crate::domain::apikey::{MAX_KEY_CHARS, MIN_GIVEN_KEY_CHARS};
use crate::domain::{ApiKey, NewApiKey, Scope};
use crate::faults::Faults;
use crate::http::{self, AppState};
use crate::idempotency::{InFlight, Policy, RecordCache};
use crate::jobs::CodeJobs;
use crate::keys::Keys;
use crate::serve;
use crate::storage::{PurgeBy, Store, StoreError, StoreOptions};
use crate::throttle::MissThrottle;

/// Expired idempotency records deleted per statement, so a purge never holds locks long.
pub const PURGE_BATCH: i64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error("COUPOND_BOOTSTRAP_ADMIN_KEY must be {min} to {max} visible ASCII characters")]
    BadBootstrapKey { min: usize, max: usize },
}

/// What first start did about API keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Keys existed already; nothing was created.
    KeysExist,
    /// The first admin key was created from COUPOND_BOOTSTRAP_ADMIN_KEY.
    Given(ApiKey),
    /// The first admin key was generated; this is the only time it can be shown.
    Generated(ApiKey, String),
}

/// Creates an admin key if no API key exists at all, so that a fresh installation can
/// be used at once.
pub async fn bootstrap_admin_key(
    store: &Store,
    given: Option<&str>,
) -> Result<Bootstrap, AppError> {
    const NAME: &str = "bootstrap admin";
    let (key, generated) = match given {
        Some(secret) => (
            NewApiKey::given(NAME, Scope::Admin, secret).ok_or(AppError::BadBootstrapKey {
                min: MIN_GIVEN_KEY_CHARS,
                max: MAX_KEY_CHARS,
            })?,
            false,
        ),
        None => (NewApiKey::generate(NAME, Scope::Admin), true),
    };
    let secret = key.secret.clone();
    Ok(
        match store.bootstrap_api_key(key, crate::domain::now()).await? {
            None => Bootstrap::KeysExist,
            Some(created) if generated => Bootstrap::Generated(created, secret),
            Some(created) => Bootstrap::Given(created),
        },
    )
}

/// Opens the database named by `args` and brings its schema up to date.
pub async fn open_store(
    args: &DatabaseArgs,
    idempotency_wait: Duration,
    lock_timeout: Duration,
    faults: Arc<Faults>,
) -> Result<Store, StoreError> {
    let store = Store::connect(
        &args.database_url,
        StoreOptions {
            max_connections: args.db_max_connections,
            idempotency_wait,
            lock_timeout,
            acquire_timeout: args.db_acquire_timeout,
            faults,
        },
    )
    .await?;
    store.migrate().await?;
    Ok(store)
}

/// A server bound to its port, ready to run.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    metrics_listener: Option<TcpListener>,
    state: AppState,
    settings: ServeArgs,
    bootstrap: Bootstrap,
}

impl Application {
    /// Connects, migrates and binds. `faults` is for tests; the binary passes the default,
    /// which never fires.
    pub async fn build(settings: ServeArgs, faults: Arc<Faults>) -> Result<Self, AppError> {
        let store = open_store(
            &settings.database,
            settings.idempotency_wait,
            settings.request_timeout,
            faults,
        )
        .await?;
        let listener = TcpListener::bind(settings.bind)
            .await
            .map_err(|source| AppError::Bind {
                addr: settings.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(AppError::Serve)?;
        let metrics_listener = match settings.metrics_bind {
            Some(bind) => {
                // Installed before the first request, so every count is there.
                crate::metrics::handle();
                Some(
                    TcpListener::bind(bind)
                        .await
                        .map_err(|source| AppError::Bind { addr: bind, source })?,
                )
            }
            None => None,
        };
        let bootstrap =
            bootstrap_admin_key(&store, settings.bootstrap_admin_key.as_deref()).await?;
        let keys = Keys::load(store.clone()).await?;
        let state = AppState {
            store,
            keys,
            throttle: Arc::new(MissThrottle::new(
                settings.not_found_limit,
                settings.not_found_window,
            )),
            code_jobs: CodeJobs::default(),
            in_flight: InFlight::default(),
            replays: RecordCache::new(settings.idempotency_cache_mib.saturating_mul(1 << 20)),
            policy: Policy {
                ttl: settings.idempotency_ttl,
                wait: settings.idempotency_wait,
            },
            body_limit: settings.body_limit,
        };
        Ok(Application {
            listener,
            addr,
            metrics_listener,
            state,
            settings,
            bootstrap,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn store(&self) -> Store {
        self.state.store.clone()
    }

    /// Whether this start created the first API key.
    pub fn bootstrap(&self) -> &Bootstrap {
        &self.bootstrap
    }

    /// Serves until `shutdown` resolves, then lets requests in flight finish (up to the
    /// grace period) and closes the database after the last write.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let Application {
            listener,
            addr,
            metrics_listener,
            state,
            settings,
            bootstrap: _,
        } = self;
        let store = state.store.clone();
        let purge = spawn_purger(store.clone(), settings.purge_interval);
        let refresher = state.keys.spawn_refresher();
        let code_jobs = state.code_jobs.spawn(store.clone());
        let keys = state.keys.clone();
        let metrics_server = metrics_listener.map(|listener| {
            let router = http::metrics_page::router(state.clone());
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "metrics listening");
            }
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            })
        });
        let router = http::router(state, &settings);
        tracing::info!(%addr, backend = store.backend(), "coupond listening");

        let limits = serve::Limits::clamped(settings.header_read_timeout, settings.max_connections);
        let finished = serve::serve(
            listener,
            router,
            limits,
            async move {
                shutdown.await;
                tracing::info!("shutting down: finishing requests in flight");
            },
            settings.shutdown_grace,
        )
        .await;
        if !finished {
            tracing::warn!(
                grace = ?settings.shutdown_grace,
                "requests still in flight after the grace period; closing anyway"
            );
        }
        purge.abort();
        refresher.abort();
        code_jobs.abort();
        if let Some(server) = metrics_server {
            server.abort();
        }
        if let Err(e) = keys.flush_usage().await {
            tracing::warn!(error = %e, "recording API key usage failed");
        }
        // Writes are detached from their requests, so closing waits for the writer to
        // drain: every accepted write commits or rolls back before the process exits.
        store.close().await;
        tracing::info!("coupond stopped");
        Ok(())
    }
}

fn spawn_purger(store: Store, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every.max(Duration::from_millis(10)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match purge_expired(&store).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "expired idempotency records purged"),
                Err(e) => tracing::warn!(error = %e, "purging idempotency records failed"),
            }
        }
    })
}

/// Deletes every record expired by now, a batch at a time.
pub async fn purge_expired(store: &Store) -> Result<u64, StoreError> {
    purge_batches(store, PurgeBy::ExpiresAt, crate::domain::now()).await
}

/// Deletes every record created at or before `cutoff`, expired or not: for operators
/// who need the space back sooner than the TTL would give it. A key whose record is
/// deleted this way runs anew if it is retried.
pub async fn purge_created_before(
    store: &Store,
    cutoff: time::OffsetDateTime,
) -> Result<u64, StoreError> {
    purge_batches(store, PurgeBy::CreatedAt, cutoff).await
}

async fn purge_batches(
    store: &Store,
    by: PurgeBy,
    cutoff: time::OffsetDateTime,
) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let n = store.purge_idempotency(by, cutoff, PURGE_BATCH).await?;
        total += n;
        if n < PURGE_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
