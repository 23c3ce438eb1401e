//! Reads of another process's memory — `/proc/<pid>/cmdline` and
//! `environ` — done where a wedge cannot stop the resolver.
//!
//! Such a read takes the target's memory lock (`mmap_lock`); a process
//! stuck holding it (in uninterruptible sleep, mid-`mmap`) makes the read
//! block, and nothing can interrupt it. So the reads run on a reader thread
//! of their own, and the resolver waits for each at most `timeout`: a
//! reader that does not answer in time is abandoned (it stays blocked; the
//! answer, should it come, is dropped), counted, and a fresh reader takes
//! the next read. At most [`MAX_ABANDONED`] readers are ever abandoned;
//! beyond, these reads are skipped (counted) and agents get their
//! attributes without command line and environment — the resolver and
//! every diagnosis go on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::proc;

/// Readers abandoned at most over the resolver's life.
pub const MAX_ABANDONED: u64 = 8;
/// How long the resolver waits for one process's command line and environment.
pub const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// What is read: `argv` and the `OTEL_*` variables the attributes use.
pub type Read = (Option<Vec<String>>, Vec<(String, String)>);

/// Counters of the reads.
#[derive(Debug, Default)]
pub struct MemoryReadStats {
    /// Readers abandoned because a read did not answer within the timeout.
    pub abandoned: AtomicU64,
    /// Reads skipped because [`MAX_ABANDONED`] readers were abandoned.
    pub skipped: AtomicU64,
}

/// The resolver's side of the reader thread.
pub struct MemoryReads {
    jobs: Option<Sender<(u32, Sender<Read>)>>,
    timeout: Duration,
    stats: Arc<MemoryReadStats>,
}

impl std::fmt::Debug for MemoryReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryReads").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

fn reader(jobs: Receiver<(u32, Sender<Read>)>) {
    for (pid, answer) in jobs {
        wedge_for_tests();
        let argv = proc::cmdline(pid);
        let env = proc::environ(pid, |k| k == "OTEL_SERVICE_NAME" || k == "OTEL_RESOURCE_ATTRIBUTES");
        let _ = answer.send((argv, env));
    }
}

/// Test hook (debug builds only): with `VARTA_TEST_WEDGE_MEMORY_READS` set,
/// every reader blocks forever, as a read stuck on a target's memory lock.
fn wedge_for_tests() {
    #[cfg(debug_assertions)]
    if std::env::var_os("VARTA_TEST_WEDGE_MEMORY_READS").is_some() {
        loop {
            std::thread::park();
        }
    }
}

impl MemoryReads {
    pub fn new(timeout: Duration, stats: Arc<MemoryReadStats>) -> MemoryReads {
        let mut reads = MemoryReads { jobs: None, timeout, stats };
        reads.jobs = reads.spawn_reader();
        reads
    }

    fn spawn_reader(&self) -> Option<Sender<(u32, Sender<Read>)>> {
        let (tx, rx) = bounded(1);
        match std::thread::Builder::new().name("resolve-mem".into()).spawn(move || reader(rx)) {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!("cannot start a memory reader: {e}");
                None
            }
        }
    }

    /// `pid`'s command line and `OTEL_*` environment, or `None` when they
    /// could not be read in time (or no reader is left).
    pub fn read(&mut self, pid: u32) -> Option<Read> {
        let Some(jobs) = &self.jobs else {
            self.stats.skipped.fetch_add(1, Relaxed);
            return None;
        };
        let (answer, result) = bounded(1);
        if jobs.send_timeout((pid, answer), self.timeout).is_ok()
            && let Ok(read) = result.recv_timeout(self.timeout)
        {
            return Some(read);
        }
        // Wedged on a target's memory lock: leave it, take a fresh one.
        let abandoned = self.stats.abandoned.fetch_add(1, Relaxed) + 1;
        tracing::warn!(
            pid,
            abandoned,
            "reading a process's command line or environment did not answer in {:?}; its reader is abandoned",
            self.timeout
        );
        self.jobs = if abandoned < MAX_ABANDONED { self.spawn_reader() } else { None };
        if self.jobs.is_none() {
            tracing::error!(
                "{MAX_ABANDONED} memory readers abandoned: command lines and environments are no longer read"
            );
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_command_line_and_environment() {
        let stats = Arc::new(MemoryReadStats::default());
        let mut reads = MemoryReads::new(READ_TIMEOUT, stats.clone());
        let (argv, _) = reads.read(std::process::id()).expect("an answer");
        assert!(argv.is_some_and(|a| !a.is_empty()));
        assert_eq!(stats.abandoned.load(Relaxed), 0);
    }
}
