#![allow(dead_code)]
//! Shared helpers for the processor's integration tests.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use varta_processor::{Event, EventKind, EventSink, Processor, RateLimitConfig, TrackerConfig};
use varta_proto::{Arrival, Batch, Beat, Frame, Source, Status, Transport};

pub const MS: u64 = 1_000_000;
pub const S: u64 = 1_000_000_000;
/// Virtual start time (away from zero so subtractions are meaningful).
pub const T0: u64 = 1_000 * S;

pub fn tracker(threshold_ms: u64) -> TrackerConfig {
    TrackerConfig { threshold: Duration::from_millis(threshold_ms), ..TrackerConfig::default() }
}

pub fn no_limits() -> Option<RateLimitConfig> {
    None
}

pub fn processor(ratelimit: Option<RateLimitConfig>, tracker: TrackerConfig) -> Processor {
    match Processor::new(ratelimit, tracker, Box::new(|_| Some(42))) {
        Ok(p) => p,
        Err(e) => panic!("test config invalid: {e}"),
    }
}

pub fn frame(pid: u32, nonce: u64, timestamp: u64) -> Frame {
    Frame::new(Status::Ok, pid, timestamp, nonce, 0)
}

/// A UDS beat (local, kernel-attested, host pid = frame pid).
pub fn uds(pid: u32, nonce: u64) -> Beat {
    Beat {
        frame: frame(pid, nonce, nonce * 1000),
        transport: Transport::Uds,
        source: Source::Local,
        host_pid: pid,
        received_ns: 0,
    }
}

pub fn ip(last: u8) -> Source {
    Source::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
}

/// A network beat.
pub fn net(source: Source, transport: Transport, pid: u32, nonce: u64, timestamp: u64) -> Beat {
    Beat { frame: frame(pid, nonce, timestamp), transport, source, host_pid: pid, received_ns: 0 }
}

pub fn batch(beats: &[Beat]) -> Batch {
    let mut b = Batch::new();
    for beat in beats {
        assert!(b.push(Arrival::Beat(*beat)).is_ok(), "test batch overflow");
    }
    b
}

/// Records events; `beats` controls `wants_beats`.
#[derive(Debug, Default)]
pub struct Recorder {
    pub events: Vec<Event>,
    pub beats: bool,
}

impl EventSink for Recorder {
    fn emit(&mut self, event: &Event) {
        self.events.push(*event);
    }
    fn wants_beats(&self) -> bool {
        self.beats
    }
}

impl Recorder {
    pub fn take(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

pub fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

pub fn pid_of(event: &Event) -> Option<u32> {
    event.agent.map(|a| a.id.pid)
}
