//! The byte budget of one connection: how much the process may hold for one peer before it
//! stops reading from that peer's socket. Socket-free: counts come in as values.
//!
//! Held bytes are frames queued towards the peer (requests, one-way messages, replies, failures,
//! the unwritten part of stream and chunk bodies) plus what was read from the peer and is not
//! yet done with (requests not yet answered, stream pieces not yet taken by their reader). Over
//! the budget the connection stops reading; it reads again once the count falls under half of
//! it, so a peer that never reads its answers cannot make the process hold more than about the
//! budget (plus one frame) on its behalf. Writing never stops: two peers that both read always
//! make progress.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

/// Bytes read from a peer that the process still holds (requests not yet answered, stream
/// pieces not yet taken by their reader), shared by the connection's task and whoever releases
/// them (responders on other threads, a stream's reader).
#[derive(Debug, Default)]
pub(crate) struct Inbound {
    held: AtomicUsize,
    /// The connection stopped reading over its budget and waits in `waker` for releases.
    parked: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Inbound {
    /// Bytes held.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Counts `n` more bytes held.
    pub(crate) fn add(&self, n: usize) {
        self.held.fetch_add(n, Ordering::AcqRel);
    }

    /// `n` bytes are done with; wakes the connection if it stopped reading over its budget.
    pub(crate) fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.held.fetch_sub(n, Ordering::AcqRel);
        if self.parked.load(Ordering::Acquire) {
            let waker = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    /// The connection stops reading: releases wake `waker`.
    pub(crate) fn park(&self, waker: &Waker) {
        *self.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(waker.clone());
        self.parked.store(true, Ordering::Release);
    }

    /// The connection reads again.
    pub(crate) fn unpark(&self) {
        if self.parked.swap(false, Ordering::AcqRel) {
            self.waker.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
    }
}

/// Bytes read from a peer that the process still holds for as long as this value lives: a
/// received one-way message waiting in an over-full queue, say. It counts in the connection's
/// budget like an unanswered request, so that such messages wait within the budget (the
/// connection stops reading only when the budget is exhausted) rather than stopping the
/// connection by themselves. Dropping it releases the bytes (and wakes a connection that
/// stopped reading over its budget).
#[must_use = "the bytes are released when the hold is dropped"]
pub struct BudgetHold {
    inbound: Arc<Inbound>,
    cost: usize,
}

impl BudgetHold {
    /// Counts `cost` bytes in `inbound` until dropped.
    pub(crate) fn new(inbound: Arc<Inbound>, cost: usize) -> Self {
        inbound.add(cost);
        BudgetHold { inbound, cost }
    }

    /// The bytes this hold counts.
    pub fn cost(&self) -> usize {
        self.cost
    }
}

impl std::fmt::Debug for BudgetHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetHold")
            .field("cost", &self.cost)
            .finish()
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        self.inbound.release(self.cost);
    }
}

/// Stops and resumes reading with hysteresis (over `max`: stop; under `max / 2`: resume).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadGate {
    max: usize,
    paused: bool,
}

impl ReadGate {
    /// A gate for a budget of `max` bytes (0 = no budget: never paused).
    pub(crate) fn new(max: usize) -> Self {
        ReadGate { max, paused: false }
    }

    /// Updates the gate with the bytes currently held; true while reading must stay paused.
    pub(crate) fn update(&mut self, held: usize) -> bool {
        if self.max == 0 {
            return false;
        }
        if self.paused {
            if held < self.max / 2 {
                self.paused = false;
            }
        } else if held > self.max {
            self.paused = true;
        }
        self.paused
    }

    /// Whether reading is paused (as of the last update).
    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_over_the_budget_and_resumes_under_half() {
        let mut gate = ReadGate::new(1000);
        assert!(!gate.update(0));
        assert!(!gate.update(1000), "at the budget: still reading");
        assert!(gate.update(1001), "over: paused");
        assert!(gate.update(900), "still over half: paused");
        assert!(gate.update(500), "at half: paused");
        assert!(!gate.update(499), "under half: reading");
        assert!(!gate.update(999));
        assert!(!gate.is_paused());
    }

    #[test]
    fn a_hold_counts_until_dropped_and_wakes_a_parked_connection() {
        let inbound = Arc::new(Inbound::default());
        let woken = Arc::new(WakeCount::default());
        let waker = Waker::from(woken.clone());
        let a = BudgetHold::new(inbound.clone(), 100);
        let b = BudgetHold::new(inbound.clone(), 50);
        assert_eq!(inbound.held(), 150);
        inbound.park(&waker);
        drop(a);
        assert_eq!(inbound.held(), 50);
        assert_eq!(
            woken.0.load(Ordering::SeqCst),
            1,
            "the parked connection is woken"
        );
        inbound.unpark();
        drop(b);
        assert_eq!(inbound.held(), 0);
        assert_eq!(
            woken.0.load(Ordering::SeqCst),
            1,
            "nobody parked: no wake-up"
        );
    }

    #[derive(Default)]
    struct WakeCount(AtomicUsize);

    impl std::task::Wake for WakeCount {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn no_budget_never_pauses() {
        let mut gate = ReadGate::new(0);
        assert!(!gate.update(usize::MAX));
    }
}
