//! When a thread that has run out of work should stay awake for the next piece of it.
//!
//! A message-loop thread whose inbox ran empty, or a caller blocked on its reply, can either go to
//! sleep (a futex wait; the next message must then wake it, which costs a few µs of CPU on both
//! sides and tens of µs of latency on an idle core) or spin for a while, watching for the next
//! piece of work. Spinning wins when the next piece comes within the spin; otherwise it is pure
//! waste, and at a light, steady load (heartbeats, status asks: hundreds per second) it would be
//! almost all of the CPU the process uses.
//!
//! So a waiter spins only when the recent past says that the next piece is due within the spin
//! window: a [`Pace`] keeps a smoothed estimate of the interval between pieces of work (between
//! batches for an inbox, the reply time for a blocked caller) and grants a spin only while that
//! estimate is inside the window (`rpc.messageLoop.spinMicros`; `0` turns spinning off).
//!
//! `Pace` holds no clock: callers feed it intervals in nanoseconds and ask for a budget, so the
//! rule is tested deterministically below. [`spin_until`] is the one spin loop of the crate,
//! built on `crossbeam_utils::Backoff` (brief exponential spinning, then yielding the CPU).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::Backoff;

/// Weight of a new sample in the moving average, as a shift: 1/4.
const NEW_SAMPLE_SHIFT: u32 = 2;

/// Intervals up to this many windows earn a spin when the spin also saves the wake-ups that
/// lengthened them (see [`Pace::spin_budget`]).
const REACH: u64 = 2;

/// A sample is capped at this many windows, so that after a long pause a few short intervals
/// bring the estimate back inside the window (a burst is recognised within a handful of pieces).
const SAMPLE_CAP_WINDOWS: u64 = 8;

/// A smoothed estimate of the interval between pieces of work, and the spin it justifies.
///
/// Shared by the threads that wait on one source of work (relaxed atomics: a lost update only
/// makes the estimate a little noisier).
#[derive(Debug)]
pub(crate) struct Pace {
    /// The spin window in ns; 0 disables spinning.
    window_ns: u64,
    /// Exponential moving average of the observed intervals, in ns.
    estimate_ns: AtomicU64,
    /// Estimates up to this many windows earn a spin.
    reach: u64,
}

impl Pace {
    /// A pace for waits of at most `window`; starts by assuming a busy source (an estimate of
    /// half the window), so the first pieces of a burst are not slowed down.
    ///
    /// For a source whose intervals shrink when its waiter stays awake: an inbox, whose next
    /// message comes sooner when the answer to the last one left without a wake-up (see
    /// [`spin_budget`](Self::spin_budget)).
    pub(crate) fn new(window: Duration) -> Self {
        Self::with_reach(window, REACH)
    }

    /// A pace for a caller blocked on its reply: the reply comes no sooner because the caller
    /// spins (the peer's wake-ups are not the caller's to save), so only replies within the
    /// window earn a spin. A reply that takes 100 µs at a light load would otherwise make the
    /// caller spin 50 µs for nothing on every ask; the intervals it learns from are the times
    /// the replies arrived, not the times the caller woke up.
    pub(crate) fn for_replies(window: Duration) -> Self {
        Self::with_reach(window, 1)
    }

    fn with_reach(window: Duration, reach: u64) -> Self {
        let window_ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        Pace {
            window_ns,
            estimate_ns: AtomicU64::new(window_ns / 2),
            reach,
        }
    }

    /// Records an observed interval between two pieces of work.
    pub(crate) fn observe(&self, interval: Duration) {
        if self.window_ns == 0 {
            return;
        }
        let sample = capped_ns(interval, self.window_ns);
        let old = self.estimate_ns.load(Ordering::Relaxed);
        self.estimate_ns
            .store(moved_average(old, sample), Ordering::Relaxed);
    }

    /// How long a waiter may spin now: the window while the estimated interval is within the
    /// pace's reach, else nothing. An inbox's reach ([`REACH`] windows) is wider than the
    /// window because an interval observed while nobody spun includes the wake-ups a spin
    /// saves: a caller that asks again as soon as it has its reply comes back within the window
    /// once the loop stays awake, but not before.
    pub(crate) fn spin_budget(&self) -> Duration {
        if self.window_ns != 0
            && self.estimate_ns.load(Ordering::Relaxed) <= self.window_ns.saturating_mul(self.reach)
        {
            Duration::from_nanos(self.window_ns)
        } else {
            Duration::ZERO
        }
    }

    /// The spin window this pace grants at most.
    pub(crate) fn window(&self) -> Duration {
        Duration::from_nanos(self.window_ns)
    }
}

/// `d` in ns, capped at [`SAMPLE_CAP_WINDOWS`] windows of `window_ns`: after a long pause (or
/// an ask that timed out) a few ordinary samples bring an average back.
fn capped_ns(d: Duration, window_ns: u64) -> u64 {
    u64::try_from(d.as_nanos())
        .unwrap_or(u64::MAX)
        .min(window_ns.saturating_mul(SAMPLE_CAP_WINDOWS))
}

/// The moving average `old` with `sample` added: old + (sample - old) / 4, in unsigned
/// arithmetic.
fn moved_average(old: u64, sample: u64) -> u64 {
    old - (old >> NEW_SAMPLE_SHIFT) + (sample >> NEW_SAMPLE_SHIFT)
}

/// Spins (then yields the CPU, as `Backoff` does) until `done()` holds or `budget` has passed;
/// returns `done()`'s last answer. With a zero budget it looks once.
pub(crate) fn spin_until(budget: Duration, mut done: impl FnMut() -> bool) -> bool {
    if done() {
        return true;
    }
    if budget.is_zero() {
        return false;
    }
    let start = Instant::now();
    let backoff = Backoff::new();
    loop {
        backoff.snooze();
        if done() {
            return true;
        }
        if start.elapsed() >= budget {
            return false;
        }
    }
}

/// Whether a lone ask awaited in a task should look for its reply awake, learned by trying both.
///
/// Awake, the task keeps its IO thread polling the driver, so that the reply is read by a
/// thread that is running rather than one woken on an idle core: that halves the round trip
/// when the answer is made on another thread (a message loop). But when the answering endpoint
/// is in the same process and runs inline (see `RpcEndpoint::inline`), a sleeping caller lets
/// one IO thread do everything (read the request, answer it, read the reply, resume the
/// caller), while an awake caller keeps a second thread in the way and every step crosses
/// cores: W1 ran at 26k asks/s awake against 58k asleep, with 2.5 times the CPU per ask.
/// Neither side can tell which case it is in, so the env measures: the mean reply time of the
/// asks that looked awake and of those that slept. It stays awake only while that is faster by
/// a quarter (staying awake costs CPU), and every [`TRY_OTHER_EVERY`]th ask tries the other
/// mode so that a change of circumstances is noticed. (With a try every 16th ask and a margin
/// of an eighth, W1 came out between the two: the few asks awake among sleeping ones are fast,
/// all on one thread, which kept pulling it back to staying awake.)
#[derive(Debug)]
pub(crate) struct AwakeOrAsleep {
    /// The spin window in ns: reply times are capped at [`SAMPLE_CAP_WINDOWS`] of it.
    window_ns: u64,
    /// Moving averages of the reply times, in ns (0: none seen yet).
    awake_ns: AtomicU64,
    asleep_ns: AtomicU64,
    asks: AtomicU64,
}

/// One ask in this many tries the mode not preferred.
const TRY_OTHER_EVERY: u64 = 64;

impl AwakeOrAsleep {
    /// The choice for the asks of an env whose spin window is `window`.
    pub(crate) fn new(window: Duration) -> Self {
        AwakeOrAsleep {
            window_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
            awake_ns: AtomicU64::new(0),
            asleep_ns: AtomicU64::new(0),
            asks: AtomicU64::new(0),
        }
    }

    /// Whether the next ask looks for its reply awake.
    pub(crate) fn awake(&self) -> bool {
        let n = self.asks.fetch_add(1, Ordering::Relaxed);
        let preferred = Self::prefer_awake(
            self.awake_ns.load(Ordering::Relaxed),
            self.asleep_ns.load(Ordering::Relaxed),
        );
        if n % TRY_OTHER_EVERY == TRY_OTHER_EVERY - 1 {
            !preferred
        } else {
            preferred
        }
    }

    /// Awake until both modes have been seen; then only while it is faster by a quarter.
    fn prefer_awake(awake_ns: u64, asleep_ns: u64) -> bool {
        awake_ns == 0 || asleep_ns == 0 || awake_ns + awake_ns / 4 < asleep_ns
    }

    /// An ask's reply came `took` after it started to wait, `awake` or not.
    pub(crate) fn observe(&self, awake: bool, took: Duration) {
        let cell = if awake {
            &self.awake_ns
        } else {
            &self.asleep_ns
        };
        let sample = capped_ns(took, self.window_ns);
        let old = cell.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            moved_average(old, sample)
        };
        cell.store(new.max(1), Ordering::Relaxed);
    }
}

/// When the env's callers blocked on replies last had one, and how soon they ask again after
/// it: whether they ask back to back.
#[derive(Debug)]
pub(crate) struct AskGaps {
    epoch: Instant,
    /// When the last wait ended, in ns after `epoch` (0: none yet).
    last_end_ns: AtomicU64,
    /// The gaps between a wait's end and the next wait's start.
    pace: Pace,
}

impl AskGaps {
    /// Gaps within `window` count as back to back.
    pub(crate) fn new(window: Duration) -> Self {
        AskGaps {
            epoch: Instant::now(),
            last_end_ns: AtomicU64::new(0),
            pace: Pace::for_replies(window),
        }
    }

    fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// A caller starts to wait at `start`: learns the gap since the last wait ended, and answers
    /// whether callers have been asking back to back.
    pub(crate) fn back_to_back(&self, start: Instant) -> bool {
        let last = self.last_end_ns.load(Ordering::Relaxed);
        if last != 0 {
            let gap = self.ns(start).saturating_sub(last);
            self.pace.observe(Duration::from_nanos(gap));
        }
        !self.pace.spin_budget().is_zero()
    }

    /// A wait ended at `at`.
    pub(crate) fn ended(&self, at: Instant) {
        self.last_end_ns
            .store(self.ns(at).max(1), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_micros(50);

    #[test]
    fn a_busy_source_earns_a_spin_and_a_slow_one_does_not() {
        let pace = Pace::new(WINDOW);
        assert_eq!(
            pace.spin_budget(),
            WINDOW,
            "starts by assuming a busy source"
        );
        // Heartbeats every millisecond: the estimate leaves the window within a few samples.
        for _ in 0..4 {
            pace.observe(Duration::from_millis(1));
        }
        assert_eq!(pace.spin_budget(), Duration::ZERO);
        // A burst at 10 µs intervals brings it back within a handful of pieces.
        let mut pieces = 0;
        while pace.spin_budget().is_zero() {
            pace.observe(Duration::from_micros(10));
            pieces += 1;
            assert!(pieces < 16, "a burst must be recognised quickly");
        }
        assert!(pieces >= 2, "one short interval alone is not a burst");
        assert_eq!(pace.spin_budget(), WINDOW);
    }

    #[test]
    fn a_long_pause_does_not_outweigh_a_following_burst() {
        let pace = Pace::new(WINDOW);
        pace.observe(Duration::from_secs(3600)); // an hour of silence
        assert_eq!(pace.spin_budget(), Duration::ZERO);
        for _ in 0..8 {
            pace.observe(Duration::from_micros(5));
        }
        assert_eq!(pace.spin_budget(), WINDOW);
    }

    /// The modes `choice` picks for the next `n` asks, as 'A'wake and 's'leep.
    fn picks(choice: &AwakeOrAsleep, n: usize) -> String {
        (0..n)
            .map(|_| if choice.awake() { 'A' } else { 's' })
            .collect()
    }

    #[test]
    fn an_awaited_ask_stays_awake_only_while_that_is_clearly_faster() {
        let us = Duration::from_micros;
        let n = TRY_OTHER_EVERY as usize;
        let choice = AwakeOrAsleep::new(WINDOW);
        // Nothing known of sleeping yet: awake, as before the learner, but for the one try.
        choice.observe(true, us(18));
        let seen = picks(&choice, n);
        assert_eq!(seen.matches('s').count(), 1, "{seen}");
        // Sleeping answered in 16 µs (one IO thread doing everything): asleep from then on,
        // but for one try awake in every TRY_OTHER_EVERY asks.
        choice.observe(false, us(16));
        let seen = picks(&choice, 4 * n);
        assert_eq!(seen.matches('A').count(), 4, "{seen}");
        // A hand-off to a loop thread: asleep 36 µs, awake 18 µs. The averages move within a
        // handful of replies, and then awake is preferred, with one try asleep per round.
        for _ in 0..8 {
            choice.observe(false, us(36));
            choice.observe(true, us(18));
        }
        let seen = picks(&choice, 4 * n);
        assert_eq!(seen.matches('s').count(), 4, "{seen}");
        // Faster awake, but by less than a quarter: not worth the CPU.
        for _ in 0..16 {
            choice.observe(false, us(21));
            choice.observe(true, us(18));
        }
        let seen = picks(&choice, 4 * n);
        assert_eq!(seen.matches('A').count(), 4, "{seen}");
        // An ask awake that timed out after two minutes counts as a few windows: a handful of
        // ordinary replies, not thousands, bring the average back.
        choice.observe(true, Duration::from_secs(120));
        for _ in 0..8 {
            choice.observe(false, us(36));
            choice.observe(true, us(18));
        }
        let seen = picks(&choice, 4 * n);
        assert_eq!(seen.matches('s').count(), 4, "{seen}");
    }

    /// The budget once `pace` has seen nothing but `interval` for a while.
    fn settled(pace: &Pace, interval: Duration) -> Duration {
        for _ in 0..64 {
            pace.observe(interval);
        }
        pace.spin_budget()
    }

    #[test]
    fn intervals_at_the_edge_of_the_window() {
        let pace = Pace::new(WINDOW);
        let us = Duration::from_micros;
        assert_eq!(
            settled(&pace, us(40)),
            WINDOW,
            "40 µs intervals earn a 50 µs spin"
        );
        assert_eq!(
            settled(&pace, us(90)),
            WINDOW,
            "so do 90 µs ones seen while nobody spun: the wake-ups were part of them"
        );
        assert_eq!(
            settled(&pace, us(150)),
            Duration::ZERO,
            "150 µs ones do not"
        );
    }

    #[test]
    fn a_blocked_caller_spins_only_for_replies_within_the_window() {
        let pace = Pace::for_replies(WINDOW);
        let us = Duration::from_micros;
        assert_eq!(
            settled(&pace, us(40)),
            WINDOW,
            "40 µs replies earn a 50 µs spin"
        );
        assert_eq!(
            settled(&pace, us(90)),
            Duration::ZERO,
            "90 µs replies do not: the caller's spin does not bring them sooner"
        );
    }

    #[test]
    fn a_zero_window_never_spins() {
        let pace = Pace::new(Duration::ZERO);
        assert_eq!(pace.window(), Duration::ZERO);
        pace.observe(Duration::from_nanos(1));
        assert_eq!(pace.spin_budget(), Duration::ZERO);
        let mut looks = 0;
        assert!(!spin_until(Duration::ZERO, || {
            looks += 1;
            false
        }));
        assert_eq!(looks, 1, "a zero budget looks once");
    }

    #[test]
    fn spin_until_returns_as_soon_as_done() {
        let mut looks = 0;
        assert!(spin_until(Duration::from_secs(60), || {
            looks += 1;
            looks == 3
        }));
        assert_eq!(looks, 3);
    }

    #[test]
    fn spin_until_gives_up_after_its_budget() {
        let budget = Duration::from_millis(2);
        let start = Instant::now();
        assert!(!spin_until(budget, || false));
        assert!(start.elapsed() >= budget);
    }

    /// Callers asking again within the window count as back to back (they may spin for their
    /// replies); callers at a pace of their own (an ask a millisecond) do not.
    #[test]
    fn only_back_to_back_callers_count_as_such() {
        let window = Duration::from_micros(50);
        let gaps = AskGaps::new(window);
        let mut t = Instant::now();
        for _ in 0..8 {
            gaps.ended(t);
            t += Duration::from_millis(1);
            gaps.back_to_back(t);
        }
        assert!(!gaps.back_to_back(t), "an ask a millisecond");
        for _ in 0..16 {
            gaps.ended(t);
            t += Duration::from_micros(5);
            gaps.back_to_back(t);
        }
        assert!(gaps.back_to_back(t), "asks 5 µs after each reply");
    }
}
