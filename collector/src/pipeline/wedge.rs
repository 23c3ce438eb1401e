//! Test-only fault hook (debug builds only): with
//! `VARTA_TEST_WEDGE_PROCESSOR_AFTER=N` the processor thread blocks forever
//! after emitting N events — how the integration tests wedge a pipeline to
//! check that the health endpoint and the systemd watchdog notice.

use varta_exporters::Fanout;
use varta_processor::{Event, EventSink};

pub fn from_env() -> Option<u64> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var("VARTA_TEST_WEDGE_PROCESSOR_AFTER").ok()?.parse().ok()
}

/// The event sink that wedges its processor.
pub struct Wedge {
    inner: Fanout,
    remaining: u64,
}

impl Wedge {
    pub fn new(inner: Fanout, remaining: u64) -> Wedge {
        Wedge { inner, remaining }
    }
}

impl EventSink for Wedge {
    fn emit(&mut self, event: &Event) {
        if self.remaining == 0 {
            tracing::warn!("VARTA_TEST_WEDGE_PROCESSOR_AFTER: wedging the processor thread (test hook)");
            loop {
                std::thread::park();
            }
        }
        self.remaining -= 1;
        self.inner.emit(event);
    }

    fn wants_beats(&self) -> bool {
        true
    }
}
