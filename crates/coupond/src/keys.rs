//! Who is calling: API keys checked against an in-memory copy of the active keys,
//! refreshed from the database twice a second, so that a key revoked by
//! `coupond keys revoke` (or by another coupond process) stops working within a
//! second without a database read on every request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::task::JoinHandle;

use crate::domain::apikey::hash_key;
use crate::domain::{ApiKey, Scope};
use crate::storage::{Store, StoreError};

/// How often the copy of the active keys is reloaded.
pub const REFRESH_EVERY: Duration = Duration::from_millis(500);
/// How often "last used" times are written back.
const FLUSH_USAGE_EVERY: Duration = Duration::from_secs(10);
/// Unknown keys are remembered this long, so a stream of bad keys is not a stream of
/// database reads; a key created meanwhile works once this has passed.
const NEGATIVE_TTL: Duration = Duration::from_millis(500);
const MAX_NEGATIVE: usize = 10_000;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key_id: i64,
    pub name: String,
    pub scope: Scope,
}

impl Caller {
    fn of(key: &ApiKey) -> Caller {
        Caller {
            key_id: key.id,
            name: key.name.clone(),
            scope: key.scope,
        }
    }

    /// Idempotency keys are per caller: the same `Idempotency-Key` from two API keys
    /// names two different requests.
    pub fn idempotency_scope(&self) -> String {
        format!("key:{}", self.key_id)
    }
}

#[derive(Clone)]
pub struct Keys {
    store: Store,
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    active: RwLock<HashMap<[u8; 32], Caller>>,
    unknown: Mutex<HashMap<[u8; 32], Instant>>,
    used: Mutex<HashMap<i64, OffsetDateTime>>,
}

impl Keys {
    pub async fn load(store: Store) -> Result<Keys, StoreError> {
        let keys = Keys {
            store,
            inner: Arc::default(),
        };
        keys.refresh().await?;
        Ok(keys)
    }

    /// The caller a bearer token belongs to, or `None` for an unknown or revoked key.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Caller>, StoreError> {
        let hash = hash_key(secret);
        let known = self
            .inner
            .active
            .read()
            .ok()
            .and_then(|active| active.get(&hash).cloned());
        let caller = match known {
            Some(caller) => Some(caller),
            None => self.look_up(hash).await?,
        };
        if let Some(caller) = &caller {
            if let Ok(mut used) = self.inner.used.lock() {
                used.insert(caller.key_id, crate::domain::now());
            }
        }
        Ok(caller)
    }

    /// A key not in the copy: created since the last refresh, or not a key at all.
    async fn look_up(&self, hash: [u8; 32]) -> Result<Option<Caller>, StoreError> {
        let now = Instant::now();
        if let Ok(unknown) = self.inner.unknown.lock() {
            if unknown
                .get(&hash)
                .is_some_and(|t| now.duration_since(*t) < NEGATIVE_TTL)
            {
                return Ok(None);
            }
        }
        let found = self.store.find_api_key(&hash).await?;
        match found.filter(|key| key.revoked_at.is_none()) {
            Some(key) => {
                let caller = Caller::of(&key);
                if let Ok(mut active) = self.inner.active.write() {
                    active.insert(hash, caller.clone());
                }
                Ok(Some(caller))
            }
            None => {
                if let Ok(mut unknown) = self.inner.unknown.lock() {
                    if unknown.len() >= MAX_NEGATIVE {
                        unknown.clear();
                    }
                    unknown.insert(hash, now);
                }
                Ok(None)
            }
        }
    }

    /// Replaces the copy with what the database holds now.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let rows = self.store.active_api_keys().await?;
        let active: HashMap<[u8; 32], Caller> = rows
            .iter()
            .filter_map(|(hash, key)| {
                Some((<[u8; 32]>::try_from(hash.as_slice()).ok()?, Caller::of(key)))
            })
            .collect();
        if let Ok(mut slot) = self.inner.active.write() {
            *slot = active;
        }
        Ok(())
    }

    /// Writes the "last used" times gathered since the last flush.
    pub async fn flush_usage(&self) -> Result<(), StoreError> {
        let used: Vec<(i64, OffsetDateTime)> = match self.inner.used.lock() {
            Ok(mut used) => used.drain().collect(),
            Err(_) => Vec::new(),
        };
        self.store.touch_api_keys(used).await
    }

    /// Keeps the copy fresh and the usage written until aborted.
    pub fn spawn_refresher(&self) -> JoinHandle<()> {
        let keys = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(REFRESH_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_flush = Instant::now();
            loop {
                ticker.tick().await;
                if let Err(e) = keys.refresh().await {
                    tracing::warn!(error = %e, "reloading API keys failed; keeping the last copy");
                }
                if last_flush.elapsed() >= FLUSH_USAGE_EVERY {
                    last_flush = Instant::now();
                    if let Err(e) = keys.flush_usage().await {
                        tracing::warn!(error = %e, "recording API key usage failed");
                    }
                }
            }
        })
    }
}
