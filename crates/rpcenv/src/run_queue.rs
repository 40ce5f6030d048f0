//! [`RunQueue`]: the queue a pool of threads takes its work from (the inboxes waiting for a
//! message loop thread).
//!
//! A thread that finds the queue empty either goes to sleep at once or first looks again for a
//! moment: the caller decides, from the pace of its jobs (`MessageLoop::next_job`). A
//! general-purpose channel always spins and yields the CPU a few times before it sleeps
//! (crossbeam's `recv` does), which at a light, steady load (a message a millisecond) cost every
//! loop thread four `sched_yield` calls per message, for nothing.
//!
//! A poster wakes a sleeping thread only when one sleeps and none is looking awake: the thread
//! looking will take the item, and waking another as well costs a futex wake and two context
//! switches for a thread that finds nothing (it did: in a pipelined benchmark the two threads of a
//! loop took turns waking each other). A thread that takes an item and sees more behind it, with
//! a thread asleep and none looking, wakes one, so a burst still spreads over the pool.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_utils::Backoff;

/// A FIFO shared by producers and a pool of consumer threads that sleep while it is empty.
pub(crate) struct RunQueue<T> {
    state: Mutex<Queue<T>>,
    ready: Condvar,
    /// Items queued, readable without the lock.
    len: AtomicUsize,
    /// Consumers looking for an item awake (in [`pop`](Self::pop) with `look_first`).
    looking: AtomicUsize,
    /// Sleepers woken, for the tests.
    #[cfg(test)]
    wakes: AtomicUsize,
}

struct Queue<T> {
    items: VecDeque<T>,
    /// Consumers asleep on `ready`.
    sleeping: usize,
}

impl<T> Default for RunQueue<T> {
    fn default() -> Self {
        RunQueue {
            state: Mutex::new(Queue {
                items: VecDeque::new(),
                sleeping: 0,
            }),
            ready: Condvar::new(),
            len: AtomicUsize::new(0),
            looking: AtomicUsize::new(0),
            #[cfg(test)]
            wakes: AtomicUsize::new(0),
        }
    }
}

impl<T> RunQueue<T> {
    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item`, waking a sleeping consumer if there is one and none is looking awake.
    pub(crate) fn push(&self, item: T) {
        let mut q = self.lock();
        q.items.push_back(item);
        self.len.store(q.items.len(), Ordering::Relaxed);
        let sleeping = q.sleeping > 0;
        drop(q);
        // Read after the lock is released: a consumer that stops looking first counts itself
        // out, then takes the lock. If it took it after this push's critical section, it finds
        // the item; if before, its count-out happened before this read, which then sees it (and
        // this push wakes a sleeper). Either way the item is not left with everyone asleep.
        if sleeping && self.looking.load(Ordering::SeqCst) == 0 {
            self.wake_one();
        }
    }

    /// Takes the oldest item, sleeping until there is one. With `look_first`, a thread that
    /// finds the queue empty first looks again awake for a moment (`Backoff`: brief spinning,
    /// then yielding the CPU a few times, which on a busy machine lets the thread that will post
    /// the next item run) before it sleeps; meanwhile posters leave the sleepers alone.
    pub(crate) fn pop(&self, look_first: bool) -> T {
        if look_first && self.is_empty() {
            self.looking.fetch_add(1, Ordering::SeqCst);
            let backoff = Backoff::new();
            while self.is_empty() && !backoff.is_completed() {
                backoff.snooze();
            }
            self.looking.fetch_sub(1, Ordering::SeqCst);
        }
        let mut q = self.lock();
        loop {
            if let Some((item, more)) = self.take(&mut q) {
                drop(q);
                self.pass_on(more);
                return item;
            }
            q.sleeping += 1;
            q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner());
            q.sleeping -= 1;
        }
    }

    /// Takes the oldest item, sleeping at most `timeout` for one; `None` if none came.
    pub(crate) fn pop_timeout(&self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut q = self.lock();
        loop {
            if let Some((item, more)) = self.take(&mut q) {
                drop(q);
                self.pass_on(more);
                return Some(item);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            q.sleeping += 1;
            q = self
                .ready
                .wait_timeout(q, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            q.sleeping -= 1;
        }
    }

    fn wake_one(&self) {
        #[cfg(test)]
        self.wakes.fetch_add(1, Ordering::Relaxed);
        self.ready.notify_one();
    }

    /// Takes the oldest item, and says whether items are left behind it with a consumer
    /// asleep: the caller then [passes them on](Self::pass_on) once it has released the lock.
    /// Every taker does (`pop` and `pop_timeout` alike): posts made while a consumer looked woke
    /// nobody, and the sleepers would otherwise wait for a post that may never come (the loop's
    /// exit jobs, say).
    fn take(&self, q: &mut Queue<T>) -> Option<(T, bool)> {
        let item = q.items.pop_front()?;
        self.len.store(q.items.len(), Ordering::Relaxed);
        Some((item, !q.items.is_empty() && q.sleeping > 0))
    }

    /// Wakes a sleeper for the items a taker left behind, unless a consumer is looking awake
    /// (that one takes the next).
    fn pass_on(&self, more: bool) {
        if more && self.looking.load(Ordering::SeqCst) == 0 {
            self.wake_one();
        }
    }

    /// Whether nothing is queued (a racy look, without the lock).
    pub(crate) fn is_empty(&self) -> bool {
        self.len.load(Ordering::Relaxed) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn items_come_out_in_order() {
        let q = RunQueue::default();
        assert!(q.is_empty());
        q.push(1);
        q.push(2);
        assert!(!q.is_empty());
        assert_eq!(q.pop(false), 1);
        assert_eq!(q.pop_timeout(Duration::ZERO), Some(2));
        assert!(q.is_empty());
        assert_eq!(q.pop_timeout(Duration::from_millis(1)), None);
    }

    /// Waits (with a deadline) until `n` consumers sleep on `q`.
    fn until_sleeping<T>(q: &RunQueue<T>, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while q.lock().sleeping != n {
            assert!(Instant::now() < deadline, "{n} consumers never slept");
            std::thread::yield_now();
        }
    }

    /// A push leaves the sleepers alone while a consumer looks awake (it will take the item),
    /// and wakes one when none does.
    #[test]
    fn a_push_wakes_a_sleeper_only_when_nobody_looks() {
        let q = Arc::new(RunQueue::default());
        let sleeper = {
            let q = q.clone();
            std::thread::spawn(move || q.pop(false))
        };
        until_sleeping(&q, 1);
        q.looking.fetch_add(1, Ordering::SeqCst);
        q.push(1);
        assert_eq!(
            q.wakes.load(Ordering::Relaxed),
            0,
            "woke a sleeper while one looked"
        );
        q.looking.fetch_sub(1, Ordering::SeqCst);
        // The looker takes what it looked for; then a push with nobody looking wakes the sleeper.
        assert_eq!(q.pop(false), 1);
        q.push(2);
        assert_eq!(q.wakes.load(Ordering::Relaxed), 1);
        assert_eq!(sleeper.join().unwrap(), 2);
    }

    /// Pushes two items while a consumer looks (so nobody is woken), lets `take_first` take the
    /// first, and checks that the consumer asleep in `pop` is woken for the second.
    fn left_behind_reaches_the_sleeper(take_first: impl FnOnce(&RunQueue<i32>) -> Option<i32>) {
        let q = Arc::new(RunQueue::default());
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let sleeper = {
            let q = q.clone();
            std::thread::spawn(move || {
                let item = q.pop(false);
                done_tx.send(()).unwrap();
                item
            })
        };
        until_sleeping(&q, 1);
        q.looking.fetch_add(1, Ordering::SeqCst);
        q.push(1);
        q.push(2);
        q.looking.fetch_sub(1, Ordering::SeqCst);
        assert_eq!(q.wakes.load(Ordering::Relaxed), 0);
        assert_eq!(take_first(&q), Some(1));
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the sleeper was never woken for the item left behind");
        assert_eq!(sleeper.join().unwrap(), 2);
    }

    /// Items pushed while a consumer looked still reach the sleepers: the looker, taking the
    /// first, wakes one for the rest.
    #[test]
    fn a_looker_that_leaves_items_behind_wakes_a_sleeper() {
        left_behind_reaches_the_sleeper(|q| Some(q.pop(true)));
    }

    /// A taker that sleeps with a timeout (a compensating thread) passes on what it leaves
    /// behind too: the loop's exit jobs, posted while a thread looked, reached the other threads
    /// only that way (a shutdown waited forever for a thread asleep in `pop`).
    #[test]
    fn a_timed_taker_that_leaves_items_behind_wakes_a_sleeper() {
        left_behind_reaches_the_sleeper(|q| q.pop_timeout(Duration::ZERO));
    }

    /// Every item pushed while consumers sleep is taken, once: no wake-up is lost.
    #[test]
    fn sleeping_consumers_take_every_item() {
        let q = Arc::new(RunQueue::<Option<usize>>::default());
        let consumers: Vec<_> = (0..4)
            .map(|c| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Some(i) = q.pop(c % 2 == 0) {
                        got.push(i);
                    }
                    got
                })
            })
            .collect();
        let producers: Vec<_> = (0..2)
            .map(|p| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        q.push(Some(p * 10_000 + i));
                        if i % 100 == 0 {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        for _ in 0..4 {
            q.push(None);
        }
        let mut all: Vec<usize> = consumers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..20_000).collect::<Vec<_>>());
    }
}
