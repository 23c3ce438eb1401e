//! The collector's one Tokio runtime: the async world at the edge (OTLP
//! export; next the HTTP endpoints). Receivers and processors stay plain
//! threads and never await.
//!
//! Promises: created only when a component needs it (none of today's
//! defaults do), two worker threads (`varta-rt`) so a slow task cannot
//! starve the others on a small host; shut down after the exporters have
//! ended, bounded by what is left of the shutdown deadline.

use std::time::Duration;

use tokio::runtime::{Builder, Handle, Runtime};

/// The shared runtime.
#[derive(Debug)]
pub struct AsyncRuntime {
    runtime: Runtime,
}

impl AsyncRuntime {
    pub fn start() -> std::io::Result<AsyncRuntime> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(4)
            .thread_name("varta-rt")
            .enable_all()
            .build()?;
        Ok(AsyncRuntime { runtime })
    }

    pub fn handle(&self) -> Handle {
        self.runtime.handle().clone()
    }

    /// Stops the runtime, waiting at most `timeout` for running tasks.
    pub fn shutdown(self, timeout: Duration) {
        self.runtime.shutdown_timeout(timeout);
    }
}
