//! [`RunQueue`]: the queue a pool of threads takes its work from (the inboxes waiting for a
//! message loop thread).
//!
//! A thread that finds the queue empty goes to sleep at once, and a poster wakes one only when
//! one sleeps. A general-purpose channel spins and then yields the CPU a few times before it
//! sleeps (crossbeam's `recv` does), which at a light, steady load (a message a millisecond)
//! cost every loop thread four `sched_yield` calls per message, for nothing. Whether a thread
//! first looks again for a while is its loop's decision, made from the pace of its jobs
//! (`MessageLoop::next_job`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A FIFO shared by producers and a pool of consumer threads that sleep while it is empty.
pub(crate) struct RunQueue<T> {
    state: Mutex<Queue<T>>,
    ready: Condvar,
    /// Items queued, readable without the lock.
    len: AtomicUsize,
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
        }
    }
}

impl<T> RunQueue<T> {
    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item`, waking a sleeping consumer if there is one.
    pub(crate) fn push(&self, item: T) {
        let mut q = self.lock();
        q.items.push_back(item);
        self.len.store(q.items.len(), Ordering::Relaxed);
        let wake = q.sleeping > 0;
        drop(q);
        if wake {
            self.ready.notify_one();
        }
    }

    /// Takes the oldest item, sleeping until there is one.
    pub(crate) fn pop(&self) -> T {
        let mut q = self.lock();
        loop {
            if let Some(item) = self.take(&mut q) {
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
            if let Some(item) = self.take(&mut q) {
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

    fn take(&self, q: &mut Queue<T>) -> Option<T> {
        let item = q.items.pop_front()?;
        self.len.store(q.items.len(), Ordering::Relaxed);
        Some(item)
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
        assert_eq!(q.pop(), 1);
        assert_eq!(q.pop_timeout(Duration::ZERO), Some(2));
        assert!(q.is_empty());
        assert_eq!(q.pop_timeout(Duration::from_millis(1)), None);
    }

    /// Every item pushed while consumers sleep is taken, once: no wake-up is lost.
    #[test]
    fn sleeping_consumers_take_every_item() {
        let q = Arc::new(RunQueue::<Option<usize>>::default());
        let consumers: Vec<_> = (0..4)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Some(i) = q.pop() {
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
