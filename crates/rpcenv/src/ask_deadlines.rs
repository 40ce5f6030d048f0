//! The deadlines of an env's awaited asks, kept in one place instead of one runtime timer per ask.
//!
//! Nearly every ask is answered long before its timeout (120 s by default), so a timer per ask
//! is work done for nothing: a boxed `tokio::time::Sleep` (one of the few heap allocations left
//! per ask), its registration in the runtime's timer wheel when the ask is first found pending,
//! and its removal when the ask is dropped. Measured on 2 cores in alternated rounds against the
//! timer per ask (8 rounds, `bench/results/alternate-20261202T184009Z.jsonl`): W6 1.16x asks/s on
//! 13% less CPU per ask, W2 1.08x on 2% less; in another 6 rounds W2 0.91x and W6 1.01x (on 2%
//! and 5% less CPU), i.e. throughput within the machine's spread, and a little less CPU.
//!
//! Here an awaited ask only appends its deadline and a weak reference to its [`ReplySlot`] to
//! the queue of its timeout's duration ([`Lanes`]; at most [`MAX_LANES`] queues, past which an
//! ask joins the queue of the nearest duration): the asks of one duration are registered in
//! about the order of their deadlines, so each queue is sorted by appending (an ask awaited long
//! after it was made is inserted in its place), its front is its earliest deadline, and nothing
//! is removed when an ask ends. One sweeper task per env sleeps until the
//! earliest front deadline, takes the entries that are due and wakes their asks, which then see
//! that their deadline has passed and fail with their timeout error. Entries of asks that have
//! ended are skipped when they come due, and a queue is compacted whenever it has doubled since
//! the last compaction, so its length stays within twice the asks alive (at least
//! [`COMPACT_AT_LEAST`]) for an amortized constant cost per ask.
//!
//! [`Lanes`] is free of clocks and tasks (tested deterministically below); [`AskDeadlines`] adds
//! the lock, the sweeper and its wake-up.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::reply_slot::ReplySlot;

/// A queue is not compacted below this length: a few hundred dead entries cost less to keep
/// than to sweep often.
const COMPACT_AT_LEAST: usize = 1024;

/// Queues kept at most: one per timeout duration in use, up to this many.
const MAX_LANES: usize = 8;

/// One awaited ask: when it is due and where its outcome goes.
struct Entry {
    deadline: Instant,
    slot: Weak<ReplySlot>,
}

impl Entry {
    /// The ask has ended and its future is gone: nothing to wake.
    fn is_gone(&self) -> bool {
        self.slot.strong_count() == 0
    }
}

/// The asks of one timeout duration (or of the durations nearest it, past [`MAX_LANES`]), in
/// deadline order.
struct Lane {
    timeout: Duration,
    queue: VecDeque<Entry>,
    /// The length at which the queue is compacted next.
    compact_at: usize,
}

/// The queues of an env's awaited asks, one per timeout duration in use (at most
/// [`MAX_LANES`]).
#[derive(Default)]
pub(crate) struct Lanes {
    lanes: Vec<Lane>,
}

impl Lanes {
    /// Registers an ask of `timeout` due at `deadline`. Returns whether it is due before every
    /// ask registered so far that is still queued (the sweeper may have to wake sooner).
    pub(crate) fn push(
        &mut self,
        timeout: Duration,
        deadline: Instant,
        slot: &Arc<ReplySlot>,
    ) -> bool {
        let earliest = self.next_deadline().is_none_or(|next| deadline < next);
        let lane = match self.lanes.iter().position(|l| l.timeout == timeout) {
            Some(i) => &mut self.lanes[i],
            None if self.lanes.len() < MAX_LANES => {
                self.lanes.push(Lane {
                    timeout,
                    queue: VecDeque::new(),
                    compact_at: COMPACT_AT_LEAST,
                });
                self.lanes.last_mut().expect("just pushed")
            }
            // Callers that compute each timeout (a deadline's remaining time) would otherwise
            // make a queue per ask, each kept until its deadline. Such asks share the queue of
            // the nearest duration, where they are inserted in their place.
            None => self
                .lanes
                .iter_mut()
                .min_by_key(|l| l.timeout.abs_diff(timeout))
                .expect("MAX_LANES queues exist"),
        };
        if lane.queue.len() >= lane.compact_at {
            lane.queue.retain(|e| !e.is_gone());
            lane.compact_at = (2 * lane.queue.len()).max(COMPACT_AT_LEAST);
        }
        let entry = Entry {
            deadline,
            slot: Arc::downgrade(slot),
        };
        if lane
            .queue
            .back()
            .is_none_or(|last| last.deadline <= deadline)
        {
            lane.queue.push_back(entry);
        } else {
            // Registered out of order: an ask awaited long after it was made, or two threads
            // registering at the same moment. Its place keeps the queue sorted, so that it is
            // not held behind later deadlines.
            let at = lane.queue.partition_point(|e| e.deadline <= deadline);
            lane.queue.insert(at, entry);
        }
        earliest
    }

    /// Takes the asks due at `now` whose futures still exist, to be woken.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<Arc<ReplySlot>> {
        let mut due = Vec::new();
        for lane in &mut self.lanes {
            while lane.queue.front().is_some_and(|e| e.deadline <= now) {
                let entry = lane.queue.pop_front().expect("front exists");
                due.extend(entry.slot.upgrade());
            }
        }
        // A duration no ask uses any more keeps no queue.
        self.lanes.retain(|l| !l.queue.is_empty());
        due
    }

    /// The earliest front deadline: when the sweeper has to look next.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.lanes
            .iter()
            .filter_map(|l| l.queue.front().map(|e| e.deadline))
            .min()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lanes.iter().map(|l| l.queue.len()).sum()
    }
}

/// [`Lanes`] behind a lock, with the sweeper task that wakes the asks that come due.
pub(crate) struct AskDeadlines {
    state: Mutex<State>,
    /// Wakes the sweeper: an earlier deadline was registered, or the env's asks are gone.
    wake: Arc<Notify>,
}

#[derive(Default)]
struct State {
    lanes: Lanes,
    sweeper_started: bool,
}

impl Default for AskDeadlines {
    fn default() -> Self {
        AskDeadlines {
            state: Mutex::new(State::default()),
            wake: Arc::new(Notify::new()),
        }
    }
}

impl std::fmt::Debug for AskDeadlines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AskDeadlines").finish_non_exhaustive()
    }
}

impl AskDeadlines {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an awaited ask; its future is woken (through its slot's waker) once
    /// `deadline` has passed. The first registration starts the sweeper on `runtime`; it looks
    /// at these deadlines for as long as they exist (the env's asks share them).
    pub(crate) fn register(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        timeout: Duration,
        deadline: Instant,
        slot: &Arc<ReplySlot>,
    ) {
        let (earliest, start) = {
            let mut st = self.lock();
            let earliest = st.lanes.push(timeout, deadline, slot);
            (earliest, !std::mem::replace(&mut st.sweeper_started, true))
        };
        if start {
            runtime.spawn(sweep(Arc::downgrade(self), self.wake.clone()));
        } else if earliest {
            self.wake.notify_one();
        }
    }
}

impl Drop for AskDeadlines {
    fn drop(&mut self) {
        // The sweeper ends at once instead of at its next deadline.
        self.wake.notify_one();
    }
}

/// The sweeper: wakes the asks that come due, sleeping until the earliest deadline or until
/// an earlier one is registered; ends once the env's deadlines are gone.
async fn sweep(deadlines: Weak<AskDeadlines>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(d) = deadlines.upgrade() else { return };
            let (due, next) = {
                let mut st = d.lock();
                let due = st.lanes.take_due(Instant::now());
                (due, st.lanes.next_deadline())
            };
            for slot in due {
                slot.wake_waiter();
            }
            next
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn asks_come_due_in_deadline_order_across_durations() {
        let t0 = Instant::now();
        let mut lanes = Lanes::default();
        let slots: Vec<_> = (0..4).map(|_| ReplySlot::new()).collect();
        // Two durations; the second ask is due before the first.
        assert!(lanes.push(10 * SECOND, t0 + 10 * SECOND, &slots[0]));
        assert!(lanes.push(SECOND, t0 + SECOND, &slots[1]));
        assert!(!lanes.push(SECOND, t0 + 2 * SECOND, &slots[2]));
        assert!(!lanes.push(10 * SECOND, t0 + 11 * SECOND, &slots[3]));
        assert_eq!(lanes.next_deadline(), Some(t0 + SECOND));

        // An ask awaited long after it was made: due before the asks of its duration queued
        // ahead of it, it is not held behind them.
        let awaited_late = ReplySlot::new();
        assert!(!lanes.push(10 * SECOND, t0 + 3 * SECOND, &awaited_late));

        assert!(lanes.take_due(t0).is_empty());
        let due = lanes.take_due(t0 + 2 * SECOND);
        assert_eq!(due.len(), 2);
        assert!(Arc::ptr_eq(&due[0], &slots[1]) && Arc::ptr_eq(&due[1], &slots[2]));
        assert_eq!(lanes.next_deadline(), Some(t0 + 3 * SECOND));
        let due = lanes.take_due(t0 + 3 * SECOND);
        assert_eq!(due.len(), 1);
        assert!(Arc::ptr_eq(&due[0], &awaited_late));
        assert_eq!(lanes.next_deadline(), Some(t0 + 10 * SECOND));
        let due = lanes.take_due(t0 + 20 * SECOND);
        assert_eq!(due.len(), 2);
        assert_eq!(lanes.next_deadline(), None);
    }

    #[test]
    fn asks_that_have_ended_are_not_woken() {
        let t0 = Instant::now();
        let mut lanes = Lanes::default();
        let kept = ReplySlot::new();
        lanes.push(SECOND, t0, &ReplySlot::new()); // dropped at once: the ask ended
        lanes.push(SECOND, t0, &kept);
        let due = lanes.take_due(t0);
        assert_eq!(due.len(), 1);
        assert!(Arc::ptr_eq(&due[0], &kept));
    }

    /// Asks that end long before their deadline (nearly all of them) leave entries behind;
    /// compaction keeps a queue within twice the asks alive, however many have passed.
    #[test]
    fn ended_asks_do_not_pile_up() {
        let t0 = Instant::now();
        let mut lanes = Lanes::default();
        let alive: Vec<_> = (0..100).map(|_| ReplySlot::new()).collect();
        for s in &alive {
            lanes.push(120 * SECOND, t0 + 120 * SECOND, s);
        }
        for i in 0..200_000u32 {
            let ended = ReplySlot::new();
            let at = t0 + 120 * SECOND + Duration::from_nanos(u64::from(i));
            lanes.push(120 * SECOND, at, &ended);
            assert!(
                lanes.len() <= 2 * COMPACT_AT_LEAST + 1,
                "{} entries",
                lanes.len()
            );
        }
        // The asks still alive are all still there.
        assert_eq!(lanes.take_due(t0 + 120 * SECOND).len(), alive.len());
    }

    /// Asks whose timeouts all differ (computed from a deadline, say) share a bounded number of
    /// queues, ended ones do not pile up, and each still comes due in deadline order.
    #[test]
    fn asks_of_many_durations_share_a_bounded_number_of_queues() {
        let t0 = Instant::now();
        let mut lanes = Lanes::default();
        let alive: Vec<_> = (0..50u64)
            .map(|i| {
                (
                    ReplySlot::new(),
                    Duration::from_millis(1_000 + 997 * i % 50_000),
                )
            })
            .collect();
        for (slot, timeout) in &alive {
            lanes.push(*timeout, t0 + *timeout, slot);
        }
        for i in 0..100_000u64 {
            let timeout = Duration::from_micros(1 + i * 7_919 % 120_000_000);
            lanes.push(timeout, t0 + timeout, &ReplySlot::new());
            assert!(lanes.lanes.len() <= MAX_LANES);
            assert!(lanes.len() <= MAX_LANES * 2 * COMPACT_AT_LEAST + alive.len());
        }
        let mut expected: Vec<_> = alive.iter().map(|(_, t)| *t).collect();
        expected.sort();
        let mut seen = Vec::new();
        while let Some(next) = lanes.next_deadline() {
            for slot in lanes.take_due(next) {
                let (_, t) = alive.iter().find(|(s, _)| Arc::ptr_eq(s, &slot)).unwrap();
                seen.push(*t);
            }
        }
        assert_eq!(seen, expected);
    }

    /// The sweeper wakes a registered ask once its deadline has passed, including one
    /// registered with a deadline earlier than the sweeper's current sleep.
    #[test]
    fn the_sweeper_wakes_asks_when_due() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::{Context, Wake, Waker};

        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let deadlines = Arc::new(AskDeadlines::default());
        let register = |timeout: Duration, slot: &Arc<ReplySlot>| {
            deadlines.register(rt.handle(), timeout, Instant::now() + timeout, slot)
        };
        let woken = |slot: &Arc<ReplySlot>| {
            let count = Arc::new(Count(AtomicUsize::new(0)));
            let waker = Waker::from(count.clone());
            assert!(slot.poll(&mut Context::from_waker(&waker)).is_pending());
            count
        };
        let late = ReplySlot::new();
        let late_woken = woken(&late);
        register(3600 * SECOND, &late);
        let soon = ReplySlot::new();
        let soon_woken = woken(&soon);
        register(Duration::from_millis(20), &soon);
        let deadline = Instant::now() + 10 * SECOND;
        while soon_woken.0.load(Ordering::SeqCst) == 0 {
            assert!(
                Instant::now() < deadline,
                "the ask due in 20 ms was not woken"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(late_woken.0.load(Ordering::SeqCst), 0);
    }
}
