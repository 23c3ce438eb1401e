//! The collector's one Tokio runtime, for the async edge (HTTP endpoints,
//! OTLP export). Receivers and processors never run on it: the hot path
//! never awaits. Started only when a component needs it.

use std::io;

/// Worker threads: scrapes and exports are light; two keep one slow
/// request from delaying another on this 2-core-friendly budget.
const WORKERS: usize = 2;

pub fn start() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .max_blocking_threads(4)
        .thread_name("varta-async")
        .enable_all()
        .build()
}
