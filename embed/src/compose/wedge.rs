//! Test-only fault hook (debug builds only; see
//! [`super::Pipeline::wedge_after`]): the processor thread blocks forever
//! after emitting N events — how the integration tests wedge a pipeline to
//! check that the health endpoint and the systemd watchdog notice.

use varta_exporters::Fanout;
use varta_processor::{Event, EventSink};

/// The event sink that wedges its processor.
pub(super) struct Wedge {
    inner: Fanout,
    remaining: u64,
}

impl Wedge {
    pub(super) fn new(inner: Fanout, remaining: u64) -> Wedge {
        Wedge { inner, remaining }
    }
}

impl EventSink for Wedge {
    fn emit(&mut self, event: &Event) {
        if self.remaining == 0 {
            tracing::warn!("wedging the processor thread (test hook)");
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
