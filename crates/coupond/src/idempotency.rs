//! Exactly-once writes: the `Idempotency-Key` rules, the request fingerprint, and the
//! path every write takes (replay from the stored record, or wait for a duplicate in
//! flight, or run once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use time::OffsetDateTime;

use crate::storage::{
    Command, IdempotencyClaim, IdempotencyRecord, Render, Replay, Store, StoreError, WriteOutcome,
    WriteRequest,
};

pub const MAX_KEY_LEN: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("provide an Idempotency-Key header")]
    Missing,
    #[error("Idempotency-Key must be 1 to 255 visible ASCII characters")]
    Invalid,
}

/// Validates a raw header value: 1..=255 visible ASCII characters.
pub fn parse_key(raw: Option<&[u8]>) -> Result<String, KeyError> {
    let raw = raw.ok_or(KeyError::Missing)?;
    if raw.is_empty() {
        return Err(KeyError::Missing);
    }
    if raw.len() > MAX_KEY_LEN || !raw.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(KeyError::Invalid);
    }
    String::from_utf8(raw.to_vec()).map_err(|_| KeyError::Invalid)
}

/// SHA-256 over method, path and the canonical JSON of the body, so key order and
/// white space do not make two equal requests differ (the seed's `sort_keys` dump).
pub fn fingerprint(method: &str, path: &str, body: &Value) -> String {
    let mut canonical = Vec::with_capacity(256);
    write_canonical(body, &mut canonical);
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(b"\n");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    hasher.update(&canonical);
    hex::encode(hasher.finalize())
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            // Sorted here rather than trusting the map's order, which a dependency
            // enabling serde_json's preserve_order would change.
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(k.clone()), out);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Serialising a scalar cannot fail; an empty write would only weaken the hash.
    let _ = serde_json::to_writer(&mut *out, value);
}

type Running = Arc<Mutex<HashMap<(String, String), watch::Receiver<()>>>>;

/// Requests in flight in this process, by (scope, key). A duplicate waits here, without
/// holding a database connection, until the original is done. Across processes the
/// database's own locks do the same job.
#[derive(Clone, Default)]
pub struct InFlight {
    running: Running,
}

/// Held by the request that runs; dropping it wakes the duplicates.
pub struct InFlightGuard {
    running: Running,
    id: (String, String),
    _done: watch::Sender<()>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(&self.id);
        }
    }
}

enum Slot {
    Run(InFlightGuard),
    Wait(watch::Receiver<()>),
}

impl InFlight {
    fn enter(&self, scope: &str, key: &str) -> Slot {
        let id = (scope.to_owned(), key.to_owned());
        let Ok(mut running) = self.running.lock() else {
            // A poisoned map only loses the in-process wait; the database still keeps
            // duplicates out.
            let (done, _) = watch::channel(());
            return Slot::Run(InFlightGuard {
                running: self.running.clone(),
                id,
                _done: done,
            });
        };
        if let Some(waiting) = running.get(&id) {
            return Slot::Wait(waiting.clone());
        }
        let (done, waiting) = watch::channel(());
        running.insert(id.clone(), waiting);
        Slot::Run(InFlightGuard {
            running: self.running.clone(),
            id,
            _done: done,
        })
    }
}

/// Responses this process committed recently, so that a retry (the common case: a
/// client that timed out and sent the same request again) is answered from memory.
/// A committed record never changes while it is live, and an entry is used only before
/// its expiry, so an entry is always what the database would say, in every process.
#[derive(Clone)]
pub struct RecordCache {
    entries: Option<Arc<Entries>>,
}

type Entries = quick_cache::sync::Cache<(String, String), Arc<IdempotencyRecord>, RecordWeight>;

#[derive(Clone)]
struct RecordWeight;

impl quick_cache::Weighter<(String, String), Arc<IdempotencyRecord>> for RecordWeight {
    fn weight(&self, key: &(String, String), record: &Arc<IdempotencyRecord>) -> u64 {
        // Roughly the bytes an entry holds, so the capacity is a memory bound.
        (key.0.len() + key.1.len() + record.fingerprint.len() + record.response.body.len() + 96)
            as u64
    }
}

impl RecordCache {
    /// A cache of about `bytes`; 0 turns it off.
    pub fn new(bytes: u64) -> RecordCache {
        let entries = (bytes > 0).then(|| {
            Arc::new(quick_cache::sync::Cache::with_weighter(
                (bytes / 400).max(16) as usize,
                bytes,
                RecordWeight,
            ))
        });
        RecordCache { entries }
    }

    fn answer(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now: OffsetDateTime,
    ) -> Option<WriteOutcome> {
        let entries = self.entries.as_ref()?;
        let id = (scope.to_owned(), key.to_owned());
        let record = entries.get(&id)?;
        let outcome = record.answer(fingerprint, now);
        if outcome.is_none() {
            // Expired: the key may run anew, and the database decides.
            entries.remove(&id);
        }
        outcome
    }

    fn remember(&self, scope: String, key: String, record: Arc<IdempotencyRecord>) {
        if let Some(entries) = &self.entries {
            entries.insert((scope, key), record);
        }
    }
}

/// The settings the write path needs.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub ttl: Duration,
    pub wait: Duration,
}

/// One write, exactly once per (scope, key).
pub struct Write {
    pub scope: String,
    /// The API key making the change.
    pub actor: Option<i64>,
    pub key: String,
    pub fingerprint: String,
    pub command: Command,
    pub render: Render,
}

/// Runs `write` unless a request with its key has already run: the store replays a
/// committed record (a plain read, no lock), and a duplicate that arrives while the
/// original is still in flight in this process waits here, without holding a database
/// connection, and then replays the original's answer. Across processes the database's
/// row lock on the claimed key does the same job.
pub async fn run_once(
    store: &Store,
    in_flight: &InFlight,
    cache: &RecordCache,
    policy: Policy,
    write: Write,
) -> Result<WriteOutcome, StoreError> {
    let deadline = tokio::time::Instant::now() + policy.wait;
    loop {
        // Looked at again after each wait: an original that committed left its answer
        // here before it woke the duplicates.
        if let Some(outcome) = cache.answer(
            &write.scope,
            &write.key,
            &write.fingerprint,
            crate::domain::now(),
        ) {
            count_replay(&outcome, "memory");
            return Ok(outcome);
        }
        match in_flight.enter(&write.scope, &write.key) {
            Slot::Wait(mut original) => {
                metrics::counter!(crate::metrics::IN_FLIGHT_WAITS).increment(1);
                // Woken when the original finishes, whatever its outcome; then go
                // again: a replay if it committed, our turn if it failed.
                let waited = tokio::time::timeout_at(deadline, original.changed()).await;
                if waited.is_err() {
                    return Ok(WriteOutcome::InProgress);
                }
            }
            Slot::Run(guard) => {
                let now = crate::domain::now();
                let request = WriteRequest {
                    actor: write.actor,
                    claim: IdempotencyClaim {
                        scope: write.scope,
                        key: write.key,
                        fingerprint: write.fingerprint,
                        expires_at: now + policy.ttl,
                    },
                    command: write.command,
                    render: write.render,
                    now,
                };
                // Detached, so a client hanging up cannot cancel the transaction
                // half-way; the guard goes with it and wakes duplicates at the end,
                // after the cache knows the answer.
                let store = store.clone();
                let cache = cache.clone();
                let task = tokio::spawn(async move {
                    let (scope, key) = (request.claim.scope.clone(), request.claim.key.clone());
                    let (fingerprint, expires_at) =
                        (request.claim.fingerprint.clone(), request.claim.expires_at);
                    let outcome = store.execute(request).await;
                    match &outcome {
                        Ok(WriteOutcome::Executed(response)) => cache.remember(
                            scope,
                            key,
                            Arc::new(IdempotencyRecord {
                                fingerprint,
                                response: response.clone(),
                                created_at: now,
                                expires_at,
                            }),
                        ),
                        // Read from the database (another process wrote it, or this one
                        // has forgotten it): a client that retries once often retries
                        // again, and the next one is answered from memory.
                        Ok(WriteOutcome::Replayed(Replay::Record(record))) => {
                            cache.remember(scope, key, record.clone());
                        }
                        _ => {}
                    }
                    if let Ok(replay) = &outcome {
                        count_replay(replay, "database");
                    }
                    drop(guard);
                    outcome
                });
                return task.await.unwrap_or(Err(StoreError::WriterGone));
            }
        }
    }
}

/// Counts a replay by where its answer came from, which is what sizing
/// `COUPOND_IDEMPOTENCY_CACHE_MIB` needs.
fn count_replay(outcome: &WriteOutcome, source: &'static str) {
    if matches!(outcome, WriteOutcome::Replayed(_)) {
        metrics::counter!(crate::metrics::REPLAYS, "source" => source).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_rules() {
        assert_eq!(parse_key(None), Err(KeyError::Missing));
        assert_eq!(parse_key(Some(b"")), Err(KeyError::Missing));
        assert_eq!(parse_key(Some(b"iss-1")).as_deref(), Ok("iss-1"));
        assert_eq!(parse_key(Some(b"has space")), Err(KeyError::Invalid));
        assert_eq!(parse_key(Some("ключ".as_bytes())), Err(KeyError::Invalid));
        assert_eq!(parse_key(Some(&[b'k'; 255])).map(|k| k.len()), Ok(255));
        assert_eq!(parse_key(Some(&[b'k'; 256])), Err(KeyError::Invalid));
    }

    #[test]
    fn fingerprint_survives_floats_printed_again() {
        // Found by the `fingerprint` fuzz target; needs serde_json's float_roundtrip.
        for text in [
            "111111111111111111112",
            "1e2",
            "0.30000000000000004",
            "5e-324",
        ] {
            let first: Value = serde_json::from_str(&format!("{{\"a\": {text}}}")).expect("json");
            let again: Value = serde_json::from_str(&first.to_string()).expect("json");
            assert_eq!(
                fingerprint("POST", "/p/", &first),
                fingerprint("POST", "/p/", &again),
                "{text} -> {first}"
            );
        }
    }

    #[test]
    fn fingerprint_ignores_key_order_and_spacing() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": "s"}}"#).expect("json");
        let b: Value = serde_json::from_str(r#"{"a":{"x":"s","y":[1,2]},"b":1}"#).expect("json");
        assert_eq!(
            fingerprint("POST", "/p/", &a),
            fingerprint("POST", "/p/", &b)
        );
        assert_ne!(
            fingerprint("POST", "/p/", &a),
            fingerprint("POST", "/q/", &a)
        );
        assert_ne!(
            fingerprint("POST", "/p/", &json!({"b": 2})),
            fingerprint("POST", "/p/", &json!({"b": 1}))
        );
    }
}
