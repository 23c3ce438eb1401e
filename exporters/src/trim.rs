//! Handing memory that exports freed back to the kernel.
//!
//! Why: an OTLP collection builds and encodes per-agent objects chunk by
//! chunk on a blocking-pool thread and sends them from runtime workers (a
//! scrape renders on runtime workers);
//! each of those threads allocates from its own glibc arena, and glibc
//! keeps what was freed there (it only trims the top of the main heap by
//! itself). Measured at 50,000 agents, two OTLP exporters left ~6 MB of
//! freed but resident arena pages behind after their first collection —
//! a fixed cost as large as the exporters' real per-agent working set.
//! `malloc_trim(0)` returns the free pages of every arena.
//!
//! Promises:
//! * **Bounded cost.** At most one trim per [`MIN_INTERVAL_NS`] in the
//!   whole process, whoever asks; callers ask after an OTLP metrics
//!   collection (on its sending task) and when a Prometheus scrape's body
//!   is dropped (on the runtime worker serving it), never per event. A
//!   trim locks one arena at a time while it walks that arena's free
//!   lists, so an allocating thread (the processor publishing a snapshot)
//!   can wait that long once per interval — a CPU walk of the heap's free
//!   lists, never a network or disk wait.
//! * **Only where it means something.** On glibc; elsewhere (musl, other
//!   allocators) it does nothing.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use varta_pipeline::clock::monotonic_ns;

/// Shortest time between two trims, process-wide.
pub const MIN_INTERVAL_NS: u64 = 1_000_000_000;

/// When the last trim ran (monotonic ns; 0 = never).
static LAST_NS: AtomicU64 = AtomicU64::new(0);

/// Returns freed heap memory to the kernel unless a trim ran less than
/// [`MIN_INTERVAL_NS`] ago. Returns whether this call trimmed.
pub fn release_freed_memory() -> bool {
    let now = monotonic_ns();
    let last = LAST_NS.load(Relaxed);
    if last != 0 && now.saturating_sub(last) < MIN_INTERVAL_NS {
        return false;
    }
    // One caller per interval: whoever wins the exchange trims.
    if LAST_NS.compare_exchange(last, now.max(1), Relaxed, Relaxed).is_err() {
        return false;
    }
    trim();
    true
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes no pointers and is thread-safe (it locks
    // each arena); 0 = keep no extra padding at the top of the heap.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_at_most_once_per_interval() {
        // The first call in this process may trim (or a sibling test's did);
        // a second call right after never does.
        release_freed_memory();
        assert!(!release_freed_memory());
    }
}
