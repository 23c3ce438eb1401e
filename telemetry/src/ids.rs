//! Trace and span ids of stall incidents.
//!
//! Promises: an incident's trace id is a pure function of (a random 64-bit
//! salt drawn once per process — [`process_salt`] — the pipeline name, the
//! incident number), so every span of one incident lands in one trace
//! without the exporter remembering anything, also when the exporter is
//! rebuilt by a reload while the incident is open (incident numbers carry
//! on across processor rebuilds), while incident 1 of today's run and
//! incident 1 of yesterday's run (or of another pipeline) get different
//! trace ids. Ids are never all-zero (invalid in OTLP). Span ids are a
//! pure function of the trace id and the span's role, so a
//! `varta.stall.resolved` span can name its parent `varta.stall` span.

/// Which span of an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanRole {
    Stall = 1,
    Resolved = 2,
    Panic = 3,
    Diagnosis = 4,
    Recovery = 5,
    Evidence = 6,
}

/// Derives ids for one exporter instance.
#[derive(Debug, Clone, Copy)]
pub struct IdSource {
    /// Upper half of every trace id: salt mixed with the pipeline name.
    high: u64,
}

/// Panic spans are not incidents of the processor; their own counter is
/// kept apart from incident numbers by this bit.
pub const PANIC_SEQ_BIT: u64 = 1 << 63;

/// FNV-1a, then a SplitMix64 finaliser: cheap, stable, well mixed.
fn mix(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    finalise(h)
}

fn finalise(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl IdSource {
    /// `salt` must be random per exporter start ([`random_salt`]).
    pub fn new(salt: u64, pipeline: &str) -> IdSource {
        let high = mix(0xcbf2_9ce4_8422_2325 ^ salt, pipeline.as_bytes());
        IdSource { high: if high == 0 { 1 } else { high } }
    }

    /// The trace id of incident `seq` (16 bytes, big-endian halves).
    pub fn trace_id(&self, seq: u64) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.high.to_be_bytes());
        // The low half is the incident number scrambled (bijectively) so
        // ids do not look sequential to samplers that hash the low bits.
        id[8..].copy_from_slice(&finalise(seq ^ self.high).to_be_bytes());
        id
    }

    /// The span id of `role` in the trace of incident `seq`.
    pub fn span_id(&self, seq: u64, role: SpanRole) -> [u8; 8] {
        let h = mix(self.high ^ seq.rotate_left(17), &[role as u8]);
        (if h == 0 { 1 } else { h }).to_be_bytes()
    }
}

/// 64 random bits from the operating system; falls back to time and pid
/// (still different per start) if the OS source fails.
/// The salt of this process's trace ids, drawn once.
pub fn process_salt() -> u64 {
    *SALT.get_or_init(random_salt)
}

static SALT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Takes `salt` (a checkpoint's) as this process's, so incidents carried
/// across a restart keep their traces; `false` when a salt was already
/// drawn (then that one stays).
pub fn adopt_process_salt(salt: u64) -> bool {
    SALT.set(salt).is_ok() || process_salt() == salt
}

pub fn random_salt() -> u64 {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => u64::from_ne_bytes(b),
        Err(_) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            finalise(now ^ (u64::from(std::process::id()) << 32))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn same_incident_same_trace_distinct_spans() {
        let ids = IdSource::new(42, "liveness");
        assert_eq!(ids.trace_id(7), ids.trace_id(7));
        assert_ne!(ids.span_id(7, SpanRole::Stall), ids.span_id(7, SpanRole::Resolved));
        assert_ne!(ids.trace_id(7), ids.trace_id(8));
    }

    #[test]
    fn salt_and_pipeline_separate_runs() {
        let a = IdSource::new(1, "liveness");
        let b = IdSource::new(2, "liveness");
        let c = IdSource::new(1, "other");
        assert_ne!(a.trace_id(1), b.trace_id(1), "a restart must not reuse trace ids");
        assert_ne!(a.trace_id(1), c.trace_id(1), "pipelines must not share trace ids");
    }

    #[test]
    fn ids_are_unique_and_never_zero() {
        let ids = IdSource::new(random_salt(), "p");
        let mut traces = HashSet::new();
        let mut spans = HashSet::new();
        for seq in 1..20_000u64 {
            let t = ids.trace_id(seq);
            assert_ne!(t, [0; 16]);
            assert!(traces.insert(t), "duplicate trace id at {seq}");
            for role in [SpanRole::Stall, SpanRole::Resolved] {
                let s = ids.span_id(seq, role);
                assert_ne!(s, [0; 8]);
                assert!(spans.insert(s), "duplicate span id at {seq}");
            }
        }
        assert_ne!(ids.trace_id(1 | PANIC_SEQ_BIT), ids.trace_id(1));
    }

    #[test]
    fn salts_differ() {
        assert_ne!(random_salt(), random_salt());
    }
}
