//! What this process has used so far, from `/proc/self`: CPU time and peak resident memory
//! (the figures of `rpcenv bench`'s lines and of `rpcenv fetch`'s closing log line).

use std::time::Duration;

/// CPU time (user + system, summed over all threads, dead ones included) this process has used
/// so far: fields 14 and 15 of `/proc/self/stat`, in clock ticks. Linux reports them in
/// `USER_HZ` units, which is 100 on every architecture it exposes to user space, so a tick is
/// 10 ms. `None` where the file cannot be read (not Linux).
pub(crate) fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    const USER_HZ: u64 = 100;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

/// Peak resident set size (VmHWM) of this process, in KiB.
pub(crate) fn peak_rss_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_cpu_grows_with_work() {
        let before = process_cpu().expect("/proc/self/stat is readable on Linux");
        // Burn CPU on this thread until the counter moves (a tick is 10 ms); the deadline only
        // bounds a broken counter.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut x = 0u64;
        let after = loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let now = process_cpu().unwrap();
            if now > before || std::time::Instant::now() > deadline {
                break now;
            }
        };
        assert!(after > before, "{before:?} -> {after:?}");
    }

    #[test]
    fn peak_rss_is_read() {
        assert!(peak_rss_kb() > 0);
    }
}
