//! Named threads and bounded joins, shared by every assembly of a pipeline
//! (the `varta-collector` binary and the embedding façade).
//!
//! Promises: [`spawn`] reports a thread that cannot start as an error
//! naming it, never a panic; [`join_by`] never waits past its deadline and
//! gives back a thread that is still running, so the caller decides
//! whether to leave it (detached) or wait again.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Starts `f` on a thread called `name`.
pub fn spawn<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, String> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|e| format!("cannot start thread {name}: {e}"))
}

/// Waits for `thread` until `deadline`; gives it back if it is still running.
pub fn join_by<T>(thread: JoinHandle<T>, deadline: Instant) -> Result<std::thread::Result<T>, JoinHandle<T>> {
    while !thread.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    if thread.is_finished() { Ok(thread.join()) } else { Err(thread) }
}
