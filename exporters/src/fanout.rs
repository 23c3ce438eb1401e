//! The processor's event sink: hands each event to every exporter queue.
//! Never blocks and never allocates per event.

use varta_processor::{Event, EventKind, EventSink};

use crate::ExporterQueue;

/// All exporter queues of one pipeline.
#[derive(Debug, Default)]
pub struct Fanout {
    queues: Vec<ExporterQueue>,
    wants_beats: bool,
}

impl Fanout {
    pub fn new(queues: Vec<ExporterQueue>) -> Fanout {
        let wants_beats = queues.iter().any(ExporterQueue::wants_beats);
        Fanout { queues, wants_beats }
    }

    pub fn queues(&self) -> &[ExporterQueue] {
        &self.queues
    }
}

impl EventSink for Fanout {
    fn emit(&mut self, event: &Event) {
        let is_beat = matches!(event.kind, EventKind::Beat { .. });
        for q in &mut self.queues {
            if !is_beat || q.wants_beats() {
                q.offer(event);
            }
        }
    }

    fn wants_beats(&self) -> bool {
        self.wants_beats
    }
}
