//! The "slow handler" warning: a handler call that takes longer than
//! `rpc.slowHandler.threshold` (default 1 s) is logged with its endpoint, message type and time,
//! at most once per [`WARN_EVERY`] per endpoint (the calls skipped in between are counted in the
//! next warning), so that a stuck endpoint cannot flood the log. A busy inbox times its calls in
//! runs (one clock read per run), so a warning may be about a run of calls that together took
//! longer than the threshold; it says how many.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The shortest interval between two warnings of one endpoint.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(10);

/// The warning state of one endpoint. Its lock is taken only for a call over the threshold.
#[derive(Debug)]
pub(crate) struct SlowHandler {
    threshold: Duration,
    /// When the last warning was written, and slow calls since then that were not.
    last: Mutex<(Option<Instant>, u64)>,
}

impl SlowHandler {
    /// Warns above `threshold`; `Duration::ZERO` never warns.
    pub(crate) fn new(threshold: Duration) -> Self {
        SlowHandler {
            threshold,
            last: Mutex::new((None, 0)),
        }
    }

    /// `calls` calls of `endpoint`'s handler for messages of type `message_type`, the last one a
    /// `kind` (ask, one-way, event), took `took` together, ending at `now`. Returns whether it
    /// warned.
    pub(crate) fn check(
        &self,
        endpoint: &str,
        message_type: &str,
        kind: &str,
        calls: u32,
        took: Duration,
        now: Instant,
    ) -> bool {
        if self.threshold.is_zero() || took < self.threshold {
            return false;
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.0.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            last.1 += 1;
            return false;
        }
        let skipped = std::mem::take(&mut last.1);
        last.0 = Some(now);
        let what = if calls == 1 {
            format!("a {kind} of {message_type}")
        } else {
            format!("{calls} calls for messages of {message_type} (the last one a {kind})")
        };
        tracing::warn!(
            endpoint,
            message_type,
            kind,
            calls,
            took_ms = took.as_millis() as u64,
            threshold_ms = self.threshold.as_millis() as u64,
            skipped,
            "slow handler: endpoint {endpoint} took {took:?} for {what}"
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_above_the_threshold_at_most_once_per_interval() {
        let slow = SlowHandler::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let long = Duration::from_millis(1500);
        assert!(!slow.check("e", "T", "ask", 1, Duration::from_millis(999), t0));
        assert!(slow.check("e", "T", "ask", 1, long, t0));
        assert!(!slow.check("e", "T", "ask", 1, long, t0 + Duration::from_secs(1)));
        assert!(slow.check("e", "T", "ask", 1, long, t0 + WARN_EVERY));
        assert_eq!(*slow.last.lock().unwrap(), (Some(t0 + WARN_EVERY), 0));
    }

    #[test]
    fn zero_threshold_never_warns() {
        let slow = SlowHandler::new(Duration::ZERO);
        assert!(!slow.check("e", "T", "ask", 1, Duration::from_secs(5), Instant::now()));
    }
}
