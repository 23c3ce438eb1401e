//! Shared helpers for the receiver's socket tests: temp dirs, a receiver
//! running on a thread, and arrival collection with bounded waits.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use varta_pipeline::queue::{BatchReceiver, batch_queue};
use varta_proto::{Arrival, Refusal, RefusedFrame};
use varta_receiver::{ReceiverError, ReceiverStats, StopHandle, VlpReceiver, VlpReceiverConfig};

pub const WAIT: Duration = Duration::from_secs(5);

static NEXT: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("varta-rt-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn yaml(s: &str) -> VlpReceiverConfig {
    serde_saphyr::from_str(s).expect("test config parses")
}

/// A receiver running on its own thread.
pub struct Running {
    pub stats: Arc<ReceiverStats>,
    pub rx: BatchReceiver,
    stop: StopHandle,
    handle: Option<JoinHandle<Result<(), ReceiverError>>>,
    pending: VecDeque<Arrival>,
    pub batches_seen: usize,
}

impl Running {
    pub fn start(recv: VlpReceiver) -> Running {
        Running::start_with_queue(recv, 1024)
    }

    pub fn start_with_queue(recv: VlpReceiver, capacity: usize) -> Running {
        let (tx, rx) = batch_queue(capacity);
        let stop = recv.stop_handle();
        let stats = recv.stats();
        let handle = std::thread::spawn(move || recv.run(tx));
        Running { stats, rx, stop, handle: Some(handle), pending: VecDeque::new(), batches_seen: 0 }
    }

    /// The next arrival, waiting at most [`WAIT`].
    pub fn next(&mut self) -> Arrival {
        while self.pending.is_empty() {
            let batch = self.rx.recv_timeout(WAIT).expect("an arrival within the timeout");
            self.batches_seen += 1;
            self.pending.extend(batch.as_slice().iter().copied());
        }
        self.pending.pop_front().expect("non-empty")
    }

    pub fn next_refusal(&mut self) -> RefusedFrame {
        match self.next() {
            Arrival::Refused(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    pub fn expect_refusal(&mut self, want: Refusal) -> RefusedFrame {
        let r = self.next_refusal();
        assert_eq!(r.refusal, want, "{r:?}");
        r
    }

    pub fn next_beat(&mut self) -> varta_proto::Beat {
        match self.next() {
            Arrival::Beat(b) => b,
            other => panic!("expected a beat, got {other:?}"),
        }
    }

    /// Stops the receiver and joins its thread (panics if it does not
    /// wake up: an idle receiver blocks in the kernel until stopped).
    pub fn stop(mut self) -> Result<(), ReceiverError> {
        self.stop.stop();
        let handle = self.handle.take().expect("running");
        let deadline = Instant::now() + WAIT;
        while !handle.is_finished() {
            assert!(Instant::now() < deadline, "receiver did not wake up on stop");
            std::thread::sleep(Duration::from_millis(1));
        }
        handle.join().expect("receiver thread panicked")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Polls `f` until it holds or [`WAIT`] passes.
pub fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + WAIT;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    f()
}
