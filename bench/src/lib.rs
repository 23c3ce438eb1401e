//! Load generation and result analysis for the benchmark harness
//! (`bench/run.sh`).
//!
//! * [`clock`]: CLOCK_MONOTONIC nanoseconds, the clock both collectors stamp
//!   their events with, so sender and collector times are comparable.
//! * [`agents`]: the simulated agents (pid, nonce, secure IV state) and the
//!   frame each one sends next.
//! * [`sender`]: the paced, `sendmmsg`-batched send loop and what it counts.
//! * [`analysis`]: stall-detection latency and percentile helpers.
//!
//! Only loopback targets are accepted: this crate never sends traffic off
//! the machine.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod agents;
pub mod analysis;
pub mod clock;
pub mod sender;
