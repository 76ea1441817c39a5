//! Code guessing: a caller who keeps redeeming codes that do not exist is slowed down.
//! Misses are counted per (API key, user id) in fixed windows; past the limit, that
//! pair gets 429 RATE_LIMITED until its window ends. Counts live in this process
//! (behind a load balancer each process counts its own).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Windows tracked at most; past this the oldest are forgotten first.
const MAX_TRACKED: usize = 100_000;

pub struct MissThrottle {
    limit: u32,
    window: Duration,
    windows: Mutex<HashMap<(i64, String), Window>>,
}

#[derive(Clone, Copy)]
struct Window {
    started: Instant,
    misses: u32,
}

impl MissThrottle {
    /// `limit` misses per `window`; a limit of 0 turns throttling off.
    pub fn new(limit: u32, window: Duration) -> Self {
        MissThrottle {
            limit,
            window,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` when this caller and user are over their limit now.
    pub fn check(&self, key_id: i64, user_id: &str) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let Ok(windows) = self.windows.lock() else {
            return Ok(());
        };
        match windows.get(&(key_id, user_id.to_owned())) {
            Some(w) if w.misses >= self.limit => {
                let ends = w.started + self.window;
                match ends.checked_duration_since(now) {
                    Some(left) if !left.is_zero() => Err(left),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Counts one answer of COUPON_NOT_FOUND.
    pub fn record_miss(&self, key_id: i64, user_id: &str) {
        if self.limit == 0 {
            return;
        }
        let now = Instant::now();
        let Ok(mut windows) = self.windows.lock() else {
            return;
        };
        if windows.len() >= MAX_TRACKED {
            let window = self.window;
            windows.retain(|_, w| now.duration_since(w.started) < window);
            if windows.len() >= MAX_TRACKED {
                windows.clear();
            }
        }
        let w = windows
            .entry((key_id, user_id.to_owned()))
            .or_insert(Window {
                started: now,
                misses: 0,
            });
        if now.duration_since(w.started) >= self.window {
            *w = Window {
                started: now,
                misses: 0,
            };
        }
        w.misses = w.misses.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_limit_until_the_window_ends() {
        let t = MissThrottle::new(3, Duration::from_millis(200));
        for _ in 0..3 {
            assert!(t.check(1, "u").is_ok());
            t.record_miss(1, "u");
        }
        let retry = t.check(1, "u").expect_err("throttled");
        assert!(retry <= Duration::from_millis(200));
        // Other users and other keys are not affected.
        assert!(t.check(1, "v").is_ok());
        assert!(t.check(2, "u").is_ok());
        std::thread::sleep(Duration::from_millis(220));
        assert!(t.check(1, "u").is_ok());
        t.record_miss(1, "u");
        assert!(t.check(1, "u").is_ok());
    }

    #[test]
    fn a_zero_limit_is_off() {
        let t = MissThrottle::new(0, Duration::from_secs(60));
        for _ in 0..100 {
            t.record_miss(1, "u");
        }
        assert!(t.check(1, "u").is_ok());
    }
}
