//! Every end-to-end test in one test binary: one link instead of one per
//! file, and libtest runs all of them on its threads together, so a long
//! test no longer holds up the files after it. The helpers they share (the
//! collector harness, signals and reaping, the in-test OTLP server, the
//! real peers) are the `varta_integration` library (`integration/src`).
//!
//! Tests here run in parallel threads of one process, so none of them may
//! change what the whole process shares: no `setrlimit`, signal
//! dispositions, environment variables, current directory, RSS or
//! descriptor counts of this process, fixed ports or paths, or waiting on
//! any child but its own. Tests that load the machine take turns through
//! `varta_integration::heavy()`. A test that needs any of that runs in a
//! binary of its own, saying why at its top (`namespaces.rs`: a custom
//! harness).

mod attributes;
mod collector;
mod deploy;
mod deploy_prometheus;
mod diagnosis;
mod embedded;
mod flood;
mod health;
mod interop;
mod otelcol;
mod otlp;
mod prometheus;
mod recovery;
mod reload;
mod restart;
mod thresholds;
