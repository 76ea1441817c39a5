//! Fault points for tests: they make a write fail or stall after its effect and its
//! stored response are written but before the transaction commits, the moment a crash
//! would hurt most. Nothing in the binary's configuration can turn them on; only code
//! that builds an `Application` itself (the test suite) can.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Faults {
    /// Set once any fault point has been configured, so the write path of a server
    /// with none pays one relaxed load instead of two locks.
    armed: AtomicBool,
    fail_before_commit: Mutex<Option<String>>,
    pause_before_commit: Mutex<Option<(String, Duration)>>,
}

/// What a fault point decided for one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    Proceed,
    Fail,
    Pause(Duration),
}

impl Faults {
    /// Writes whose idempotency key starts with `prefix` fail before commit.
    pub fn fail_before_commit(&self, prefix: Option<&str>) {
        self.armed.store(true, Ordering::Relaxed);
        if let Ok(mut slot) = self.fail_before_commit.lock() {
            *slot = prefix.map(str::to_owned);
        }
    }

    /// Writes whose idempotency key starts with `prefix` hold their transaction open.
    pub fn pause_before_commit(&self, prefix: Option<&str>, pause: Duration) {
        self.armed.store(true, Ordering::Relaxed);
        if let Ok(mut slot) = self.pause_before_commit.lock() {
            *slot = prefix.map(|p| (p.to_owned(), pause));
        }
    }

    /// Whether any fault point was ever configured.
    pub fn armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
    }

    pub fn before_commit(&self, key: &str) -> FaultAction {
        if !self.armed() {
            return FaultAction::Proceed;
        }
        let fail = self
            .fail_before_commit
            .lock()
            .map(|slot| slot.as_deref().is_some_and(|p| key.starts_with(p)))
            .unwrap_or(false);
        if fail {
            return FaultAction::Fail;
        }
        let pause = self.pause_before_commit.lock().ok().and_then(|slot| {
            slot.as_ref()
                .filter(|(p, _)| key.starts_with(p.as_str()))
                .map(|(_, d)| *d)
        });
        pause.map_or(FaultAction::Proceed, FaultAction::Pause)
    }
}
