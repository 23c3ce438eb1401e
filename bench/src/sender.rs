//! The send loop: paced (or flat-out) beats from a set of agents over one
//! connected datagram socket, batched with `sendmmsg(2)`.
//!
//! Pacing is a token bucket evaluated per batch: beat number `k` (counted
//! over all agents, round-robin) is due at `start + k / rate`. A batch goes
//! out when `batch` beats are due or when the oldest due beat has waited
//! `max_batch_delay` (so slow schedules still send promptly), at most
//! `batch` per syscall. With `rate == 0` it sends flat out.
//! Agents chosen to stop skip their turn from the stop time on, so the
//! others keep their interval. A frame the kernel refuses is counted by
//! errno (`EAGAIN` on a full Unix socket is a drop the sender saw) and not
//! retried; after `EAGAIN` a flat-out loop waits (≤ 10 ms) until the socket
//! is writable again instead of spinning. With `wait_when_full` the loop is a
//! blocking sender instead: it waits and retries the same frames, counting
//! only the waits.

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use crate::agents::{Agents, MAX_FRAME_LEN};
use crate::clock::{monotonic_ns, sleep_until_ns};

/// When and how fast to send.
#[derive(Debug, Clone, Copy)]
pub struct SendPlan {
    /// Beats per second over all agents; 0 sends flat out.
    pub rate: f64,
    /// CLOCK_MONOTONIC ns of the first beat.
    pub start_ns: u64,
    /// CLOCK_MONOTONIC ns after which nothing is sent.
    pub end_ns: u64,
    /// From this time on the agents marked in [`Agents::stop`] stay silent.
    pub stop_at_ns: Option<u64>,
    /// Frames per `sendmmsg` call (1..=1024).
    pub batch: usize,
    /// Longest a due beat waits for its batch to fill (paced mode).
    pub max_batch_delay_ns: u64,
    /// On `EAGAIN`/`ENOBUFS`: `true` waits until the socket is writable and
    /// retries the same frames (a blocking sender, lossless back-pressure);
    /// `false` counts them as dropped and moves on.
    pub wait_when_full: bool,
}

/// What the loop sent and what the kernel refused.
#[derive(Debug, Default, Clone)]
pub struct SendStats {
    /// Frames the kernel accepted.
    pub sent: u64,
    /// Frames refused, by errno name.
    pub errors: BTreeMap<String, u64>,
    /// `sendmmsg` calls made.
    pub syscalls: u64,
    /// Times the socket was full and the loop waited (`wait_when_full`).
    pub full_waits: u64,
    /// CLOCK_MONOTONIC ns when the loop ended.
    pub finished_ns: u64,
}

impl SendStats {
    /// Adds another worker's counts to these.
    pub fn merge(&mut self, other: &SendStats) {
        self.sent += other.sent;
        self.syscalls += other.syscalls;
        self.full_waits += other.full_waits;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
        self.finished_ns = self.finished_ns.max(other.finished_ns);
    }

    /// Frames refused for any reason.
    pub fn refused(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// A short name for an errno value.
pub fn errno_name(e: i32) -> String {
    match e {
        libc::EAGAIN => "EAGAIN".into(),
        libc::ECONNREFUSED => "ECONNREFUSED".into(),
        libc::ENOBUFS => "ENOBUFS".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::EPERM => "EPERM".into(),
        libc::EACCES => "EACCES".into(),
        libc::ENOTCONN => "ENOTCONN".into(),
        libc::EMSGSIZE => "EMSGSIZE".into(),
        other => format!("errno_{other}"),
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn wait_writable(fd: RawFd, timeout_ms: i32) {
    let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    // SAFETY: `p` is one valid pollfd; poll only reads/writes it.
    unsafe {
        libc::poll(&mut p, 1, timeout_ms);
    }
}

/// Runs the send loop on a connected datagram socket `fd` until
/// `plan.end_ns`.
pub fn run(fd: RawFd, agents: &mut Agents, plan: &SendPlan) -> SendStats {
    let batch = plan.batch.clamp(1, 1024);
    let frame_len = agents.frame_len();
    let mut stats = SendStats::default();
    if agents.is_empty() {
        stats.finished_ns = monotonic_ns();
        return stats;
    }
    let mut bufs = vec![[0u8; MAX_FRAME_LEN]; batch];
    let mut slot_agent = vec![0usize; batch];
    let mut slot_nonce = vec![0u64; batch];
    // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is a valid value.
    let mut iovs: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; batch];
    // SAFETY: as above.
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; batch];
    for j in 0..batch {
        iovs[j].iov_base = bufs[j].as_mut_ptr().cast();
        iovs[j].iov_len = frame_len;
    }
    for j in 0..batch {
        hdrs[j].msg_hdr.msg_iov = &mut iovs[j];
        hdrs[j].msg_hdr.msg_iovlen = 1;
    }
    let n = agents.len() as u64;
    let mut seq: u64 = 0;
    loop {
        let now = monotonic_ns();
        if now >= plan.end_ns {
            break;
        }
        let stopping = plan.stop_at_ns.is_some_and(|t| now >= t);
        let due = if plan.rate > 0.0 {
            (now.saturating_sub(plan.start_ns) as f64 * plan.rate / 1e9) as u64 + 1
        } else {
            seq + batch as u64
        };
        let due_at = |k: u64| plan.start_ns + (k as f64 * 1e9 / plan.rate) as u64;
        let wake = if due <= seq {
            // Nothing due: sleep until the next beat is.
            Some(due_at(seq))
        } else if plan.rate > 0.0 && due - seq < batch as u64 {
            // Some due, batch not full: wait for it to fill, but not too long.
            let flush_at = due_at(seq) + plan.max_batch_delay_ns;
            (now < flush_at).then(|| flush_at.min(due_at(seq + batch as u64)))
        } else {
            None
        };
        if let Some(wake) = wake {
            let wake = match plan.stop_at_ns {
                Some(t) if !stopping => wake.min(t),
                _ => wake,
            };
            sleep_until_ns(wake.min(plan.end_ns));
            continue;
        }
        let want = (due - seq).min(batch as u64);
        let mut k = 0;
        for _ in 0..want {
            let a = (seq % n) as usize;
            seq += 1;
            if stopping && agents.stop[a] {
                continue;
            }
            agents.encode_next(a, now, &mut bufs[k]);
            slot_agent[k] = a;
            slot_nonce[k] = agents.nonce(a);
            k += 1;
        }
        // The "last beat" time of an agent is taken just before the call that
        // carries its frame: the collector cannot have received it earlier, so
        // latencies measured against it are never flattered by preemption.
        let t_send = monotonic_ns();
        let mut off = 0;
        while off < k {
            stats.syscalls += 1;
            // SAFETY: hdrs[off..k] are initialised mmsghdrs whose iovecs point into `bufs`,
            // which outlives the call and is not moved while the pointers exist.
            let r = unsafe { libc::sendmmsg(fd, hdrs[off..].as_mut_ptr(), (k - off) as u32, 0) };
            if r > 0 {
                off += r as usize;
                continue;
            }
            let e = last_errno();
            if e == libc::EINTR {
                continue;
            }
            if plan.wait_when_full && (e == libc::EAGAIN || e == libc::ENOBUFS) {
                stats.full_waits += 1;
                if monotonic_ns() >= plan.end_ns {
                    *stats.errors.entry(errno_name(e)).or_insert(0) += (k - off) as u64;
                    break;
                }
                wait_writable(fd, 10);
                continue;
            }
            *stats.errors.entry(errno_name(e)).or_insert(0) += (k - off) as u64;
            if e == libc::EAGAIN || e == libc::ENOBUFS {
                // Flat out: wait for room rather than spin. Paced: the next beat
                // is not due yet anyway (and thousands of paced senders all
                // polling one full socket would only wake each other up).
                if plan.rate <= 0.0 {
                    wait_writable(fd, 10);
                }
            } else {
                // The peer is missing or refusing: do not spin.
                sleep_until_ns(monotonic_ns() + 1_000_000);
            }
            break;
        }
        for (&a, &nonce) in slot_agent[..off].iter().zip(&slot_nonce[..off]) {
            agents.last_sent_ns[a] = t_send;
            agents.last_sent_nonce[a] = nonce;
        }
        stats.sent += off as u64;
    }
    stats.finished_ns = monotonic_ns();
    stats
}
