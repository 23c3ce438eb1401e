//! The processor's side of checkpoints (see [`crate::checkpoint`]): copying
//! its agents out a bounded range at a time, the periodic steps of its run
//! loop, and taking a checkpoint back.

use crate::checkpoint::{AgentState, Checkpoint, CheckpointSink, Checkpoints, Restored, STEP};
use crate::event::{BlindCause, EventSink};
use crate::processor::Processor;
use crate::threshold::{Code, Learned};
use crate::tracker::Slot;

fn state_of(slot: &Slot, incident: u64) -> AgentState {
    let agent = slot.agent_ref();
    let (interval, gaps) = slot.learned().parts();
    AgentState {
        source: agent.id.source,
        pid: agent.id.pid,
        start_time: agent.id.start_time,
        frame_pid: agent.frame_pid,
        transport: agent.transport,
        status: slot.status,
        stalled: slot.is_stalled(),
        last_beat_ns: slot.last_beat_ns,
        last_nonce: slot.last_nonce(),
        last_timestamp: slot.last_timestamp,
        last_payload: slot.last_payload,
        beats: slot.beats,
        stalls: slot.stalls,
        incident,
        first_seen_s: slot.first_seen_s,
        learned: (interval.raw(), gaps),
    }
}

impl Processor {
    /// Checkpoints every `interval` into `sink` (`None`: none).
    pub fn set_checkpoints(&mut self, sink: Option<Box<dyn CheckpointSink>>, interval: std::time::Duration) {
        let interval_ns = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX).max(1);
        let next_due_ns = self.clock().now_ns().saturating_add(interval_ns);
        self.checkpoints = sink.map(|sink| Checkpoints { sink, interval_ns, next_due_ns, job: None });
    }

    /// When the run loop must wake for its checkpoint: now while one is
    /// being copied, else at the next one.
    pub(crate) fn checkpoint_due(&self, now_ns: u64) -> Option<u64> {
        let c = self.checkpoints.as_ref()?;
        Some(if c.job.is_some() { now_ns } else { c.next_due_ns })
    }

    /// One step of the periodic checkpoint (see [`Checkpoints`]).
    pub(crate) fn checkpoint_step(&mut self, now_ns: u64) {
        let Some(mut c) = self.checkpoints.take() else { return };
        if c.job.is_none() && now_ns >= c.next_due_ns {
            c.job = Some((0, Vec::with_capacity(self.tracker().len())));
            c.next_due_ns = now_ns.saturating_add(c.interval_ns);
        }
        if let Some((from, mut agents)) = c.job.take() {
            match self.export_agents(from, STEP, &mut agents) {
                Some(next) => c.job = Some((next, agents)),
                None => {
                    let checkpoint = self.checkpoint_of(agents);
                    c.sink.offer(checkpoint);
                }
            }
        }
        self.checkpoints = Some(c);
    }

    /// Copies at most `max` agents from slot `from` on into `out`; the
    /// slot to continue from, or `None` when every agent was copied.
    pub fn export_agents(&self, from: usize, max: usize, out: &mut Vec<AgentState>) -> Option<usize> {
        let slots = self.tracker().slots_from(from);
        let mut copied = 0;
        for slot in slots.take(max) {
            out.push(state_of(slot, self.incident_of(slot.incident)));
            copied += 1;
        }
        let next = from + copied;
        (next < self.tracker().len()).then_some(next)
    }

    /// Every agent, now (at shutdown, when nothing else waits).
    pub fn checkpoint(&self) -> Checkpoint {
        let mut agents = Vec::with_capacity(self.tracker().len());
        let _ = self.export_agents(0, usize::MAX, &mut agents);
        self.checkpoint_of(agents)
    }

    /// A checkpoint of `agents`, stamped now.
    pub fn checkpoint_of(&self, agents: Vec<AgentState>) -> Checkpoint {
        Checkpoint {
            taken_ns: self.clock().now_ns(),
            clock: self.clock(),
            next_incident: self.next_incident(),
            trace_salt: 0,
            agents,
        }
    }

    /// Takes back a checkpoint of the same boot and clock (the caller
    /// checks both) into an empty processor, at `now_ns` (see the module
    /// docs); `cause` is what kept the collector from listening meanwhile
    /// ([`BlindCause::Restart`], or [`BlindCause::Reload`] for agents carried
    /// into a rebuilt tracker). Agents beyond the capacity are left out,
    /// the least recently heard first.
    pub fn restore(
        &mut self,
        checkpoint: &Checkpoint,
        now_ns: u64,
        cause: BlindCause,
        out: &mut dyn EventSink,
    ) -> Restored {
        let mut agents: Vec<&AgentState> = checkpoint.agents.iter().collect();
        // The recency lists are in last-beat order; the newest kept.
        agents.sort_by_key(|a| std::cmp::Reverse(a.last_beat_ns));
        let mut done = Restored::default();
        let mut kept = Vec::new();
        for a in agents {
            if kept.len() >= self.capacity() {
                done.dropped += 1;
            } else {
                kept.push(a);
            }
        }
        kept.reverse();
        self.continue_incidents_from(checkpoint.next_incident);
        for a in kept {
            let mut slot =
                Slot::new(a.source, a.pid, a.start_time, a.transport, a.last_beat_ns.min(now_ns), 0)
                    .with_frame_pid(a.frame_pid);
            slot.status = a.status;
            if let Some(nonce) = a.last_nonce {
                slot.set_last_nonce(nonce);
            }
            slot.last_timestamp = a.last_timestamp;
            slot.last_payload = a.last_payload;
            slot.beats = a.beats;
            slot.stalls = a.stalls;
            slot.incident = a.incident as u32;
            slot.first_seen_s = a.first_seen_s;
            slot.set_learned(Learned::from_parts(Code::from_raw(a.learned.0), a.learned.1));
            let Some(idx) = self.insert_restored(slot, cause == BlindCause::Restart) else {
                done.dropped += 1;
                continue;
            };
            if a.stalled {
                self.tracker_mut().mark_stalled(idx);
                done.stalled += 1;
            }
            done.agents += 1;
        }
        self.reclassify();
        self.note_agents();
        if cause == BlindCause::Restart {
            // Silent since now: stopped while the collector was down.
            self.restored_at_ns = Some(now_ns);
        }
        self.blind_window(cause, checkpoint.taken_ns.min(now_ns), now_ns, out);
        done
    }
}
