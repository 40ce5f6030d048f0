//! `rpcenv bench --core-rtt`: how long two threads on two cores take to hand a cache line back
//! and forth, the machine state that moves rpcenv's throughput most.
//!
//! On the 2-core virtual machines these benchmarks run on, the host places the two virtual CPUs
//! near each other (a round trip of about 55 ns) or far apart (about 340 ns), and changes its mind
//! every few seconds. Every ask crosses between threads a few times, so W2 runs at about 435k
//! asks/s in the first state and 240k in the second, with the same code and twice the CPU per ask
//! (measured 2026-12-01, alternating a probe like this one with W2 runs: 22 of 24 pairs agreed,
//! the other two fell on a change of state; a CPU-bound hash on both cores took the same time in
//! either state). Figures of two runs compare only when the probe says both ran in the same
//! state; `bench/compare.sh` and `bench/alternate.sh` record it beside every run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Round trips per measurement, and measurements at most (the fastest is reported).
const ROUND_TRIPS: u64 = 20_000;
const MEASUREMENTS: u64 = 15;
/// The measuring stops after this long: on a busy machine the two threads may share a core, and
/// then every round trip waits for the other thread's turn on it.
const BUDGET: Duration = Duration::from_secs(2);
/// Spins before a waiting thread yields its core (far beyond any round trip between two cores,
/// and what lets the other thread run when both have one core between them).
const SPINS_BEFORE_YIELD: u32 = 1 << 14;
/// Written by the measuring thread to tell the echo thread to stop (odd, as every value the
/// echo thread answers).
const STOP: u64 = u64::MAX;

/// Waits until `counter` satisfies `done`, spinning, and yielding the core now and then.
fn wait_for(counter: &AtomicU64, done: impl Fn(u64) -> bool) -> u64 {
    let mut spins = 0u32;
    loop {
        let v = counter.load(Ordering::Acquire);
        if done(v) {
            return v;
        }
        spins += 1;
        if spins == SPINS_BEFORE_YIELD {
            spins = 0;
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// The time, in nanoseconds, of one round trip of a counter between this thread and a second
/// one, each spinning until the other has moved it on: the mean of the fastest of several
/// measurements, since anything else running (a process ending, a timer) only adds to one. Both
/// threads spin, so on an otherwise idle machine each has a core of its own; on a busy one the
/// figure is large (and the measuring stops after [`BUDGET`]), which is what it should say.
pub(crate) fn core_round_trip_ns() -> f64 {
    let counter = Arc::new(AtomicU64::new(0));
    let echo = {
        let counter = counter.clone();
        std::thread::spawn(move || {
            loop {
                // Wait for an odd value from this thread's partner (STOP is odd too), answer
                // with the next even one.
                let v = wait_for(&counter, |v| v % 2 == 1);
                if v == STOP {
                    return;
                }
                counter.store(v + 1, Ordering::Release);
            }
        })
    };
    let deadline = Instant::now() + BUDGET;
    let mut fastest = f64::INFINITY;
    let mut next = 1;
    'measuring: for _ in 0..MEASUREMENTS {
        let t0 = Instant::now();
        for done in 1..=ROUND_TRIPS {
            counter.store(next, Ordering::Release);
            wait_for(&counter, |v| v == next + 1);
            next += 2;
            // Out of time (the threads share a core): the round trips made so far are the
            // measurement, if it is the first.
            if done % 256 == 0 && Instant::now() > deadline {
                if fastest.is_infinite() {
                    fastest = t0.elapsed().as_nanos() as f64 / done as f64;
                }
                break 'measuring;
            }
        }
        fastest = fastest.min(t0.elapsed().as_nanos() as f64 / ROUND_TRIPS as f64);
    }
    counter.store(STOP, Ordering::Release);
    echo.join().expect("the echo thread does not panic");
    fastest
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_round_trip_takes_a_positive_finite_time() {
        let ns = super::core_round_trip_ns();
        assert!(ns.is_finite() && ns > 0.0, "{ns}");
    }
}
