//! A background thread that beats on a fixed schedule.
//!
//! Promises: one beat per period, scheduled against deadlines (no drift
//! from the time a beat takes); stops promptly, and joins its thread, when
//! the [`BeatHandle`] is dropped. Status and payload can be changed while
//! it runs; sent and dropped beats are counted.

use std::io;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use varta_proto::Status;

use crate::Client;

#[derive(Debug)]
struct Shared {
    status: AtomicU8,
    payload: AtomicU32,
    sent: AtomicU64,
    not_sent: AtomicU64,
}

/// Owner of a beating thread started by [`Client::spawn_beating`]; dropping
/// it stops the thread.
#[derive(Debug)]
pub struct BeatHandle {
    shared: Arc<Shared>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Client {
    /// Beats `Ok` (payload 0, until changed through the handle) every
    /// `every`, starting now, on a thread of its own.
    pub fn spawn_beating(self: &Arc<Self>, every: Duration) -> io::Result<BeatHandle> {
        let shared = Arc::new(Shared {
            status: AtomicU8::new(Status::Ok as u8),
            payload: AtomicU32::new(0),
            sent: AtomicU64::new(0),
            not_sent: AtomicU64::new(0),
        });
        let (stop, stopped) = mpsc::channel::<()>();
        let client = Arc::clone(self);
        let state = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("varta-beat".into()).spawn(move || {
            let mut deadline = Instant::now();
            loop {
                let status = Status::from_byte(state.status.load(Ordering::Relaxed)).unwrap_or(Status::Ok);
                let counter = if client.beat(status, state.payload.load(Ordering::Relaxed)).is_sent() {
                    &state.sent
                } else {
                    &state.not_sent
                };
                counter.fetch_add(1, Ordering::Relaxed);
                deadline += every;
                let now = Instant::now();
                if deadline < now {
                    deadline = now; // fell behind (suspended?): one beat now, no burst
                }
                match stopped.recv_timeout(deadline - now) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        let woke = Instant::now();
                        if woke > deadline + every {
                            // Suspended while waiting: the next beat is the
                            // catch-up beat; re-anchor so the one after it
                            // is a period later, not at once.
                            deadline = woke;
                        }
                    }
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        })?;
        Ok(BeatHandle { shared, stop: Some(stop), thread: Some(thread) })
    }
}

impl BeatHandle {
    /// Status of the following beats (`Stall` is ignored: it is observer-only).
    pub fn set_status(&self, status: Status) {
        if status != Status::Stall {
            self.shared.status.store(status as u8, Ordering::Relaxed);
        }
    }

    /// Payload of the following beats.
    pub fn set_payload(&self, payload: u32) {
        self.shared.payload.store(payload, Ordering::Relaxed);
    }

    /// Beats handed to the kernel so far.
    pub fn sent(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }

    /// Beats dropped or failed so far.
    pub fn not_sent(&self) -> u64 {
        self.shared.not_sent.load(Ordering::Relaxed)
    }
}

impl Drop for BeatHandle {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
