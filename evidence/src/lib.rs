//! Where a stalled process is stuck: thread evidence for one local process
//! whose identity the caller has verified.
//!
//! Promises:
//! - Zero-stop by default: per thread its name, state, `wchan`, current
//!   system call with arguments (and the kernel stack of threads in
//!   uninterruptible sleep), grouped by what the threads wait on, read from
//!   `/proc` without stopping or signalling anything.
//! - User-space stacks only when configured (`stacks`): one thread at a
//!   time (PTRACE_SEIZE + PTRACE_INTERRUPT), each stop bounded by a timeout,
//!   detached at once; never a whole-process stop, and no attachment is left
//!   behind on any path.
//! - Refusals are typed ([`Skip`]): wrong identity (checked before and
//!   after, so pid reuse or an exec mid-capture is caught), already traced,
//!   another user namespace, gone.
//! - Bounded: threads read, time per capture, threads stacked, stack bytes,
//!   frames, binary size, binary parse time per capture, cached binaries.
//!   Every bound that bites is counted in [`Counts`].
//! - Synchronous; a [`Capturer`] is meant for one worker thread and owns
//!   the per-binary symbol cache.

mod binary;
mod cache;
mod evidence;
mod grouping;
mod holder;
mod identity;
mod maps;
mod memory;
mod ptrace;
pub mod sanitize;
mod sockets;
pub mod syscall;
mod threads;
mod unwind;

use std::time::{Duration, Instant};

pub use evidence::{
    BinarySkips, Counts, Evidence, Frame, PauseStats, Stack, StackSkips, ThreadEvidence, Unreadable,
    WaitGroup, WaitKind,
};
pub use sanitize::sanitize;
pub use syscall::SyscallState;

/// What a capture may do. Defaults are the issue's.
#[derive(Debug, Clone)]
pub struct Config {
    /// Threads read per capture; the rest are counted as omitted.
    pub max_threads: usize,
    /// Time for the zero-stop reading; threads not reached are counted.
    pub budget: Duration,
    /// Read `/proc/<pid>/task/<tid>/stack` of threads in `D` state.
    pub kernel_stacks: bool,
    /// Take user-space stacks (stops threads one at a time).
    pub stacks: bool,
    /// Threads whose stacks are taken per capture.
    pub stack_threads: usize,
    /// Time from the first interrupt after which no further thread is
    /// stopped.
    pub stack_budget: Duration,
    /// How long to wait for one thread to stop.
    pub stop_timeout: Duration,
    /// Stack bytes copied per thread (from `sp` up, within its mapping).
    pub stack_bytes: usize,
    /// Frames kept per stack.
    pub max_frames: usize,
    /// Binaries larger than this are not read (their frames show
    /// `module+offset`).
    pub max_binary_bytes: u64,
    /// Time per capture for parsing binaries not yet cached.
    pub parse_budget: Duration,
    /// Binaries kept in the cache.
    pub max_cached_binaries: usize,
    /// Use DWARF for `file:line` and inlined frames.
    pub dwarf: bool,
    /// Capture processes in another user namespace.
    pub allow_cross_userns: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_threads: 256,
            budget: Duration::from_millis(100),
            kernel_stacks: true,
            stacks: false,
            stack_threads: 64,
            stack_budget: Duration::from_millis(50),
            stop_timeout: Duration::from_millis(20),
            stack_bytes: 128 * 1024,
            max_frames: 128,
            max_binary_bytes: 256 << 20,
            parse_budget: Duration::from_millis(500),
            max_cached_binaries: 64,
            dwarf: true,
            allow_cross_userns: false,
        }
    }
}

/// Why a process was not captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("the process is gone")]
    Gone,
    #[error("its /proc files may not be read")]
    Denied,
    #[error("another process has this pid (start time differs)")]
    IdentityMismatch,
    #[error("the process executed a new program during the capture")]
    Changed,
    #[error("the process is traced by pid {tracer}")]
    Traced { tracer: u32 },
    #[error("the process is in another user namespace")]
    OtherUserNamespace,
    #[error("/proc read failed (errno {0})")]
    Error(i32),
}

impl Skip {
    /// A stable word for metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            Skip::Gone => "gone",
            Skip::Denied => "denied",
            Skip::IdentityMismatch => "identity",
            Skip::Changed => "exec",
            Skip::Traced { .. } => "traced",
            Skip::OtherUserNamespace => "userns",
            Skip::Error(_) => "error",
        }
    }
}

/// Captures evidence; keeps the per-binary cache between captures.
#[derive(Debug)]
pub struct Capturer {
    config: Config,
    cache: cache::BinaryCache,
    own_userns: Option<String>,
}

impl Capturer {
    pub fn new(config: Config) -> Capturer {
        let cache = cache::BinaryCache::new(config.max_cached_binaries);
        Capturer { config, cache, own_userns: identity::own_userns() }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Binaries (and refusals) in the cache.
    pub fn cached_binaries(&self) -> usize {
        self.cache.len()
    }

    /// Captures `pid`, which must still have `expected_start_time` (field
    /// 22 of its `stat`) before and after.
    pub fn capture(&mut self, pid: u32, expected_start_time: u64) -> Result<Evidence, Skip> {
        let started = Instant::now();
        let cfg = &self.config;
        let before =
            identity::admit(pid, expected_start_time, self.own_userns.as_deref(), cfg.allow_cross_userns)?;
        let tids = varta_pipeline::procfs::task_ids(pid).map_err(|e| match e {
            varta_pipeline::procfs::ProcError::Gone => Skip::Gone,
            varta_pipeline::procfs::ProcError::Denied => Skip::Denied,
            varta_pipeline::procfs::ProcError::Other(errno) => Skip::Error(errno),
        })?;
        let mut counts = Counts { threads_seen: count(tids.len()), ..Counts::default() };
        counts.threads_omitted = count(tids.len().saturating_sub(cfg.max_threads));

        let mut threads = Vec::new();
        for (i, &tid) in tids.iter().take(cfg.max_threads).enumerate() {
            if started.elapsed() > cfg.budget {
                counts.threads_over_budget = count(tids.len().min(cfg.max_threads) - i);
                break;
            }
            if let Some(t) = threads::read_thread(pid, tid, cfg.kernel_stacks, &mut counts.unreadable) {
                threads.push(t);
            }
        }

        let mut groups = grouping::group(&threads, &mut grouping::ProcFdTargets::new(pid));
        let mut tid_map = holder::TidMap::new(pid);
        for g in &mut groups {
            g.holder = holder::find(pid, g, &threads, &mut tid_map);
        }
        for g in &groups {
            if let Some(h) = g.holder
                && let Ok(i) = threads.binary_search_by_key(&h, |t| t.tid)
            {
                threads[i].holder = true;
            }
        }

        let mut pauses = None;
        if cfg.stacks {
            pauses = self.take_stacks(pid, &mut threads, &groups, &mut counts);
            for g in &mut groups {
                g.common_frames = common_frames(g, &threads);
            }
        }

        identity::confirm(pid, &before)?;
        Ok(Evidence { pid, threads, groups, counts, pauses, duration: started.elapsed() })
    }

    fn take_stacks(
        &mut self,
        pid: u32,
        threads: &mut [ThreadEvidence],
        groups: &[WaitGroup],
        counts: &mut Counts,
    ) -> Option<PauseStats> {
        let cfg = &self.config;
        let order = stack_order(threads, groups);
        counts.stacks_skipped.over_limit = count(order.len().saturating_sub(cfg.stack_threads));
        let chosen: Vec<u32> = order.into_iter().take(cfg.stack_threads).collect();
        let maps = match maps::read(pid) {
            Ok(m) => m,
            Err(_) => {
                counts.stacks_skipped.error += count(chosen.len());
                return None;
            }
        };
        let limits = ptrace::Limits {
            stack_bytes: cfg.stack_bytes,
            stop_timeout: cfg.stop_timeout,
            budget: cfg.stack_budget,
        };
        let phase = ptrace::capture_threads(pid, &chosen, &maps, limits);
        let skips = phase.skips;
        counts.stacks_skipped.uninterruptible += skips.uninterruptible;
        counts.stacks_skipped.stopped += skips.stopped;
        counts.stacks_skipped.gone += skips.gone;
        counts.stacks_skipped.denied += skips.denied;
        counts.stacks_skipped.timeout += skips.timeout;
        counts.stacks_skipped.over_budget += skips.over_budget;
        counts.stacks_skipped.error += skips.error;
        counts.stacks_taken = count(phase.captured.len());
        counts.signals_passed_on = count(phase.captured.iter().filter(|c| c.passed_on_signal).count());
        if phase.captured.is_empty() {
            return None;
        }
        let policy = unwind::LoadPolicy {
            max_bytes: cfg.max_binary_bytes,
            dwarf: cfg.dwarf,
            parse_budget: cfg.parse_budget,
        };
        let max_frames = cfg.max_frames;
        let modules =
            unwind::Modules::build(pid, &maps, &mut self.cache, &policy, &mut counts.binaries_skipped);
        let mut unwind_cache = framehop::x86_64::CacheX86_64::new();
        let pauses: Vec<Duration> = phase.captured.iter().map(|c| c.pause).collect();
        for c in &phase.captured {
            if let Ok(i) = threads.binary_search_by_key(&c.tid, |t| t.tid) {
                let stack = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    modules.stack(c, &mut unwind_cache, max_frames)
                }))
                .unwrap_or_else(|_| Stack { frames: vec![], truncated: Some("unwinder failed".to_owned()) });
                threads[i].stack = Some(stack);
            }
        }
        PauseStats::of(&pauses, phase.window)
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The order in which stacks are taken, so that a low `stack_threads`
/// still covers every group: lock holders first, then one thread of each
/// group (largest group first), then the second of each, and so on.
fn stack_order(threads: &[ThreadEvidence], groups: &[WaitGroup]) -> Vec<u32> {
    let mut order: Vec<u32> = threads.iter().filter(|t| t.holder).map(|t| t.tid).collect();
    let longest = groups.iter().map(|g| g.tids.len()).max().unwrap_or(0);
    for rank in 0..longest {
        for g in groups {
            if let Some(&tid) = g.tids.get(rank)
                && !order.contains(&tid)
            {
                order.push(tid);
            }
        }
    }
    order
}

/// The innermost frames every thread of `group` shares, when all of them
/// have a stack.
fn common_frames(group: &WaitGroup, threads: &[ThreadEvidence]) -> Vec<Frame> {
    let stacks: Option<Vec<&Stack>> = group
        .tids
        .iter()
        .map(|tid| {
            let i = threads.binary_search_by_key(tid, |t| t.tid).ok()?;
            threads[i].stack.as_ref()
        })
        .collect();
    let Some(stacks) = stacks else { return Vec::new() };
    let Some((first, rest)) = stacks.split_first() else { return Vec::new() };
    let same =
        |a: &Frame, b: &Frame| a.module == b.module && a.offset == b.offset && a.function == b.function;
    let n = first
        .frames
        .iter()
        .enumerate()
        .take_while(|(i, f)| rest.iter().all(|s| s.frames.get(*i).is_some_and(|g| same(f, g))))
        .count();
    first.frames[..n].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capturer_can_move_to_a_worker_thread() {
        fn send<T: Send>() {}
        send::<Capturer>();
        send::<Evidence>();
    }

    #[test]
    fn skip_labels_are_distinct() {
        let all = [
            Skip::Gone,
            Skip::Denied,
            Skip::IdentityMismatch,
            Skip::Changed,
            Skip::Traced { tracer: 1 },
            Skip::OtherUserNamespace,
            Skip::Error(5),
        ];
        let mut labels: Vec<_> = all.iter().map(Skip::label).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), all.len());
        assert_eq!(Skip::Traced { tracer: 1 }.label(), "traced");
    }

    #[test]
    fn our_own_process_is_captured_without_stacks() {
        let me = std::process::id();
        let start = varta_pipeline::procfs::start_time(me).expect("own start time");
        let mut capturer = Capturer::new(Config::default());
        let ev = capturer.capture(me, start).expect("captured");
        assert!(ev.thread(me).is_some());
        assert!(ev.pauses.is_none());
        assert_eq!(ev.counts.stacks_taken, 0);
        assert_eq!(capturer.capture(me, start + 1).err(), Some(Skip::IdentityMismatch));
    }
}
