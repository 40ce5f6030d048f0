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
use std::time::Instant;

/// Round trips per measurement, and measurements (the fastest is reported).
const ROUND_TRIPS: u64 = 20_000;
const MEASUREMENTS: usize = 15;

/// The time, in nanoseconds, of one round trip of a counter between this thread and a second
/// one, each spinning until the other has moved it on: the mean of the fastest of several
/// measurements, since anything else running (a process ending, a timer) only adds to one. Both
/// threads spin, so on an otherwise idle machine each has a core of its own.
pub(crate) fn core_round_trip_ns() -> f64 {
    let counter = Arc::new(AtomicU64::new(0));
    let total = ROUND_TRIPS * MEASUREMENTS as u64;
    let echo = {
        let counter = counter.clone();
        std::thread::spawn(move || {
            for i in 0..total {
                // Wait for the odd value this thread's partner writes, answer with the even one.
                while counter.load(Ordering::Acquire) != 2 * i + 1 {
                    std::hint::spin_loop();
                }
                counter.store(2 * i + 2, Ordering::Release);
            }
        })
    };
    let mut ns = Vec::with_capacity(MEASUREMENTS);
    for m in 0..MEASUREMENTS as u64 {
        let t0 = Instant::now();
        for i in m * ROUND_TRIPS..(m + 1) * ROUND_TRIPS {
            counter.store(2 * i + 1, Ordering::Release);
            while counter.load(Ordering::Acquire) != 2 * i + 2 {
                std::hint::spin_loop();
            }
        }
        ns.push(t0.elapsed().as_nanos() as f64 / ROUND_TRIPS as f64);
    }
    echo.join().expect("the echo thread does not panic");
    ns.into_iter().fold(f64::INFINITY, f64::min)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_round_trip_takes_a_positive_finite_time() {
        let ns = super::core_round_trip_ns();
        assert!(ns.is_finite() && ns > 0.0, "{ns}");
    }
}
