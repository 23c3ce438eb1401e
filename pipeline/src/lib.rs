//! varta-pipeline — what every stage of a collector pipeline shares, so
//! that receivers, the processor and exporters never import each other.
//!
//! * [`queue`]: the bounded, recycling batch queue between receivers and
//!   the processor.
//! * [`metrics`]: the one way every component reports its counters
//!   (name, help, kind, label), read by the stats dump, the Prometheus
//!   endpoint and OTLP alike.
//! * [`config`]: the serde adapter for durations (`150ms`, `2s`) every
//!   component's configuration uses.
//! * [`throttle`]: at most one log line per interval for repeated problems,
//!   with the count in between.
//! * [`clock`]: `CLOCK_MONOTONIC` in nanoseconds.
//! * [`procfs`]: small readers of Linux `/proc` (start time, pid namespaces, pid_max).
//! * [`state_file`]: files that outlive the process, written whole or not at all.
//! * [`threads`]: named threads and joins bounded by a deadline.
//! * [`testing`]: helpers for the tests of the crates above (a small disk).
//!
//! (The queue lived in `varta-proto` before; it moved here because `proto`
//! promises pure functions and the queue is a concurrency primitive.)

pub mod clock;
pub mod config;
pub mod metrics;
pub mod procfs;
pub mod queue;
pub mod state_file;
pub mod testing;
pub mod threads;
pub mod throttle;

pub use metrics::{Component, Instrumented, Metric, MetricKind, Role, Sample};
pub use throttle::LogThrottle;
