//! Where a pipeline's agent state survives the process: a state directory
//! of our own, one checkpoint file per pipeline, written whole or not at
//! all, read back only when it is this boot's, this clock's and intact.
//!
//! Promises:
//! * **A directory of our own.** Created (mode 0700) when missing; an
//!   existing one must be a real directory (not a symlink) owned by our
//!   user with no access for anyone else, or it is refused — another user
//!   must not be able to plant the state we restore.
//! * **Whole or not at all.** A checkpoint is written to a temporary file,
//!   synced, then renamed over the last one (and the directory synced), so
//!   a crash or a full disk leaves the previous checkpoint. Every file
//!   ends with a CRC-32C of everything before it.
//! * **Never trusted blindly.** A file from another boot (processor times
//!   mean nothing there), another clock, another format version, or one
//!   that fails its checksum or is cut short is set aside (renamed
//!   `*.set-aside`), counted by reason and logged: the pipeline starts
//!   empty; nothing in a state file can stop the collector from starting.
//! * **Bounded.** A file larger than [`MAX_STATE_BYTES`] is not read.
//! * **Off the processor's thread.** Encoding and writing happen on the
//!   writer thread; the processor only hands over copied records, and
//!   when the writer is still busy with the previous checkpoint the new
//!   one is dropped and counted, never waited for.

use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use varta_pipeline::{Instrumented, Sample};
use varta_processor::checkpoint::{AgentState, Checkpoint};
use varta_processor::clock::Clock;
use varta_proto::{Source, Status, Transport};

/// The magic at the start of every state file.
const MAGIC: &[u8; 8] = b"VARTAST\0";
/// The format version this build writes; it reads this one and 1 (the
/// fixed 96-byte records of the first release), so an upgrade keeps state.
pub const FORMAT_VERSION: u32 = 2;
/// State files larger than this are not read (16 M agents fit).
pub const MAX_STATE_BYTES: u64 = 2 << 30;
/// Bytes of one agent record in format 1.
const RECORD_V1: usize = 96;
/// Bytes of a local agent's record in format 2, about (sizing only).
const TYPICAL_RECORD: usize = 48;
/// Bytes of the header.
const HEADER: usize = 8 + 4 + 16 + 1 + 8 + 8 + 8 + 4;

/// Why a state file was not restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetAside {
    /// Written before the machine last booted: its times mean nothing now.
    OtherBoot,
    /// Written under another `clock` setting.
    OtherClock,
    /// Another format version, or not a state file at all.
    Format,
    /// Cut short, or its checksum does not match.
    Corrupt,
    /// Larger than [`MAX_STATE_BYTES`].
    TooLarge,
}

impl SetAside {
    pub const ALL: [SetAside; 5] =
        [SetAside::OtherBoot, SetAside::OtherClock, SetAside::Format, SetAside::Corrupt, SetAside::TooLarge];

    pub const fn label(self) -> &'static str {
        match self {
            SetAside::OtherBoot => "other_boot",
            SetAside::OtherClock => "other_clock",
            SetAside::Format => "format",
            SetAside::Corrupt => "corrupt",
            SetAside::TooLarge => "too_large",
        }
    }
}

/// Checkpoint counters of one pipeline (a component of its tracker).
#[derive(Debug, Default)]
pub struct StorageStats {
    written: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    bytes: AtomicU64,
    restored: AtomicU64,
    set_aside: [AtomicU64; SetAside::ALL.len()],
}

pub mod metric {
    use varta_pipeline::Metric;

    pub static WRITTEN: Metric =
        Metric::counter("checkpoints_written", "Checkpoints of the agents' state written whole.")
            .unit("{checkpoint}");
    pub static FAILED: Metric = Metric::counter(
        "checkpoints_failed",
        "Checkpoints that could not be written (disk full, I/O error); the previous one stays.",
    )
    .unit("{checkpoint}");
    pub static SKIPPED: Metric = Metric::counter(
        "checkpoints_skipped",
        "Checkpoints not taken because the writer was still writing the previous one.",
    )
    .unit("{checkpoint}");
    pub static BYTES: Metric =
        Metric::gauge("checkpoint_bytes", "Size of the last checkpoint written.").unit("By");
    pub static RESTORED: Metric =
        Metric::counter("agents_restored", "Agents taken back from the checkpoint at start.").unit("{agent}");
    pub static SET_ASIDE: Metric = Metric::labelled(
        "checkpoints_set_aside",
        "reason",
        "State files not restored, by reason: other_boot, other_clock, format, corrupt, too_large.",
    )
    .unit("{checkpoint}");
}

impl Instrumented for StorageStats {
    fn samples(&self, out: &mut dyn FnMut(Sample)) {
        use metric::*;
        for (m, v) in [
            (&WRITTEN, &self.written),
            (&FAILED, &self.failed),
            (&SKIPPED, &self.skipped),
            (&BYTES, &self.bytes),
            (&RESTORED, &self.restored),
        ] {
            out(Sample::new(m, v.load(Relaxed)));
        }
        for (reason, n) in SetAside::ALL.iter().zip(&self.set_aside) {
            out(Sample::labelled(&SET_ASIDE, reason.label(), n.load(Relaxed)));
        }
    }
}

/// This boot's id; zeros when it cannot be read (then no file of another
/// boot can match it either, unless it too was written without one).
pub use varta_pipeline::procfs::boot_id;

/// Opens (creating, mode 0700) a state directory of our own.
pub fn open_dir(dir: &Path) -> Result<PathBuf, String> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create the state directory {}: {e}", dir.display()))?;
            // `recursive` applies the mode to each part it creates; make
            // sure of the last whatever the umask.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("cannot set the mode of {}: {e}", dir.display()))?;
            Ok(dir.to_path_buf())
        }
        Err(e) => Err(format!("cannot read the state directory {}: {e}", dir.display())),
        Ok(meta) => {
            check_own_dir(dir, &meta)?;
            Ok(dir.to_path_buf())
        }
    }
}

/// A state directory must be ours alone (see the module docs).
pub fn check_own_dir(dir: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    if !meta.file_type().is_dir() {
        return Err(format!(
            "the state directory {} is not a directory (a symlink is refused)",
            dir.display()
        ));
    }
    // SAFETY: geteuid(2) has no failure mode.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(format!(
            "the state directory {} belongs to uid {}, not to this process (uid {euid})",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "the state directory {} has mode {:o}; it must be 0700 (no access for group or others)",
            dir.display(),
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

fn get_source(b: &[u8; 17]) -> Option<Source> {
    match b[0] {
        0 => Some(Source::Local),
        4 => Some(Source::Ip(std::net::IpAddr::V4(std::net::Ipv4Addr::new(b[1], b[2], b[3], b[4])))),
        6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[1..]);
            Some(Source::Ip(std::net::IpAddr::V6(o.into())))
        }
        _ => None,
    }
}

fn clock_byte(clock: Clock) -> u8 {
    match clock {
        Clock::Monotonic => 0,
        Clock::Boottime => 1,
    }
}

/// The bytes of a state file for `checkpoint` (see [`decode`]).
pub fn encode(checkpoint: &Checkpoint, boot: [u8; 16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + checkpoint.agents.len() * TYPICAL_RECORD + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&boot);
    out.push(clock_byte(checkpoint.clock));
    out.extend_from_slice(&checkpoint.taken_ns.to_le_bytes());
    out.extend_from_slice(&checkpoint.next_incident.to_le_bytes());
    out.extend_from_slice(&checkpoint.trace_salt.to_le_bytes());
    out.extend_from_slice(&(checkpoint.agents.len() as u32).to_le_bytes());
    for a in &checkpoint.agents {
        put_record(&mut out, a, checkpoint.taken_ns);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

/// A state file's checkpoint, if it is of this `boot` and `clock`, this
/// format, and intact.
pub fn decode(bytes: &[u8], boot: [u8; 16], clock: Clock) -> Result<Checkpoint, SetAside> {
    let version = if bytes.len() < 12 || &bytes[..8] != MAGIC { 0 } else { u32_at(bytes, 8) };
    if !(1..=FORMAT_VERSION).contains(&version) {
        return Err(SetAside::Format);
    }
    if bytes.len() < HEADER + 4 {
        return Err(SetAside::Corrupt);
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32_at(crc, 0) {
        return Err(SetAside::Corrupt);
    }
    if body[12..28] != boot {
        return Err(SetAside::OtherBoot);
    }
    if body[28] != clock_byte(clock) {
        return Err(SetAside::OtherClock);
    }
    let taken_ns = u64_at(body, 29);
    let next_incident = u64_at(body, 37);
    let trace_salt = u64_at(body, 45);
    let count = u32_at(body, 53) as usize;
    let records = &body[HEADER..];
    let agents =
        if version == 1 { v1_records(records, count)? } else { records_v2(records, count, taken_ns)? };
    Ok(Checkpoint { taken_ns, clock, next_incident, trace_salt, agents })
}

/// Format 1: fixed records of [`RECORD_V1`] bytes.
fn v1_records(records: &[u8], count: usize) -> Result<Vec<AgentState>, SetAside> {
    if records.len() != count * RECORD_V1 {
        return Err(SetAside::Corrupt);
    }
    let mut agents = Vec::with_capacity(count);
    for r in records.chunks_exact(RECORD_V1) {
        let source_bytes: &[u8; 17] = r[..17].try_into().map_err(|_| SetAside::Corrupt)?;
        let source = get_source(source_bytes).ok_or(SetAside::Corrupt)?;
        let transport = *Transport::ALL.get(usize::from(r[33])).ok_or(SetAside::Corrupt)?;
        let status = Status::from_byte(r[34]).ok_or(SetAside::Corrupt)?;
        let flags = r[35];
        agents.push(AgentState {
            source,
            pid: u32_at(r, 17),
            start_time: u64_at(r, 21),
            frame_pid: u32_at(r, 29),
            transport,
            status,
            stalled: flags & 1 != 0,
            last_beat_ns: u64_at(r, 36),
            last_nonce: (flags & 2 != 0).then(|| u64_at(r, 44)),
            last_timestamp: u64_at(r, 52),
            last_payload: u32_at(r, 60),
            beats: u64_at(r, 64),
            stalls: u32_at(r, 72),
            incident: u64_at(r, 76),
            first_seen_s: u32_at(r, 84),
            learned: (u16::from_le_bytes([r[88], r[89]]), r[90]),
        });
    }
    Ok(agents)
}

// Format 2 records: a flags byte, transport, status, the source's address
// (none for a local agent), then LEB128 varints — most values are small
// (pids, counters, a last beat stored as its age at the checkpoint), so a
// local agent takes ~40–50 bytes instead of 96.
const STALLED: u8 = 1;
const HAS_NONCE: u8 = 2;
const OWN_FRAME_PID: u8 = 4;
const SOURCE_V4: u8 = 8;
const SOURCE_V6: u8 = 16;
/// The last beat is after the checkpoint's time (stored as a lead).
const BEAT_AHEAD: u8 = 32;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_record(out: &mut Vec<u8>, a: &AgentState, taken_ns: u64) {
    let mut flags = 0;
    if a.stalled {
        flags |= STALLED;
    }
    if a.last_nonce.is_some() {
        flags |= HAS_NONCE;
    }
    if a.frame_pid != a.pid {
        flags |= OWN_FRAME_PID;
    }
    match a.source {
        Source::Local => {}
        Source::Ip(std::net::IpAddr::V4(_)) => flags |= SOURCE_V4,
        Source::Ip(std::net::IpAddr::V6(_)) => flags |= SOURCE_V6,
    }
    if a.last_beat_ns > taken_ns {
        flags |= BEAT_AHEAD;
    }
    out.push(flags);
    out.push(a.transport as u8);
    out.push(a.status as u8);
    match a.source {
        Source::Local => {}
        Source::Ip(std::net::IpAddr::V4(v4)) => out.extend_from_slice(&v4.octets()),
        Source::Ip(std::net::IpAddr::V6(v6)) => out.extend_from_slice(&v6.octets()),
    }
    put_varint(out, u64::from(a.pid));
    if flags & OWN_FRAME_PID != 0 {
        put_varint(out, u64::from(a.frame_pid));
    }
    put_varint(out, a.start_time);
    put_varint(out, taken_ns.abs_diff(a.last_beat_ns));
    if let Some(nonce) = a.last_nonce {
        put_varint(out, nonce);
    }
    for v in [a.last_timestamp, u64::from(a.last_payload), a.beats, u64::from(a.stalls), a.incident] {
        put_varint(out, v);
    }
    put_varint(out, u64::from(a.first_seen_s));
    put_varint(out, u64::from(a.learned.0));
    out.push(a.learned.1);
}

/// Reads format-2 records off the front of a byte slice; any overrun,
/// overlong varint or value out of range is `Corrupt`.
struct Records<'a>(&'a [u8]);

impl Records<'_> {
    fn byte(&mut self) -> Result<u8, SetAside> {
        let (&b, rest) = self.0.split_first().ok_or(SetAside::Corrupt)?;
        self.0 = rest;
        Ok(b)
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], SetAside> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or(SetAside::Corrupt)?;
        self.0 = rest;
        Ok(*head)
    }

    fn varint(&mut self) -> Result<u64, SetAside> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f).checked_shl(shift).ok_or(SetAside::Corrupt)?;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(SetAside::Corrupt)
    }

    fn small<T: TryFrom<u64>>(&mut self) -> Result<T, SetAside> {
        T::try_from(self.varint()?).map_err(|_| SetAside::Corrupt)
    }
}

fn records_v2(records: &[u8], count: usize, taken_ns: u64) -> Result<Vec<AgentState>, SetAside> {
    // A record is at least 13 bytes: a count beyond that is a lie.
    if count > records.len() / 13 {
        return Err(SetAside::Corrupt);
    }
    let mut r = Records(records);
    let mut agents = Vec::with_capacity(count);
    for _ in 0..count {
        let flags = r.byte()?;
        let transport = *Transport::ALL.get(usize::from(r.byte()?)).ok_or(SetAside::Corrupt)?;
        let status = Status::from_byte(r.byte()?).ok_or(SetAside::Corrupt)?;
        let source = match (flags & SOURCE_V4 != 0, flags & SOURCE_V6 != 0) {
            (false, false) => Source::Local,
            (true, false) => Source::Ip(std::net::IpAddr::V4(r.bytes::<4>()?.into())),
            (false, true) => Source::Ip(std::net::IpAddr::V6(r.bytes::<16>()?.into())),
            (true, true) => return Err(SetAside::Corrupt),
        };
        let pid: u32 = r.small()?;
        let frame_pid = if flags & OWN_FRAME_PID != 0 { r.small()? } else { pid };
        let start_time = r.varint()?;
        let offset = r.varint()?;
        let last_beat_ns = if flags & BEAT_AHEAD != 0 {
            taken_ns.saturating_add(offset)
        } else {
            taken_ns.saturating_sub(offset)
        };
        let last_nonce = if flags & HAS_NONCE != 0 { Some(r.varint()?) } else { None };
        agents.push(AgentState {
            source,
            pid,
            start_time,
            frame_pid,
            transport,
            status,
            stalled: flags & STALLED != 0,
            last_beat_ns,
            last_nonce,
            last_timestamp: r.varint()?,
            last_payload: r.small()?,
            beats: r.varint()?,
            stalls: r.small()?,
            incident: r.varint()?,
            first_seen_s: r.small()?,
            learned: (r.small()?, r.byte()?),
        });
    }
    if r.0.is_empty() { Ok(agents) } else { Err(SetAside::Corrupt) }
}

/// One pipeline's state file in a state directory.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
    stats: Arc<StorageStats>,
}

impl StateFile {
    /// `<dir>/<pipeline>.state` (the pipeline name is a config key: it
    /// holds no `/`).
    pub fn new(dir: &Path, pipeline: &str) -> StateFile {
        let name: String = pipeline
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
            .collect();
        StateFile { path: dir.join(format!("{name}.state")), stats: Arc::default() }
    }

    pub fn stats(&self) -> Arc<StorageStats> {
        Arc::clone(&self.stats)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The checkpoint to restore, if there is one worth restoring (see
    /// the module docs); a file that is not is set aside, counted, logged.
    pub fn load(&self, clock: Clock) -> Option<Checkpoint> {
        use varta_pipeline::state_file::{Found, read_bounded};
        let result = match read_bounded(&self.path, MAX_STATE_BYTES) {
            Ok(Found::Missing) => return None,
            Ok(Found::TooLarge) => Err(SetAside::TooLarge),
            Ok(Found::Bytes(bytes)) => decode(&bytes, boot_id(), clock),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "cannot read the state file, starting without it: {e}");
                return None;
            }
        };
        match result {
            Ok(checkpoint) => {
                self.stats.restored.fetch_add(checkpoint.agents.len() as u64, Relaxed);
                Some(checkpoint)
            }
            Err(why) => {
                self.stats.set_aside[why as usize].fetch_add(1, Relaxed);
                let aside = varta_pipeline::state_file::set_aside(&self.path);
                tracing::warn!(
                    path = %self.path.display(),
                    set_aside = %aside.display(),
                    reason = why.label(),
                    "state file not restored; the pipeline starts with no agents"
                );
                None
            }
        }
    }

    /// Writes `checkpoint` whole or not at all (see the module docs).
    pub fn write(&self, checkpoint: &Checkpoint) -> std::io::Result<u64> {
        varta_pipeline::state_file::write_whole(&self.path, &encode(checkpoint, boot_id()))
    }

    fn wrote(&self, result: std::io::Result<u64>) {
        match result {
            Ok(n) => {
                self.stats.written.fetch_add(1, Relaxed);
                self.stats.bytes.store(n, Relaxed);
            }
            Err(e) => {
                let n = self.stats.failed.fetch_add(1, Relaxed);
                if n.is_power_of_two() || n == 0 {
                    tracing::error!(path = %self.path.display(), failed = n + 1, "cannot write the checkpoint; the previous one stays: {e}");
                }
            }
        }
    }
}

/// The writer thread's handle: the processor offers checkpoints to it.
#[derive(Debug)]
pub struct Writer {
    tx: Sender<Checkpoint>,
    thread: JoinHandle<()>,
    file: StateFile,
}

impl Writer {
    /// Starts the writer thread of `file`.
    pub fn start(file: StateFile, name: &str) -> std::io::Result<Writer> {
        let (tx, rx): (Sender<Checkpoint>, Receiver<Checkpoint>) = bounded(1);
        let writer = file.clone();
        let thread = std::thread::Builder::new().name(format!("state-{name}")).spawn(move || {
            for mut checkpoint in rx {
                checkpoint.trace_salt = varta_telemetry::ids::process_salt();
                writer.wrote(writer.write(&checkpoint));
            }
        })?;
        Ok(Writer { tx, thread, file })
    }

    /// The file it writes.
    pub fn file(&self) -> &StateFile {
        &self.file
    }

    /// A sink for the processor: never blocks (a busy writer skips one).
    pub fn sink(&self) -> Box<dyn varta_processor::checkpoint::CheckpointSink> {
        Box::new(Offer { tx: self.tx.clone(), stats: self.file.stats() })
    }

    /// The last checkpoint, at shutdown: waited for.
    pub fn finish(self, last: Option<Checkpoint>) {
        if let Some(c) = last {
            let _ = self.tx.send(c);
        }
        drop(self.tx);
        let _ = self.thread.join();
    }
}

struct Offer {
    tx: Sender<Checkpoint>,
    stats: Arc<StorageStats>,
}

impl varta_processor::checkpoint::CheckpointSink for Offer {
    fn offer(&mut self, checkpoint: Checkpoint) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(checkpoint) {
            self.stats.skipped.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_source(out: &mut Vec<u8>, source: &Source) {
        let mut bytes = [0u8; 17];
        match source {
            Source::Local => {}
            Source::Ip(std::net::IpAddr::V4(v4)) => {
                bytes[0] = 4;
                bytes[1..5].copy_from_slice(&v4.octets());
            }
            Source::Ip(std::net::IpAddr::V6(v6)) => {
                bytes[0] = 6;
                bytes[1..].copy_from_slice(&v6.octets());
            }
        }
        out.extend_from_slice(&bytes);
    }

    fn agent(source: Source, pid: u32) -> AgentState {
        AgentState {
            source,
            pid,
            start_time: 123_456_789,
            frame_pid: pid,
            transport: Transport::Uds,
            status: Status::Ok,
            stalled: false,
            last_beat_ns: 9_000_000_000,
            last_nonce: Some(4_321),
            last_timestamp: 1_765_000_000_123,
            last_payload: 7,
            beats: 86_400,
            stalls: 2,
            incident: 41,
            first_seen_s: 1_200,
            learned: (513, 9),
        }
    }

    fn checkpoint(agents: Vec<AgentState>) -> Checkpoint {
        Checkpoint {
            taken_ns: 10_000_000_000,
            clock: Clock::Monotonic,
            next_incident: 42,
            trace_salt: 99,
            agents,
        }
    }

    /// Every kind of record comes back as it went, and a local agent
    /// takes at most 64 bytes.
    #[test]
    fn records_round_trip_compactly() {
        let boot = [7; 16];
        let v4 = Source::Ip("10.1.2.3".parse().expect("ip"));
        let v6 = Source::Ip("2001:db8::1".parse().expect("ip"));
        let mut odd = agent(v6, u32::MAX);
        odd.frame_pid = 1;
        odd.last_nonce = None;
        odd.stalled = true;
        odd.last_beat_ns = 10_000_000_001; // after the checkpoint's time
        odd.beats = u64::MAX;
        odd.transport = Transport::SecureMaster;
        odd.status = Status::Critical;
        let agents = vec![agent(Source::Local, 4242), agent(v4, 7), odd];
        let c = checkpoint(agents);
        let bytes = encode(&c, boot);
        assert_eq!(decode(&bytes, boot, Clock::Monotonic), Ok(c.clone()));
        let local = encode(&checkpoint(vec![agent(Source::Local, 4242)]), boot).len() - HEADER - 4;
        assert!(local <= 64, "a local agent's record: {local} bytes");
        // Damage inside the records, CRC fixed up: refused, never misread.
        let mut cut = bytes[..bytes.len() - 4].to_vec();
        cut.pop();
        let crc = crc32c::crc32c(&cut).to_le_bytes();
        cut.extend_from_slice(&crc);
        assert_eq!(decode(&cut, boot, Clock::Monotonic), Err(SetAside::Corrupt));
        let mut lie = bytes[..bytes.len() - 4].to_vec();
        lie[53..57].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32c::crc32c(&lie).to_le_bytes();
        lie.extend_from_slice(&crc);
        assert_eq!(decode(&lie, boot, Clock::Monotonic), Err(SetAside::Corrupt));
    }

    /// A state file of the first release (format 1, fixed records) is
    /// still taken back: an upgrade keeps its agents.
    #[test]
    fn format_one_files_are_still_read() {
        let boot = [3; 16];
        let c = checkpoint(vec![
            agent(Source::Local, 4242),
            agent(Source::Ip("10.0.0.9".parse().expect("ip")), 8),
        ]);
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&boot);
        out.push(clock_byte(c.clock));
        out.extend_from_slice(&c.taken_ns.to_le_bytes());
        out.extend_from_slice(&c.next_incident.to_le_bytes());
        out.extend_from_slice(&c.trace_salt.to_le_bytes());
        out.extend_from_slice(&(c.agents.len() as u32).to_le_bytes());
        for a in &c.agents {
            let start = out.len();
            put_source(&mut out, &a.source);
            out.extend_from_slice(&a.pid.to_le_bytes());
            out.extend_from_slice(&a.start_time.to_le_bytes());
            out.extend_from_slice(&a.frame_pid.to_le_bytes());
            out.push(a.transport as u8);
            out.push(a.status as u8);
            out.push(u8::from(a.stalled) | (u8::from(a.last_nonce.is_some()) << 1));
            out.extend_from_slice(&a.last_beat_ns.to_le_bytes());
            out.extend_from_slice(&a.last_nonce.unwrap_or(0).to_le_bytes());
            out.extend_from_slice(&a.last_timestamp.to_le_bytes());
            out.extend_from_slice(&a.last_payload.to_le_bytes());
            out.extend_from_slice(&a.beats.to_le_bytes());
            out.extend_from_slice(&a.stalls.to_le_bytes());
            out.extend_from_slice(&a.incident.to_le_bytes());
            out.extend_from_slice(&a.first_seen_s.to_le_bytes());
            out.extend_from_slice(&a.learned.0.to_le_bytes());
            out.push(a.learned.1);
            out.resize(start + RECORD_V1, 0);
        }
        let crc = crc32c::crc32c(&out).to_le_bytes();
        out.extend_from_slice(&crc);
        assert_eq!(decode(&out, boot, Clock::Monotonic), Ok(c));
        out[8] = 3; // a version this build does not know
        assert_eq!(decode(&out, boot, Clock::Monotonic), Err(SetAside::Format));
    }
}
