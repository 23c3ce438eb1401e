//! One bound receiver socket and the thread that reads it: bound first
//! (parked), run feeding one or more pipelines' queues, parked and resumed
//! around a rewiring, stopped (reading what its socket still holds).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Instant;

use varta_pipeline::queue::BatchSender;
use varta_pipeline::threads::spawn;
use varta_receiver::{KeyHandle, ReceiverError, ReceiverStats, StopHandle, VlpReceiver, VlpReceiverConfig};

use super::{Stopped, Watch, take_parked};

type ReceiverRun = (VlpReceiver, Result<(), ReceiverError>);

/// A bound receiver: its socket lives as long as this value.
#[derive(Debug)]
pub struct Receiver {
    pub id: String,
    /// Its settings as the host compares them on a reload (the collector
    /// leaves key files out: keys are swapped in place).
    pub key: VlpReceiverConfig,
    /// The pipelines it feeds, by name, in the host's order.
    pub feeds: Vec<String>,
    pub stats: Arc<ReceiverStats>,
    /// A secure receiver's keys (rotation without a restart).
    pub keys: Option<KeyHandle>,
    /// The address it listens on (UDP, secure UDP).
    pub local_addr: Option<SocketAddr>,
    stop: StopHandle,
    thread: Option<JoinHandle<ReceiverRun>>,
    parked: Option<VlpReceiver>,
    parking: bool,
}

impl Receiver {
    /// Binds the socket (parked: [`Receiver::resume`] starts it). A
    /// secure receiver given a state directory keeps its replay sessions
    /// there (see [`varta_receiver::sessions`]).
    pub fn bind(
        id: &str,
        key: VlpReceiverConfig,
        cfg: &VlpReceiverConfig,
        feeds: Vec<String>,
        state_dir: Option<&std::path::Path>,
    ) -> Result<Receiver, ReceiverError> {
        let mut receiver = VlpReceiver::bind(id, cfg)?;
        if let Some(dir) = state_dir {
            receiver.keep_sessions(dir, cfg.sessions_interval())?;
        }
        Ok(Receiver {
            id: id.to_owned(),
            key,
            feeds,
            stats: receiver.stats(),
            keys: receiver.key_handle(),
            local_addr: receiver.local_addr(),
            stop: receiver.stop_handle(),
            thread: None,
            parked: Some(receiver),
            parking: false,
        })
    }

    /// Whether it proves who its senders are (UDS, secure UDP); plain UDP
    /// does not, and gets a share of what it shares with those that do.
    pub fn attested(&self) -> bool {
        self.key.transport != varta_receiver::TransportKind::Udp
    }

    fn component(&self) -> String {
        format!("receivers::{}", self.id)
    }

    /// Asks the thread to return its receiver (see [`StopHandle::pause`]).
    pub fn request_park(&mut self) {
        if self.thread.is_some() {
            self.stop.pause();
            self.parking = true;
        }
    }

    /// Takes the receiver back from a thread asked to park.
    pub fn park(&mut self, deadline: Instant) {
        if !std::mem::take(&mut self.parking) {
            return;
        }
        let component = self.component();
        if let Some((receiver, result)) = take_parked(&mut self.thread, &component, deadline) {
            if let Err(e) = result {
                tracing::error!(component, "receiver had stopped with an error: {e}");
            }
            self.parked = Some(receiver);
        }
    }

    /// Runs a parked receiver, feeding `queues`.
    pub fn resume(&mut self, queues: Vec<BatchSender>) -> Result<(), String> {
        let Some(mut receiver) = self.parked.take() else { return Ok(()) };
        let mut queues = queues.into_iter();
        let Some(first) = queues.next() else {
            self.parked = Some(receiver);
            return Err("feeds no running pipeline".into());
        };
        let more: Vec<_> = queues.collect();
        self.stop.unpause();
        let id = self.id.clone();
        self.thread = Some(spawn(format!("recv-{id}"), move || {
            let result = receiver.run_fanout(first, more);
            if let Err(e) = &result {
                tracing::error!(receiver = %id, "receiver stopped with an error: {e}");
            }
            (receiver, result)
        })?);
        Ok(())
    }

    /// Liveness: datagrams read, judged while datagrams wait in the socket.
    pub fn watch(&self) -> Watch {
        let (stats, stop) = (Arc::clone(&self.stats), self.stop.clone());
        Watch {
            component: self.component(),
            probe: Box::new(move || (stats.datagrams.load(Ordering::Relaxed), stop.queued() > 0)),
        }
    }

    /// Whether its thread ended (a receiver only ends when stopped).
    pub fn died(&self) -> bool {
        self.thread.as_ref().is_some_and(JoinHandle::is_finished)
    }

    /// Closes the socket for good (the address is free once this returns).
    /// A running receiver first reads what its socket holds into the
    /// queues it feeds (see [`StopHandle::stop`]).
    pub fn close(self, deadline: Instant) {
        let id = self.id.clone();
        self.stop();
        self.join(deadline);
        tracing::info!(receiver = %id, "receiver closed");
    }

    /// Shutdown, step one: stop receiving (drains what the socket holds).
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// Shutdown, step two: waits for the thread by `deadline`.
    pub fn join(mut self, deadline: Instant) -> Stopped {
        let mut stopped = Stopped::default();
        if let Some(t) = self.thread.take()
            && let Some((_, Err(e))) = stopped.join(self.component(), t, deadline)
        {
            stopped.failed(self.component(), &e.to_string());
        }
        stopped
    }
}
