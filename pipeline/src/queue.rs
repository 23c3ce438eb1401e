//! The bounded queue where receivers hand batches to the processor — the
//! one channel both sides share, so neither depends on the other.
//!
//! Promises:
//! * **Bounded.** At most `capacity` batches wait; [`BatchSender::try_send`]
//!   never blocks and hands the batch back when the queue is full (the
//!   receiver counts what it could not queue) or closed.
//! * **Allocation-free in steady state.** Batches are boxed once and moved
//!   as pointers; the processor returns each handled batch with
//!   [`BatchReceiver::recycle`] and receivers take it back with
//!   [`BatchSender::empty_batch`]. A new box is allocated only while the
//!   pool is still filling (at most `capacity` + [`SPARE_BATCHES`] exist).
//! * **Budgets.** A sender may be given a budget
//!   ([`BatchSender::with_budget`]): it queues only while fewer batches
//!   than that wait, so an untrusted receiver sharing the queue can never
//!   fill it for the others.
//! * **Ordered shutdown.** When every [`BatchSender`] is dropped, the
//!   receiver side drains what is queued and then reports disconnection.

use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};
pub use crossbeam_channel::{RecvError, RecvTimeoutError, TrySendError};

use varta_proto::Batch;

/// Batches beyond the queue capacity the recycling pool keeps (those being
/// filled by receivers or handled by the processor).
pub const SPARE_BATCHES: usize = 16;

/// Creates a queue of `capacity` batches (at least 1).
pub fn batch_queue(capacity: usize) -> (BatchSender, BatchReceiver) {
    let capacity = capacity.max(1);
    let (tx, rx) = bounded(capacity);
    let (free_tx, free_rx) = bounded(capacity + SPARE_BATCHES);
    (BatchSender { tx, free: free_rx, budget: None }, BatchReceiver { rx, free: free_tx })
}

/// The receivers' end; clone one per receiver.
#[derive(Debug, Clone)]
pub struct BatchSender {
    tx: Sender<Box<Batch>>,
    free: Receiver<Box<Batch>>,
    /// Queues only while fewer batches than this wait (see [`BatchSender::with_budget`]).
    budget: Option<usize>,
}

impl BatchSender {
    /// An empty batch, recycled when one is available.
    pub fn empty_batch(&self) -> Box<Batch> {
        match self.free.try_recv() {
            Ok(mut b) => {
                b.clear();
                b
            }
            Err(_) => Box::new(Batch::new()),
        }
    }

    /// Queues `batch` without blocking; gives it back when full or closed
    /// (full also when this sender's budget is used up).
    pub fn try_send(&self, batch: Box<Batch>) -> Result<(), TrySendError<Box<Batch>>> {
        if self.budget.is_some_and(|budget| self.tx.len() >= budget) {
            return Err(TrySendError::Full(batch));
        }
        self.tx.try_send(batch)
    }

    /// A sender of the same queue that queues only while fewer than
    /// `batches` (at least 1) wait, whoever sent them: the rest of the
    /// queue stays for the other senders.
    pub fn with_budget(&self, batches: usize) -> BatchSender {
        BatchSender { budget: Some(batches.max(1)), ..self.clone() }
    }
}

/// The processor's end.
#[derive(Debug)]
pub struct BatchReceiver {
    rx: Receiver<Box<Batch>>,
    free: Sender<Box<Batch>>,
}

impl BatchReceiver {
    /// Waits for the next batch; `Err` once every sender is gone and the queue is empty.
    pub fn recv(&self) -> Result<Box<Batch>, RecvError> {
        self.rx.recv()
    }

    /// The next batch if one is waiting.
    pub fn try_recv(&self) -> Option<Box<Batch>> {
        self.rx.try_recv().ok()
    }

    /// Like [`BatchReceiver::recv`], giving up after `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Box<Batch>, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    /// Hands a handled batch back for reuse (dropped if the pool is full).
    pub fn recycle(&self, batch: Box<Batch>) {
        let _ = self.free.try_send(batch);
    }

    /// Batches waiting (queue depth, for self-telemetry).
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// A handle that reads this queue's depth from any thread.
    pub fn depth(&self) -> QueueDepth {
        QueueDepth { rx: self.rx.clone() }
    }
}

/// Reads a batch queue's depth and capacity (self-telemetry). Holding it
/// does not keep the queue open: disconnection follows the senders.
#[derive(Debug, Clone)]
pub struct QueueDepth {
    rx: Receiver<Box<Batch>>,
}

impl QueueDepth {
    /// Batches waiting.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Batches the queue can hold.
    pub fn capacity(&self) -> usize {
        self.rx.capacity().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use varta_proto::{Arrival, Refusal, RefusedFrame, Source, Transport};

    fn item() -> Arrival {
        Arrival::Refused(RefusedFrame {
            refusal: Refusal::Replay,
            transport: Transport::Udp,
            source: Source::Local,
            claimed_pid: 9,
            received_ns: 1,
        })
    }

    #[test]
    fn batches_are_recycled_and_the_bound_holds() {
        let (tx, rx) = batch_queue(2);
        let mut b = tx.empty_batch();
        assert!(b.push(item()).is_ok());
        let first: *const Batch = &*b;
        assert!(tx.try_send(b).is_ok());
        assert!(tx.try_send(tx.empty_batch()).is_ok());
        let third = tx.empty_batch();
        assert!(matches!(tx.try_send(third), Err(TrySendError::Full(_))), "capacity 2");

        let got = rx.recv().expect("queued");
        assert_eq!(got.len(), 1);
        rx.recycle(got);
        let again = tx.empty_batch();
        assert_eq!(&*again as *const Batch, first, "the handled box comes back");
        assert!(again.is_empty(), "recycled batches are cleared");
    }

    #[test]
    fn a_budgeted_sender_leaves_the_rest_of_the_queue_to_the_others() {
        let (tx, rx) = batch_queue(4);
        let untrusted = tx.with_budget(2);
        assert!(untrusted.try_send(untrusted.empty_batch()).is_ok());
        assert!(untrusted.try_send(untrusted.empty_batch()).is_ok());
        assert!(matches!(untrusted.try_send(untrusted.empty_batch()), Err(TrySendError::Full(_))), "its 2");
        assert!(tx.try_send(tx.empty_batch()).is_ok());
        assert!(tx.try_send(tx.empty_batch()).is_ok(), "the others still have theirs");
        assert!(matches!(tx.try_send(tx.empty_batch()), Err(TrySendError::Full(_))), "capacity 4");
        drop(rx.recv().expect("one"));
        drop(rx.recv().expect("two"));
        drop(rx.recv().expect("three"));
        assert!(untrusted.try_send(untrusted.empty_batch()).is_ok(), "room under its budget again");
    }

    #[test]
    fn receiver_drains_then_disconnects() {
        let (tx, rx) = batch_queue(4);
        assert!(tx.try_send(tx.empty_batch()).is_ok());
        drop(tx);
        assert!(rx.recv().is_ok());
        assert!(rx.recv().is_err());
    }
}
