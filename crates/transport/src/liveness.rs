//! When a connection is given up as dead or stalled. Socket-free and clock-free: the driver
//! passes the current time and what it observed, and gets back a verdict and the instant at
//! which to ask again.
//!
//! Three rules, each off when its timeout is `None`:
//! - **idle** (Spark's `TransportChannelHandler`): no read or write for the connection timeout
//!   and the last request older than that, with requests outstanding (or idle connections to be
//!   closed);
//! - **first frame**: an accepted connection that has not completed a frame within the
//!   handshake timeout (a peer that connects and sends nothing, or half a header);
//! - **stalled frame**: part of a frame arrived, then nothing for the connection timeout.

use std::time::{Duration, Instant};

/// The limits a connection is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadlines {
    /// The idle and stalled-frame timeout (`spark.<module>.io.connectionTimeout`).
    pub(crate) connection_timeout: Option<Duration>,
    /// Close idle connections even with nothing outstanding.
    pub(crate) close_idle: bool,
    /// Time allowed to complete the first frame (accepted connections only).
    pub(crate) first_frame: Option<Duration>,
}

/// What the driver observed so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Activity {
    /// When the connection was established.
    pub(crate) opened: Instant,
    /// Last read or write progress.
    pub(crate) last_io: Instant,
    /// Last request issued on this side.
    pub(crate) last_request: Instant,
    /// Last bytes read.
    pub(crate) last_read: Instant,
    /// A complete frame has arrived.
    pub(crate) frame_seen: bool,
    /// Part of a frame (or of a raw body) has arrived and the rest has not.
    pub(crate) mid_frame: bool,
    /// Requests waiting for an answer.
    pub(crate) outstanding: usize,
}

impl Activity {
    /// A connection established at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Activity {
            opened: now,
            last_io: now,
            last_request: now,
            last_read: now,
            frame_seen: false,
            mid_frame: false,
            outstanding: 0,
        }
    }
}

/// Why a connection is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dead {
    /// Quiet for this long with requests outstanding (or idle connections are closed).
    Idle(Duration),
    /// No complete frame this long after the connection was established.
    NoFirstFrame(Duration),
    /// Nothing for this long in the middle of a frame.
    StalledFrame(Duration),
}

/// The verdict of [`Deadlines::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Close the connection.
    Close(Dead),
    /// Keep it; ask again at this instant (`None`: no rule applies).
    RecheckAt(Option<Instant>),
}

impl Deadlines {
    /// The verdict at `now`.
    pub(crate) fn check(&self, now: Instant, a: &Activity) -> Verdict {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if let (Some(limit), false) = (self.first_frame, a.frame_seen) {
            let due = a.opened + limit;
            if now >= due {
                return Verdict::Close(Dead::NoFirstFrame(now - a.opened));
            }
            at(due);
        }
        if let Some(timeout) = self.connection_timeout {
            if a.mid_frame {
                let due = a.last_read + timeout;
                if now >= due {
                    return Verdict::Close(Dead::StalledFrame(now - a.last_read));
                }
                at(due);
            }
            let latest = a.last_io.max(a.last_request);
            let overdue_at = latest + timeout;
            if now >= overdue_at {
                if a.outstanding > 0 || self.close_idle {
                    return Verdict::Close(Dead::Idle(now - latest));
                }
                at(now + timeout);
            } else {
                at(overdue_at);
            }
        }
        Verdict::RecheckAt(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn idle_only(close_idle: bool) -> Deadlines {
        Deadlines {
            connection_timeout: Some(s(10)),
            close_idle,
            first_frame: None,
        }
    }

    fn seen(t0: Instant) -> Activity {
        Activity {
            frame_seen: true,
            ..Activity::new(t0)
        }
    }

    #[test]
    fn idle_rule_follows_sparks() {
        let t0 = Instant::now();
        let busy = Activity {
            outstanding: 1,
            ..seen(t0)
        };
        // Quiet long enough with outstanding requests: close.
        assert_eq!(
            idle_only(false).check(t0 + s(10), &busy),
            Verdict::Close(Dead::Idle(s(10)))
        );
        // Nothing outstanding: keep, check a timeout later ...
        assert_eq!(
            idle_only(false).check(t0 + s(10), &seen(t0)),
            Verdict::RecheckAt(Some(t0 + s(20)))
        );
        // ... unless idle connections are closed.
        assert_eq!(
            idle_only(true).check(t0 + s(10), &seen(t0)),
            Verdict::Close(Dead::Idle(s(10)))
        );
        // Recent IO: recheck when it becomes overdue.
        let recent = Activity {
            last_io: t0 + s(5),
            ..busy
        };
        assert_eq!(
            idle_only(false).check(t0 + s(10), &recent),
            Verdict::RecheckAt(Some(t0 + s(15)))
        );
        // A recent request restarts the clock (Spark's furtherRequestsDelay).
        let asked = Activity {
            last_request: t0 + s(8),
            ..busy
        };
        assert_eq!(
            idle_only(false).check(t0 + s(10), &asked),
            Verdict::RecheckAt(Some(t0 + s(18)))
        );
    }

    #[test]
    fn a_connection_without_a_first_frame_is_closed_at_the_handshake_deadline() {
        let t0 = Instant::now();
        let d = Deadlines {
            connection_timeout: Some(s(120)),
            close_idle: false,
            first_frame: Some(s(10)),
        };
        let quiet = Activity::new(t0);
        assert_eq!(
            d.check(t0 + s(3), &quiet),
            Verdict::RecheckAt(Some(t0 + s(10)))
        );
        assert_eq!(
            d.check(t0 + s(10), &quiet),
            Verdict::Close(Dead::NoFirstFrame(s(10)))
        );
        // Writes from this side do not help: the peer must complete a frame.
        let written = Activity {
            last_io: t0 + s(9),
            ..quiet
        };
        assert_eq!(
            d.check(t0 + s(11), &written),
            Verdict::Close(Dead::NoFirstFrame(s(11)))
        );
        // Once a frame arrived the rule is done.
        assert_eq!(
            d.check(t0 + s(11), &seen(t0)),
            Verdict::RecheckAt(Some(t0 + s(120)))
        );
    }

    #[test]
    fn part_of_a_frame_then_silence_is_closed_after_the_connection_timeout() {
        let t0 = Instant::now();
        let d = idle_only(false);
        let partial = Activity {
            mid_frame: true,
            last_read: t0 + s(2),
            last_io: t0 + s(2),
            ..seen(t0)
        };
        assert_eq!(
            d.check(t0 + s(5), &partial),
            Verdict::RecheckAt(Some(t0 + s(12)))
        );
        assert_eq!(
            d.check(t0 + s(12), &partial),
            Verdict::Close(Dead::StalledFrame(s(10)))
        );
        // Bytes trickling in keep it alive.
        let trickle = Activity {
            last_read: t0 + s(11),
            last_io: t0 + s(11),
            ..partial
        };
        assert_eq!(
            d.check(t0 + s(12), &trickle),
            Verdict::RecheckAt(Some(t0 + s(21)))
        );
    }

    #[test]
    fn no_rule_no_timer() {
        let d = Deadlines {
            connection_timeout: None,
            close_idle: false,
            first_frame: None,
        };
        assert_eq!(
            d.check(Instant::now(), &Activity::new(Instant::now())),
            Verdict::RecheckAt(None)
        );
    }
}
