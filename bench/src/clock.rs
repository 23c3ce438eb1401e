//! CLOCK_MONOTONIC in nanoseconds (the collectors' `observer_ns` clock).

pub use varta_pipeline::clock::monotonic_ns;

/// Sleeps until the absolute CLOCK_MONOTONIC time `deadline_ns` (returns at
/// once when it has passed). Interrupted sleeps are resumed.
pub fn sleep_until_ns(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: `ts` is a valid timespec; the remaining-time pointer may be null for TIMER_ABSTIME.
        let rc = unsafe {
            libc::clock_nanosleep(libc::CLOCK_MONOTONIC, libc::TIMER_ABSTIME, &ts, std::ptr::null_mut())
        };
        if rc != libc::EINTR {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_advances_and_sleep_waits() {
        let a = monotonic_ns();
        sleep_until_ns(a + 2_000_000);
        let b = monotonic_ns();
        assert!(b >= a + 2_000_000, "slept {} ns", b - a);
    }
}
