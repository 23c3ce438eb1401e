//! Names the thread that holds the lock a futex group waits on, for glibc
//! `pthread_mutex_t`: its first word (`__lock`) is the futex the waiters
//! sleep on, and `__owner` at offset 8 is the holder's tid in the target's
//! own pid namespace. The word is read with a bounded `process_vm_readv`;
//! a match needs a non-zero lock word and an owner that is a live thread
//! of the process outside the group, so a condition variable or a Rust
//! mutex (no owner field) simply yields no holder. Best effort: every
//! failure means "unknown".

use std::collections::HashMap;

use varta_pipeline::procfs;

use crate::evidence::{ThreadEvidence, WaitGroup};
use crate::memory;

/// Maps tids as the target sees them (its pid namespace) to ours.
pub(crate) struct TidMap {
    pid: u32,
    /// `None` until needed; empty when the target shares our namespace.
    inner_to_ours: Option<HashMap<u32, u32>>,
}

impl TidMap {
    pub(crate) fn new(pid: u32) -> TidMap {
        TidMap { pid, inner_to_ours: None }
    }

    fn ours(&mut self, inner: u32, threads: &[ThreadEvidence]) -> Option<u32> {
        let pid = self.pid;
        let map = self.inner_to_ours.get_or_insert_with(|| {
            // One NSpid entry: the target lives in our pid namespace.
            if procfs::ns_pids(pid).is_some_and(|p| p.len() <= 1) {
                return HashMap::new();
            }
            threads
                .iter()
                .filter_map(|t| {
                    let status = procfs::read(&format!("/proc/{pid}/task/{}/status", t.tid)).ok()?;
                    let inner = *procfs::parse_ns_pids(&status)?.last()?;
                    Some((inner, t.tid))
                })
                .collect()
        });
        if map.is_empty() { Some(inner) } else { map.get(&inner).copied() }
    }
}

/// The holder of `group`'s futex, if it is a glibc mutex with a live owner.
pub(crate) fn find(
    pid: u32,
    group: &WaitGroup,
    threads: &[ThreadEvidence],
    tids: &mut TidMap,
) -> Option<u32> {
    let addr = group.futex?;
    let mut word = [0u8; 12];
    if memory::read(pid, addr, &mut word).ok()? != word.len() {
        return None;
    }
    let lock = u32::from_ne_bytes([word[0], word[1], word[2], word[3]]);
    let owner = u32::from_ne_bytes([word[8], word[9], word[10], word[11]]);
    if lock == 0 || owner == 0 {
        return None;
    }
    let ours = tids.ours(owner, threads)?;
    let live = threads.binary_search_by_key(&ours, |t| t.tid).is_ok();
    (live && !group.tids.contains(&ours)).then_some(ours)
}
