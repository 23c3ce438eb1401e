//! The `file` exporter: one TSV line per event, compatible with
//! varta-watch's event file so existing tooling keeps working:
//!
//! ```text
//! observer_ns <TAB> kind <TAB> pid <TAB> nonce <TAB> status <TAB> payload
//! ```
//!
//! `observer_ns` is the processor clock (CLOCK_MONOTONIC by default). Kinds
//! and their columns (`-` where a column does not apply):
//!
//! | kind | pid | nonce | status | payload |
//! |---|---|---|---|---|
//! | `beat` | pid | nonce | ok/degraded/critical | payload |
//! | `stall` | pid | last nonce | `stall` | `-` |
//! | `resume` | pid | nonce | status | silence in ns |
//! | `status` | pid | nonce | new status | payload |
//! | `panic` | pid | nonce | `critical` | payload |
//! | `decode` | claimed pid or `-` | `-` | `-` | error kind (`BadMagic`, …) |
//! | `mismatch` | claimed pid | `-` | `-` | `auth_failure`, `origin_conflict`, `namespace_conflict`, `uid_mismatch` |
//! | `refused` | claimed pid | `-` | `-` | reason (`replay`, `decrypt_failed`, …) |
//! | `eviction` | pid | `-` | `-` | reason |
//! | `capacity` | pid | `-` | `-` | `-` |
//! | `ratelimit` | pid | `-` | `-` | reason |
//! | `stale_nonce` | pid | nonce | status | payload |
//! | `clock` | `-` | `-` | `-` | anomaly |
//! | `blind_window` | `-` | `-` | `-` | `cause=…;start_ns=…;duration_ns=…` |
//! | `lost` | `-` | count | `-` | `write_failed` (lines a failed write, a full disk, took; never a torn line) |
//! | `recovery` | pid | incident | `started`, `succeeded`, `failed`, `timed_out`, `spawn_failed`, `refused`, `skipped` | `key=value;…` (reason, or program, child pid, exit, duration, output sizes) |
//! | `diagnosis` | pid | incident | cause (`exited`, `zombie`, `stopped`, `spinning`, `blocked_io`, `waiting`, `unknown`) | `key=value;…` details (threads by state, CPU ‰ over the window, RSS, context switches, tracer pid, wchan) |
//!
//! | `aggregated` | `-` | count | kind (`bad_magic`, `per_agent`, …) | source (`local`, an IP, or `other`) |
//!
//! Beat lines can be switched off (`beats: false`). The file is rotated to
//! `path.1` … `path.N` (`rotate_keep`, 5) when it grows past `rotate_bytes`
//! (default 100 MiB; 0 never rotates), so it holds at most
//! `rotate_bytes × (rotate_keep + 1)` plus one line. Bulk lines (refusals,
//! rate limits, stale nonces, origin conflicts, capacity refusals) beyond
//! `bulk_lines_per_second` (100) become one `aggregated` line per kind and
//! source per second ([`crate::aggregate`]); stall, diagnosis, recovery,
//! resume, status, panic and eviction lines are never aggregated. The file is created owner-only (0600) and never
//! through a symlink.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use varta_agents::AttributeStore;
use varta_processor::{Event, EventKind};
use varta_proto::Refusal;

use crate::Exporter;
use crate::aggregate::{Admit, BulkBudget, Summary};

fn default_true() -> bool {
    true
}
fn default_keep() -> u32 {
    5
}
fn default_queue() -> usize {
    65_536
}

/// Configuration of the `file` exporter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileExporterConfig {
    /// Event file path (required).
    #[serde(default)]
    pub path: PathBuf,
    /// Write a line per accepted beat (default true, as varta-watch).
    #[serde(default = "default_true")]
    pub beats: bool,
    /// Rotate when the file exceeds this many bytes (default 100 MiB); 0
    /// never rotates.
    #[serde(default = "default_rotate_bytes")]
    pub rotate_bytes: u64,
    /// Rotated generations kept (`path.1` newest).
    #[serde(default = "default_keep")]
    pub rotate_keep: u32,
    /// Events that may wait for the disk; beyond it the oldest are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue_size: usize,
    /// Bulk lines (refusals, rate limits, stale nonces …) written per
    /// second at most; the rest become `aggregated` summary lines (see
    /// [`crate::aggregate`]). 0 writes none one by one.
    #[serde(default = "default_bulk")]
    pub bulk_lines_per_second: u64,
}

fn default_rotate_bytes() -> u64 {
    100 << 20
}
fn default_bulk() -> u64 {
    100
}

impl Default for FileExporterConfig {
    fn default() -> Self {
        FileExporterConfig {
            path: PathBuf::new(),
            beats: true,
            rotate_bytes: default_rotate_bytes(),
            rotate_keep: default_keep(),
            queue_size: default_queue(),
            bulk_lines_per_second: default_bulk(),
        }
    }
}

impl FileExporterConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err("`path` is required".into());
        }
        if self.queue_size == 0 {
            return Err("`queue_size` must be at least 1".into());
        }
        if self.rotate_bytes > 0 && self.rotate_keep == 0 {
            return Err("`rotate_keep` must be at least 1 when `rotate_bytes` is set".into());
        }
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
                Err(format!("directory {} of `path` does not exist", dir.display()))
            }
            _ => Ok(()),
        }
    }
}

impl FileExporter {
    /// One more line of `bytes` went into the buffer. A rotation that fails
    /// shifts nothing, and the line stays in the current file (it is tried
    /// again at the next line).
    fn account(&mut self, bytes: u64) -> io::Result<()> {
        self.written += bytes;
        self.pending += 1;
        if self.config.rotate_bytes > 0
            && self.written >= self.config.rotate_bytes
            && let Err(e) = self.rotate()
        {
            tracing::warn!(path = %self.config.path.display(), "cannot rotate the event file, writing on: {e}");
        }
        Ok(())
    }

    /// A write failed (a full disk): what the buffer held is dropped
    /// unwritten, the file is cut back to its last whole line, and the
    /// lines are counted for the `lost` line that follows once writes
    /// succeed again — never a torn line for the next one to be glued to.
    fn cut_back(&mut self) {
        let Ok(file) = self.out.get_ref().try_clone() else { return };
        let old = std::mem::replace(&mut self.out, BufWriter::with_capacity(64 * 1024, file));
        let _ = old.into_parts(); // drop the buffer, never flush it
        if let Err(e) = self.out.get_ref().set_len(self.durable) {
            tracing::error!(path = %self.config.path.display(), "cannot cut a torn event line back: {e}");
        }
        self.written = self.durable;
        self.lost += self.pending;
        self.pending = 0;
    }

    fn flushed(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.durable = self.written;
        self.pending = 0;
        Ok(())
    }

    fn export_line(&mut self, ev: &Event) -> io::Result<()> {
        if self.lost > 0 {
            let lost = std::mem::take(&mut self.lost);
            let mut w = Counting { inner: &mut self.out, n: 0 };
            writeln!(w, "{}\tlost\t-\t{lost}\t-\twrite_failed", ev.at_ns)?;
            let n = w.n;
            self.account(n)?;
        }
        let summaries = &mut self.summaries;
        let admit = self.budget.admit(ev, &mut |s| summaries.push(*s));
        self.write_summaries()?;
        if admit == Admit::Aggregated {
            return Ok(());
        }
        let compact = match (&ev.kind, &ev.agent, self.stores.get(self.source)) {
            (EventKind::Evidence { incident, .. }, Some(a), Some(Some(store))) => {
                store.evidence().get(&a.id, *incident).map(|c| c.evidence.compact_line())
            }
            _ => None,
        };
        let mut w = Counting { inner: &mut self.out, n: 0 };
        write_line_with(&mut w, ev, compact.as_deref())?;
        let n = w.n;
        self.account(n)
    }

    /// `window_ns aggregated - count kind source`.
    fn write_summaries(&mut self) -> io::Result<()> {
        for s in std::mem::take(&mut self.summaries) {
            let mut w = Counting { inner: &mut self.out, n: 0 };
            let source = s.source.map_or_else(|| "other".to_owned(), |src| src.to_string());
            writeln!(w, "{}\taggregated\t-\t{}\t{}\t{source}", s.window_ns, s.count, s.kind)?;
            let n = w.n;
            self.account(n)?;
        }
        Ok(())
    }
}

/// Writes events as TSV lines through a buffer; see the module docs.
#[derive(Debug)]
pub struct FileExporter {
    config: FileExporterConfig,
    out: BufWriter<File>,
    /// Bytes of the current file, buffered ones included.
    written: u64,
    /// Bytes of the current file known to be on it as whole lines (its
    /// length at the last successful flush).
    durable: u64,
    /// Lines buffered since then.
    pending: u64,
    /// Lines lost to write errors, to be reported by a `lost` line.
    lost: u64,
    budget: BulkBudget,
    summaries: Vec<Summary>,
    /// Each served pipeline's resolver store, by source index (evidence
    /// lines carry the capture's grouping from it).
    stores: Vec<Option<Arc<AttributeStore>>>,
    /// The source of the event being written.
    source: usize,
}

/// Opens the event file for appending: created 0600, never through a
/// symlink, and never blocking — a FIFO (or device) at the path is refused,
/// not waited on (it once hung start-up or a reload), as at the audit path.
fn open(path: &Path) -> io::Result<(File, u64)> {
    let named =
        |kind, e: String| io::Error::new(kind, format!("cannot open event file {}: {e}", path.display()));
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| named(e.kind(), e.to_string()))?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(named(io::ErrorKind::InvalidInput, "not a regular file (a FIFO or device?)".into()));
    }
    Ok((file, meta.len()))
}

impl FileExporter {
    /// Opens (creating, owner-only) the event file for appending.
    pub fn open(config: FileExporterConfig) -> io::Result<FileExporter> {
        let (file, written) = open(&config.path)?;
        let budget = BulkBudget::new(config.bulk_lines_per_second);
        Ok(FileExporter {
            out: BufWriter::with_capacity(64 * 1024, file),
            config,
            written,
            durable: written,
            pending: 0,
            lost: 0,
            budget,
            summaries: Vec::new(),
            stores: Vec::new(),
            source: 0,
        })
    }

    /// The resolver stores of the pipelines it serves, by source index.
    pub fn with_stores(mut self, stores: Vec<Option<Arc<AttributeStore>>>) -> FileExporter {
        self.stores = stores;
        self
    }

    /// The new file is opened first, under a temporary name; only then are
    /// generations shifted and it renamed into place — a new file that
    /// cannot be opened shifts nothing (it once shifted every generation at
    /// every later line).
    fn rotate(&mut self) -> io::Result<()> {
        self.flushed()?;
        let with_suffix = |suffix: &str| {
            let mut p = self.config.path.clone().into_os_string();
            p.push(suffix);
            PathBuf::from(p)
        };
        let temp = with_suffix(".rotating");
        let _ = std::fs::remove_file(&temp);
        let (file, _) = open(&temp)?;
        let keep = self.config.rotate_keep;
        for n in (1..keep).rev() {
            let from = with_suffix(&format!(".{n}"));
            if from.exists() {
                std::fs::rename(&from, with_suffix(&format!(".{}", n + 1)))?;
            }
        }
        std::fs::rename(&self.config.path, with_suffix(".1"))?;
        std::fs::rename(&temp, &self.config.path)?;
        self.out = BufWriter::with_capacity(64 * 1024, file);
        (self.written, self.durable, self.pending) = (0, 0, 0);
        Ok(())
    }
}

/// Counts bytes written through it (for rotation) without allocating.
struct Counting<'a, W: Write> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes one TSV line for `ev`.
pub fn write_line(w: &mut impl Write, ev: &Event) -> io::Result<()> {
    write_line_with(w, ev, None)
}

/// [`write_line`], with an `evidence` event's compact grouping (from the
/// pipeline's evidence board) when it is still there.
pub fn write_line_with(w: &mut impl Write, ev: &Event, evidence: Option<&str>) -> io::Result<()> {
    let ns = ev.at_ns;
    let pid = ev.agent.as_ref().map_or(0, |a| a.id.pid);
    match &ev.kind {
        EventKind::Beat { frame } => {
            writeln!(w, "{ns}\tbeat\t{pid}\t{}\t{}\t{}", frame.nonce, frame.status, frame.payload)
        }
        EventKind::Stall { last_nonce, threshold_ns, learned_interval_ns, blind, .. } => {
            write!(w, "{ns}\tstall\t{pid}\t{last_nonce}\tstall\tthreshold_ns={threshold_ns}")?;
            if *learned_interval_ns != 0 {
                write!(w, ";learned_interval_ns={learned_interval_ns}")?;
            }
            if *blind {
                write!(w, ";blind_window=1")?;
            }
            writeln!(w)
        }
        EventKind::Resume { silence_ns, frame, .. } => {
            writeln!(w, "{ns}\tresume\t{pid}\t{}\t{}\t{silence_ns}", frame.nonce, frame.status)
        }
        EventKind::StatusChange { to, frame, .. } => {
            writeln!(w, "{ns}\tstatus\t{pid}\t{}\t{to}\t{}", frame.nonce, frame.payload)
        }
        EventKind::Panic { frame } => {
            writeln!(w, "{ns}\tpanic\t{pid}\t{}\tcritical\t{}", frame.nonce, frame.payload)
        }
        EventKind::StaleNonce { frame } => {
            writeln!(w, "{ns}\tstale_nonce\t{pid}\t{}\t{}\t{}", frame.nonce, frame.status, frame.payload)
        }
        EventKind::Evicted { reason } => writeln!(w, "{ns}\teviction\t{pid}\t-\t-\t{}", reason.label()),
        EventKind::CapacityExceeded { pid } => writeln!(w, "{ns}\tcapacity\t{pid}\t-\t-\t-"),
        EventKind::RateLimited { reason } => writeln!(w, "{ns}\tratelimit\t{pid}\t-\t-\t{}", reason.label()),
        EventKind::OriginConflict { .. } => writeln!(w, "{ns}\tmismatch\t{pid}\t-\t-\torigin_conflict"),
        EventKind::ClockAnomaly { kind } => writeln!(w, "{ns}\tclock\t-\t-\t-\t{}", kind.label()),
        EventKind::BlindWindow { cause, start_ns, duration_ns } => {
            writeln!(
                w,
                "{ns}\tblind_window\t-\t-\t-\tcause={};start_ns={start_ns};duration_ns={duration_ns}",
                cause.label()
            )
        }
        EventKind::Recovery { incident, report } => {
            writeln!(w, "{ns}\trecovery\t{pid}\t{incident}\t{}\t{}", report.outcome.label(), report.details())
        }
        EventKind::Diagnosis { incident, diagnosis } => {
            writeln!(
                w,
                "{ns}\tdiagnosis\t{pid}\t{incident}\t{}\t{}",
                diagnosis.cause.label(),
                diagnosis.details()
            )
        }
        EventKind::Evidence { incident, duration_ns } => {
            write!(w, "{ns}\tevidence\t{pid}\t{incident}\tcaptured\tduration_ns={duration_ns}")?;
            if let Some(compact) = evidence {
                // One TSV column: no tabs or line breaks, whatever a
                // thread name or fd target held.
                let compact: String = compact.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
                write!(w, ";{compact}")?;
            }
            writeln!(w)
        }
        EventKind::Refused(r) => {
            let claimed = r.claimed_pid;
            match r.refusal {
                Refusal::Decode(kind) if claimed == 0 => {
                    writeln!(w, "{ns}\tdecode\t-\t-\t-\t{}", kind.name())
                }
                Refusal::Decode(kind) => writeln!(w, "{ns}\tdecode\t{claimed}\t-\t-\t{}", kind.name()),
                Refusal::AuthFailed => writeln!(w, "{ns}\tmismatch\t{claimed}\t-\t-\tauth_failure"),
                Refusal::NamespaceMismatch => {
                    writeln!(w, "{ns}\tmismatch\t{claimed}\t-\t-\tnamespace_conflict")
                }
                Refusal::UidMismatch => writeln!(w, "{ns}\tmismatch\t{claimed}\t-\t-\tuid_mismatch"),
                other => writeln!(w, "{ns}\trefused\t{claimed}\t-\t-\t{}", other.label()),
            }
        }
    }
}

impl Exporter for FileExporter {
    fn wants_beats(&self) -> bool {
        self.config.beats
    }

    fn export_from(&mut self, source: usize, ev: &Event) -> io::Result<()> {
        self.source = source;
        self.export(ev)
    }

    fn export(&mut self, ev: &Event) -> io::Result<()> {
        if !self.config.beats && matches!(ev.kind, EventKind::Beat { .. }) {
            return Ok(());
        }
        let result = self.export_line(ev);
        if result.is_err() {
            self.cut_back();
        }
        result
    }

    fn finish(&mut self) -> io::Result<()> {
        let summaries = &mut self.summaries;
        self.budget.finish(&mut |s| summaries.push(*s));
        let result = self.write_summaries().and_then(|()| self.flushed());
        if result.is_err() {
            self.cut_back();
        }
        result
    }

    fn flush(&mut self) -> io::Result<()> {
        let result = self.flushed();
        if result.is_err() {
            self.cut_back();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FIFO at the event file's path is refused at once, never waited on
    /// (with or without a reader at its other end).
    #[test]
    fn a_fifo_at_the_path_is_refused_not_waited_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("events.tsv");
        let c = std::ffi::CString::new(fifo.to_str().expect("utf8")).expect("cstring");
        // SAFETY: mkfifo(3) with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let config = FileExporterConfig { path: fifo.clone(), ..FileExporterConfig::default() };
        assert!(FileExporter::open(config.clone()).is_err(), "no reader");
        // A reader at the other end: opened, then refused as not a file.
        let reader =
            OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).expect("reader");
        let e = FileExporter::open(config).expect_err("a FIFO with a reader");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        drop(reader);
    }
    use varta_processor::{AgentId, AgentRef};

    fn status_line(at_ns: u64) -> Event {
        let frame = Frame::new(Status::Degraded, 42, 0, at_ns, 0);
        Event {
            at_ns,
            agent: agent(42),
            kind: EventKind::StatusChange { from: Status::Ok, to: Status::Degraded, frame },
        }
    }

    /// A full disk: no torn line is left for the next one to be glued to,
    /// and once space returns a `lost` line says how many were lost. Needs
    /// root to mount a small tmpfs (CI runs as root).
    #[test]
    fn a_full_disk_never_tears_a_line_and_reports_what_it_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = varta_pipeline::testing::SmallDisk::mount(dir.path(), "64k");
        let mnt = disk.path();
        let path = mnt.join("events.tsv");
        let config = FileExporterConfig { path: path.clone(), ..FileExporterConfig::default() };
        let mut x = FileExporter::open(config).expect("open");
        for at in 1..50u64 {
            x.export(&status_line(at)).expect("room yet");
        }
        x.flush().expect("room yet");
        // Fill the rest of the disk.
        let filler = mnt.join("filler");
        let mut f = File::create(&filler).expect("filler");
        let chunk = vec![0u8; 512];
        while f.write_all(&chunk).and_then(|()| f.sync_data()).is_ok() {}
        let mut failed = 0;
        for at in 50..3000u64 {
            if x.export(&status_line(at)).and_then(|()| x.flush()).is_err() {
                failed += 1;
            }
        }
        assert!(failed > 0, "the disk filled up");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.ends_with('\n'), "no torn line");
        drop(f);
        std::fs::remove_file(&filler).expect("free space");
        x.export(&status_line(9_000)).expect("space again");
        x.flush().expect("flush");
        let text = std::fs::read_to_string(&path).expect("read");
        let lost = text.lines().find(|l| l.starts_with("9000\tlost\t")).expect("a lost line");
        let count: u64 = lost.split('\t').nth(3).and_then(|n| n.parse().ok()).expect("a count");
        assert!(count > 0, "{lost}");
        assert!(text.lines().any(|l| l.starts_with("9000\tstatus\t")), "the line after it");
        assert!(text.lines().all(|l| l.split('\t').count() == 6), "every line whole: {text}");
    }

    /// A rotation whose new file cannot be opened (a directory squats its
    /// temporary name) shifts no generation and loses no line.
    #[test]
    fn a_rotation_that_cannot_open_its_file_keeps_every_generation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.tsv");
        let config = FileExporterConfig {
            path: path.clone(),
            rotate_bytes: 300,
            rotate_keep: 3,
            ..FileExporterConfig::default()
        };
        let mut x = FileExporter::open(config).expect("open");
        for at in 0..30 {
            x.export(&status_line(at)).expect("export");
        }
        let generations = || (1..=4).filter(|n| dir.path().join(format!("events.tsv.{n}")).exists()).count();
        let before = generations();
        assert!(before >= 1);
        std::fs::create_dir(dir.path().join("events.tsv.rotating")).expect("squat");
        for at in 10..40 {
            x.export(&status_line(at)).expect("lines go on into the current file");
        }
        x.flush().expect("flush");
        assert_eq!(generations(), before, "no generation shifted");
        let lines = std::fs::read_to_string(&path).expect("read").lines().count();
        assert!(lines >= 30, "the lines are in the current file: {lines}");
        std::fs::remove_dir(dir.path().join("events.tsv.rotating")).expect("unsquat");
        x.export(&status_line(99)).expect("export");
        assert_eq!(generations(), (before + 1).min(3));
    }
    use varta_proto::{DecodeErrorKind, Frame, RefusedFrame, Source, Status, Transport};

    fn agent(pid: u32) -> Option<AgentRef> {
        Some(AgentRef {
            id: AgentId { source: Source::Local, pid, start_time: 7 },
            frame_pid: pid,
            host_pid: pid,
            transport: Transport::Uds,
        })
    }

    fn line(ev: &Event) -> String {
        let mut out = Vec::new();
        write_line(&mut out, ev).expect("write to Vec");
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn lines_match_varta_watch_format() {
        let frame = Frame::new(Status::Degraded, 42, 9, 5, 77);
        let beat = Event { at_ns: 100, agent: agent(42), kind: EventKind::Beat { frame } };
        assert_eq!(line(&beat), "100\tbeat\t42\t5\tdegraded\t77\n");
        let stall = |learned_interval_ns| Event {
            at_ns: 200,
            agent: agent(42),
            kind: EventKind::Stall {
                incident: 1,
                last_beat_ns: 100,
                last_nonce: 5,
                silence_ns: 100,
                last_status: Status::Ok,
                last_payload: 0,
                threshold_ns: 100,
                learned_interval_ns,
                blind: false,
            },
        };
        assert_eq!(line(&stall(0)), "200\tstall\t42\t5\tstall\tthreshold_ns=100\n");
        let learned = stall(25);
        assert_eq!(line(&learned), "200\tstall\t42\t5\tstall\tthreshold_ns=100;learned_interval_ns=25\n");
        let refused = |refusal| Event {
            at_ns: 300,
            agent: None,
            kind: EventKind::Refused(RefusedFrame {
                refusal,
                transport: Transport::Uds,
                source: Source::Local,
                claimed_pid: 0,
                received_ns: 1,
            }),
        };
        assert_eq!(
            line(&refused(Refusal::Decode(DecodeErrorKind::BadMagic))),
            "300\tdecode\t-\t-\t-\tBadMagic\n"
        );
        assert_eq!(line(&refused(Refusal::AuthFailed)), "300\tmismatch\t0\t-\t-\tauth_failure\n");
        assert_eq!(line(&refused(Refusal::Replay)), "300\trefused\t0\t-\t-\treplay\n");
    }

    #[test]
    fn creates_owner_only_skips_beats_when_asked_and_rotates() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.tsv");
        let config = FileExporterConfig {
            path: path.clone(),
            beats: false,
            rotate_bytes: 64,
            rotate_keep: 2,
            ..FileExporterConfig::default()
        };
        assert!(config.validate().is_ok());
        let mut exporter = FileExporter::open(config).expect("open");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let frame = Frame::new(Status::Ok, 42, 9, 5, 77);
        exporter
            .export(&Event { at_ns: 1, agent: agent(42), kind: EventKind::Beat { frame } })
            .expect("export");
        exporter.flush().expect("flush");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "", "beat lines are off");
        for i in 0..10u64 {
            let kind = EventKind::Panic { frame };
            exporter.export(&Event { at_ns: 1_000_000 + i, agent: agent(42), kind }).expect("export");
        }
        exporter.flush().expect("flush");
        let rotated = |n: u32| dir.path().join(format!("events.tsv.{n}"));
        assert!(rotated(1).exists() && rotated(2).exists(), "two generations kept");
        assert!(!rotated(3).exists(), "older generations are deleted");
        let total: usize = [path.clone(), rotated(1), rotated(2)]
            .iter()
            .map(|p| std::fs::read_to_string(p).expect("read").lines().count())
            .sum();
        assert!((4..=10).contains(&total), "{total} lines kept across generations");
    }

    #[test]
    fn refuses_to_write_through_a_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "").expect("write");
        let link = dir.path().join("events.tsv");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = FileExporter::open(FileExporterConfig { path: link, ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("cannot open event file"), "{err}");
    }

    #[test]
    fn config_errors_name_the_field() {
        assert!(FileExporterConfig::default().validate().unwrap_err().contains("path"));
        let c = FileExporterConfig { path: "/nonexistent-dir/x".into(), ..Default::default() };
        assert!(c.validate().unwrap_err().contains("/nonexistent-dir"));
    }
}
