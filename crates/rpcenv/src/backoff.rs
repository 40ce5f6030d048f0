//! Waiting a moment without sleeping, for the threads that expect what they wait for within
//! microseconds (a processor lingering on an empty inbox, an asker looking for its reply):
//! waking a sleeping thread costs tens of microseconds on an idle core.

/// One look's pause: a short spin, and every fourth look the CPU yielded to whatever else is
/// runnable on it. `looks` counts the looks so far.
#[inline]
pub(crate) fn pause(looks: &mut u32) {
    *looks += 1;
    if *looks % 4 == 0 {
        std::thread::yield_now();
    } else {
        for _ in 0..32 {
            std::hint::spin_loop();
        }
    }
}
