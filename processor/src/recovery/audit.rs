//! The recovery audit log: append-only TSV, one record per line, each
//! linked to the previous one by a SHA-256 hash chain — across rotation
//! and restarts — so that editing, removing or reordering a record is
//! detected by [`verify`] (`varta-collector audit verify FILE…`). With a
//! key (`audit_key_file`) the chain is HMAC-SHA256 keyed: a log rewritten
//! by someone without the key does not verify with `--key-file`.
//!
//! Format (version 1): every file starts with [`HEADER`] ([`HEADER_KEYED`]
//! when keyed); then records of [`FIELDS`] tab-separated columns:
//!
//! `seq wall_time kind incident pid start_time origin child_pid program
//!  outcome exit duration_ms stdout_bytes stderr_bytes detail prev hash`
//!
//! * `seq` increases by one per record, across rotation and restarts;
//! * `kind` is `boot`, `spawn`, `complete`, `refused`, `torn` or `lost`;
//! * `hash` = hex SHA-256 (keyed: HMAC-SHA256) of every other column of
//!   the line joined by tabs (`prev` included), and `prev` is the previous
//!   record's `hash` ([`GENESIS`] for the very first record).
//!
//! Promises: one writer per file — an exclusive `flock` is held while the
//! log is open, so a second runner (a reload whose old runner has not
//! ended, another collector) cannot fork the chain; the file is created
//! 0600 and never opened through a symlink, and an existing path that is
//! not a regular file owned by us with mode 0600 or stricter is refused;
//! opening reads only the file's tail; each record is written with one
//! `write` and made durable according to [`AuditSync`]; the file is
//! rotated (before the record that would go past `rotate_bytes`, so a new
//! generation never stays header-only); a torn last line (a crash
//! mid-write) is detected on open, cut off and recorded as a `torn`
//! record, and every earlier record stays intact. Values never contain
//! tabs or newlines (they are replaced) and are cut to [`MAX_COLUMN`] bytes.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use varta_proto::Key;

use super::AuditSync;

macro_rules! columns {
    () => {
        "seq\twall_time\tkind\tincident\tpid\tstart_time\torigin\tchild_pid\tprogram\toutcome\texit\tduration_ms\tstdout_bytes\tstderr_bytes\tdetail\tprev\thash"
    };
}

/// First line of every audit file.
pub const HEADER: &str = concat!("# varta-audit v1\t", columns!());
/// First line of every file of a keyed (HMAC-SHA256) log.
pub const HEADER_KEYED: &str = concat!("# varta-audit v1 hmac-sha256\t", columns!());
/// Columns per record.
pub const FIELDS: usize = 17;
/// `prev` of the first record ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Longest text column (origin, program, outcome, detail) written.
pub const MAX_COLUMN: usize = 1024;
/// How much of a file's end opening reads (records are far shorter).
const TAIL: u64 = 64 * 1024;

/// One record's content (the writer adds seq, time and the chain).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub kind: &'static str,
    pub incident: u64,
    pub pid: u32,
    pub start_time: u64,
    pub origin: String,
    pub child_pid: u32,
    pub program: String,
    pub outcome: String,
    /// `code=N`, `signal=N` or `-`.
    pub exit: String,
    pub duration_ms: u64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub detail: String,
}

fn clean(s: &str) -> String {
    if s.is_empty() {
        return "-".into();
    }
    let mut end = s.len().min(MAX_COLUMN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].replace(['\t', '\n', '\r'], " ")
}

/// How records are linked: plain SHA-256, or HMAC-SHA256 with a key.
#[derive(Debug, Clone, Copy)]
struct Chain<'k>(Option<&'k Key>);

impl Chain<'_> {
    fn header(self) -> &'static str {
        if self.0.is_some() { HEADER_KEYED } else { HEADER }
    }

    fn hash(self, columns: &[&str]) -> String {
        fn feed(columns: &[&str], mut update: impl FnMut(&[u8])) {
            for (i, c) in columns.iter().enumerate() {
                if i > 0 {
                    update(b"\t");
                }
                update(c.as_bytes());
            }
        }
        match self.0 {
            None => {
                let mut h = Sha256::new();
                feed(columns, |b| h.update(b));
                varta_proto::hex::encode_hex(&h.finalize())
            }
            Some(key) => {
                // A 32-byte key is always a valid HMAC key.
                let Ok(mut m) = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key.expose_bytes()) else {
                    return GENESIS.to_owned();
                };
                feed(columns, |b| m.update(b));
                varta_proto::hex::encode_hex(&m.finalize().into_bytes())
            }
        }
    }
}

fn wall_time() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// The open audit log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    size: u64,
    seq: u64,
    last_hash: String,
    /// Keys the chain (HMAC-SHA256) when set.
    key: Option<Key>,
    sync: AuditSync,
    last_sync: Instant,
    rotate_bytes: u64,
    keep: u32,
    written: u64,
}

/// Opens `path` for appending — created 0600, never through a symlink,
/// never blocking (a FIFO at the path is refused, not waited on) — checks
/// what it is and takes the writer's lock.
fn open_append(path: &Path) -> io::Result<File> {
    let named = |e: String| io::Error::other(format!("audit file {}: {e}", path.display()));
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(named("is a symlink; refusing to follow it".into()));
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| named(e.to_string()))?;
    let meta = file.metadata().map_err(|e| named(e.to_string()))?;
    if !meta.file_type().is_file() {
        return Err(named("is not a regular file".into()));
    }
    let euid = varta_secrets::effective_uid();
    if meta.uid() != euid {
        return Err(named(format!("is owned by uid {}, but this process runs as uid {euid}", meta.uid())));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(named(format!(
            "mode {mode:04o} gives access to group or others; it must be 0600 or stricter (chmod 600 {})",
            path.display()
        )));
    }
    // SAFETY: flock(2) on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return Err(named(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            "is being written by another recovery runner (an earlier one that has not ended, or another \
             collector); one writer per audit file"
                .into()
        } else {
            format!("cannot lock it: {e}")
        }));
    }
    Ok(file)
}

/// The last `TAIL` bytes of `file` (of `len`), and where they start.
fn read_tail(file: &mut File, len: u64) -> io::Result<(u64, Vec<u8>)> {
    let from = len.saturating_sub(TAIL);
    file.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::with_capacity((len - from) as usize);
    file.take(len - from).read_to_end(&mut tail)?;
    Ok((from, tail))
}

/// The complete lines of a tail read from offset `from` (the first line
/// is partial unless the tail starts the file).
fn tail_lines(from: u64, tail: &[u8]) -> impl Iterator<Item = &[u8]> {
    let start =
        if from == 0 { 0 } else { tail.iter().position(|&b| b == b'\n').map_or(tail.len(), |i| i + 1) };
    tail[start..].split(|&b| b == b'\n').filter(|l| !l.is_empty())
}

/// The last record of a tail: `(seq, hash)`.
fn last_record<'a>(lines: impl DoubleEndedIterator<Item = &'a [u8]>) -> Option<(u64, String)> {
    lines.rev().filter(|l| !l.starts_with(b"#")).find_map(|l| {
        let l = std::str::from_utf8(l).ok()?;
        let cols: Vec<&str> = l.split('\t').collect();
        (cols.len() == FIELDS).then(|| Some((cols[0].parse().ok()?, cols[FIELDS - 1].to_owned())))?
    })
}

/// `(seq, hash)` of the last record of a closed generation, by its tail.
fn last_record_of(path: &Path) -> Option<(u64, String)> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let meta = f.metadata().ok()?;
    if !meta.file_type().is_file() {
        return None;
    }
    let (from, tail) = read_tail(&mut f, meta.len()).ok()?;
    let lines: Vec<&[u8]> = tail_lines(from, &tail).collect();
    last_record(lines.into_iter())
}

fn generation_of(path: &Path, n: u32) -> PathBuf {
    let mut p = path.to_path_buf().into_os_string();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

impl AuditLog {
    /// Opens (or creates) the log, recovering the sequence and chain from
    /// its tail (or from the newest rotated generation), cutting off a
    /// torn last line (reported as a `torn` record). Writes a `boot`
    /// record. `key`: the chain is HMAC-SHA256 keyed (a file written with
    /// the other kind of chain is refused).
    pub fn open(
        path: &Path,
        sync: AuditSync,
        rotate_bytes: u64,
        keep: u32,
        key: Option<Key>,
    ) -> io::Result<AuditLog> {
        let named = |e: String| io::Error::other(format!("audit file {}: {e}", path.display()));
        let chain = Chain(key.as_ref());
        let mut file = open_append(path)?;
        let len = file.metadata()?.len();
        let (from, tail) = read_tail(&mut file, len)?;
        let mut torn = 0u64;
        let mut kept = len;
        if tail.last().is_some_and(|&b| b != b'\n') {
            kept = match tail.iter().rposition(|&b| b == b'\n') {
                Some(i) => from + i as u64 + 1,
                None if from == 0 => 0,
                None => return Err(named("its last line is longer than 64 KiB: not an audit log".into())),
            };
            torn = len - kept;
            file.set_len(kept)?;
        }
        let complete = &tail[..(kept - from) as usize];
        if kept > 0 {
            let mut first = vec![0u8; HEADER_KEYED.len() + 1];
            file.seek(SeekFrom::Start(0))?;
            let n = file.read(&mut first)?;
            let line = first[..n].split(|&b| b == b'\n').next().unwrap_or_default();
            if line != chain.header().as_bytes() {
                let why = if line == HEADER.as_bytes() || line == HEADER_KEYED.as_bytes() {
                    "was written with the other kind of chain (keyed or not) than `audit_key_file` asks for; \
                     move it aside to start a new log"
                } else {
                    "does not start with the audit header: not an audit log"
                };
                return Err(named(why.into()));
            }
        }
        let lines: Vec<&[u8]> = tail_lines(from, complete).collect();
        let (seq, last_hash) = last_record(lines.into_iter())
            .or_else(|| last_record_of(&generation_of(path, 1)))
            .unwrap_or((0, GENESIS.to_owned()));
        let mut log = AuditLog {
            path: path.to_path_buf(),
            size: kept,
            file,
            seq,
            last_hash,
            key,
            sync,
            last_sync: Instant::now(),
            rotate_bytes,
            keep: keep.max(1),
            written: 0,
        };
        if kept == 0 {
            log.write_header()?;
        }
        if torn > 0 {
            tracing::warn!(path = %path.display(), bytes = torn, "audit file ended in a torn record (crash mid-write); cut off, earlier records intact");
            log.append(&Record {
                kind: "torn",
                detail: format!("{torn} bytes of a partial record removed"),
                ..Record::default()
            })?;
        }
        log.append(&Record {
            kind: "boot",
            detail: format!("varta-collector {}", env!("CARGO_PKG_VERSION")),
            ..Record::default()
        })?;
        Ok(log)
    }

    fn write_header(&mut self) -> io::Result<()> {
        let line = format!("{}\n", Chain(self.key.as_ref()).header());
        self.file.write_all(line.as_bytes())?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// The sequence number of the last record written.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Records this log wrote since it was opened (`boot`, `torn` included).
    pub fn records_written(&self) -> u64 {
        self.written
    }

    /// Appends one record (one `write`; rotating first when the file has
    /// reached `rotate_bytes`), then syncs per the policy. A write that
    /// fails part way (a full disk) is cut back to the last complete
    /// record, so the chain stays whole and the record counts as lost (the
    /// runner writes a `lost` record once space returns). A rotation that
    /// fails leaves every generation where it was and the record goes to
    /// the current file; the rotation is tried again at the next record.
    pub fn append(&mut self, r: &Record) -> io::Result<()> {
        if self.rotate_bytes > 0
            && self.size >= self.rotate_bytes
            && let Err(e) = self.rotate()
        {
            tracing::warn!(path = %self.path.display(), "cannot rotate the audit file, writing on: {e}");
        }
        let seq = (self.seq + 1).to_string();
        let cols = [
            seq.clone(),
            wall_time(),
            r.kind.to_owned(),
            r.incident.to_string(),
            r.pid.to_string(),
            r.start_time.to_string(),
            clean(&r.origin),
            r.child_pid.to_string(),
            clean(&r.program),
            clean(&r.outcome),
            clean(&r.exit),
            r.duration_ms.to_string(),
            r.stdout_bytes.to_string(),
            r.stderr_bytes.to_string(),
            clean(&r.detail),
            self.last_hash.clone(),
        ];
        let refs: Vec<&str> = cols.iter().map(String::as_str).collect();
        let h = Chain(self.key.as_ref()).hash(&refs);
        let line = format!("{}\t{h}\n", refs.join("\t"));
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            // Never leave half a record for the next one to be glued to.
            if let Err(cut) = self.file.set_len(self.size) {
                tracing::error!(path = %self.path.display(), "cannot cut a partial audit record back: {cut}");
            }
            return Err(e);
        }
        self.size += line.len() as u64;
        self.seq += 1;
        self.written += 1;
        self.last_hash = h;
        match self.sync {
            AuditSync::EveryRecord => self.file.sync_data()?,
            AuditSync::Interval if self.last_sync.elapsed().as_secs() >= 1 => {
                self.file.sync_data()?;
                self.last_sync = Instant::now();
            }
            AuditSync::Interval => {}
        }
        Ok(())
    }

    /// Makes everything written durable (shutdown).
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The new file is made whole first (created under a temporary name,
    /// locked, its header written), and only then are generations shifted
    /// and it renamed into place: a new file that cannot be made shifts
    /// nothing (it once shifted every generation at every later record).
    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        let mut temp = self.path.clone().into_os_string();
        temp.push(".rotating");
        let temp = PathBuf::from(temp);
        let _ = std::fs::remove_file(&temp);
        let mut fresh = open_append(&temp)?;
        let header = format!("{}\n", Chain(self.key.as_ref()).header());
        if let Err(e) = fresh.write_all(header.as_bytes()).and_then(|()| fresh.sync_data()) {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        for n in (1..self.keep).rev() {
            let from = generation_of(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, generation_of(&self.path, n + 1))?;
            }
        }
        std::fs::rename(&self.path, generation_of(&self.path, 1))?;
        std::fs::rename(&temp, &self.path)?;
        // The new file is locked before the old one's lock goes with it.
        self.file = fresh;
        self.size = header.len() as u64;
        Ok(())
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every record links to the previous one; `records` checked, and
    /// whether the last file ended in a torn line (ignored).
    Intact { records: u64, torn_tail: bool },
    /// The first record that does not verify, and why.
    Broken { file: PathBuf, line: usize, seq: Option<u64>, reason: String },
}

/// A whole audit file, read without blocking on something that is not a
/// regular file (a FIFO at the path is an error, not a hang).
fn read_audit_file(path: &Path) -> io::Result<Vec<u8>> {
    let named = |e: String| io::Error::other(format!("{}: {e}", path.display()));
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| named(e.to_string()))?;
    if !f.metadata().map_err(|e| named(e.to_string()))?.file_type().is_file() {
        return Err(named("not a regular file".into()));
    }
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(|e| named(e.to_string()))?;
    Ok(bytes)
}

/// Checks `files` (oldest first: `audit.tsv.2 audit.tsv.1 audit.tsv`):
/// headers, sequence continuity and the hash chain — keyed with `key`
/// (then every file must be keyed). `Err` when a file cannot be read, or
/// is keyed and no key was given.
pub fn verify(files: &[PathBuf], key: Option<&Key>) -> io::Result<Verdict> {
    let chain = Chain(key);
    let mut prev: Option<(u64, String)> = None;
    let mut records = 0;
    let mut torn_tail = false;
    for (fi, path) in files.iter().enumerate() {
        let bytes = read_audit_file(path)?;
        let last_file = fi + 1 == files.len();
        let broken = |line: usize, seq: Option<u64>, reason: String| Verdict::Broken {
            file: path.clone(),
            line,
            seq,
            reason,
        };
        let complete = if bytes.ends_with(b"\n") || bytes.is_empty() {
            &bytes[..]
        } else if last_file {
            torn_tail = true;
            &bytes[..bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)]
        } else {
            return Ok(broken(
                bytes.split(|&b| b == b'\n').count(),
                None,
                "file ends in a partial line but is not the newest".into(),
            ));
        };
        let mut in_file = 0;
        let lines = complete.strip_suffix(b"\n").map(|body| body.split(|&b| b == b'\n'));
        for (i, raw) in lines.into_iter().flatten().enumerate() {
            let n = i + 1;
            let Ok(line) = std::str::from_utf8(raw) else {
                return Ok(broken(n, None, "not UTF-8 (an audit log is written as text)".into()));
            };
            if i == 0 {
                if line == chain.header() {
                    continue;
                }
                if line == HEADER_KEYED && key.is_none() {
                    return Err(io::Error::other(format!(
                        "{}: the log is keyed (HMAC-SHA256): verify it with --key-file",
                        path.display()
                    )));
                }
                if line == HEADER && key.is_some() {
                    return Ok(broken(
                        n,
                        None,
                        "not keyed, but a key was given (rewritten without it?)".into(),
                    ));
                }
                return Ok(broken(n, None, "missing or altered header".into()));
            }
            let cols: Vec<&str> = line.split('\t').collect();
            let seq = cols.first().and_then(|s| s.parse::<u64>().ok());
            if cols.len() != FIELDS {
                return Ok(broken(n, seq, format!("{} columns, expected {FIELDS}", cols.len())));
            }
            let Some(seq) = seq else { return Ok(broken(n, None, "sequence number is not a number".into())) };
            if let Some((p_seq, p_hash)) = &prev {
                if seq != p_seq + 1 {
                    return Ok(broken(n, Some(seq), format!("sequence jumps from {p_seq} to {seq}")));
                }
                if cols[FIELDS - 2] != p_hash {
                    return Ok(broken(n, Some(seq), "does not link to the previous record".into()));
                }
            } else if seq == 1 && cols[FIELDS - 2] != GENESIS {
                return Ok(broken(n, Some(seq), "first record does not start the chain".into()));
            }
            if chain.hash(&cols[..FIELDS - 1]) != cols[FIELDS - 1] {
                let why = if key.is_some() { "edited, or written without the key" } else { "edited" };
                return Ok(broken(n, Some(seq), format!("hash does not match the record ({why})")));
            }
            prev = Some((seq, cols[FIELDS - 1].to_owned()));
            records += 1;
            in_file += 1;
        }
        if in_file == 0 && records > 0 {
            // Rotation writes the first record right after the header.
            return Ok(broken(1, None, "holds no record after older files that do (records cut?)".into()));
        }
    }
    Ok(Verdict::Intact { records, torn_tail })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: &'static str, pid: u32) -> Record {
        Record { kind, pid, origin: "uds local".into(), program: "restart".into(), ..Record::default() }
    }

    #[test]
    fn chain_survives_restart_and_rotation_and_catches_edits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.tsv");
        {
            let mut log = AuditLog::open(&path, AuditSync::EveryRecord, 0, 5, None).expect("open");
            log.append(&rec("spawn", 42)).expect("append");
            log.append(&rec("complete", 42)).expect("append");
            assert_eq!(log.seq(), 3, "boot + 2");
        }
        // Restart continues the sequence; rotation keeps the chain.
        let mut log = AuditLog::open(&path, AuditSync::Interval, 600, 3, None).expect("reopen");
        assert_eq!(log.seq(), 4);
        for pid in 0..10 {
            log.append(&rec("refused", pid)).expect("append");
        }
        log.sync().expect("sync");
        let mut files: Vec<PathBuf> =
            (1..=3).rev().map(|n| dir.path().join(format!("audit.tsv.{n}"))).filter(|p| p.exists()).collect();
        files.push(path.clone());
        assert!(files.len() >= 2, "rotated: {files:?}");
        let verdict = verify(&files, None).expect("readable");
        assert!(matches!(verdict, Verdict::Intact { torn_tail: false, .. }), "{verdict:?}");

        // A torn tail is tolerated by verify and cut off on the next open.
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"15\t123.4\tspa").expect("write");
        drop(f);
        assert!(matches!(verify(&files, None).expect("readable"), Verdict::Intact { torn_tail: true, .. }));
        drop(log);
        let log = AuditLog::open(&path, AuditSync::EveryRecord, 0, 3, None).expect("reopen after tear");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("\ttorn\t") && text.ends_with('\n'));
        assert!(matches!(verify(&files, None).expect("readable"), Verdict::Intact { torn_tail: false, .. }));
        let last = log.seq();

        // Editing one byte of one record breaks the chain at that record.
        let edited = text.replacen("\trefused\t", "\trefuseD\t", 1);
        std::fs::write(&path, edited).expect("write");
        match verify(&files, None).expect("readable") {
            Verdict::Broken { seq: Some(seq), reason, .. } => {
                assert!(seq <= last && reason.contains("edited"), "{seq} {reason}");
            }
            other => panic!("edit not detected: {other:?}"),
        }
    }

    /// A rotation whose new file cannot be made (here a directory squats
    /// its temporary name) shifts no generation; records go on into the
    /// current file and the chain verifies; the next rotation succeeds.
    #[test]
    fn a_rotation_that_cannot_make_its_file_keeps_every_generation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.tsv");
        let mut log = AuditLog::open(&path, AuditSync::EveryRecord, 400, 3, None).expect("open");
        for pid in 0..6 {
            log.append(&rec("refused", pid)).expect("append");
        }
        let generations = || (1..=4).filter(|n| dir.path().join(format!("audit.tsv.{n}")).exists()).count();
        let before = generations();
        assert!(before >= 1, "it rotated once at least");
        std::fs::create_dir(dir.path().join("audit.tsv.rotating")).expect("squat");
        for pid in 6..20 {
            log.append(&rec("refused", pid)).expect("records go on into the current file");
        }
        assert_eq!(generations(), before, "no generation shifted");
        std::fs::remove_dir(dir.path().join("audit.tsv.rotating")).expect("unsquat");
        log.append(&rec("refused", 99)).expect("append");
        assert_eq!(generations(), (before + 1).min(3), "rotated once more");
        let mut files: Vec<PathBuf> =
            (1..=3).rev().map(|n| dir.path().join(format!("audit.tsv.{n}"))).filter(|p| p.exists()).collect();
        files.push(path.clone());
        assert!(matches!(verify(&files, None).expect("readable"), Verdict::Intact { .. }));
    }

    /// A full disk mid-record: the partial record is cut back, later records
    /// fail (counted by the runner), and once space returns the log goes on
    /// and verifies. Needs root to mount a small tmpfs (CI runs as root).
    #[test]
    fn a_full_disk_never_leaves_half_a_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = varta_pipeline::testing::SmallDisk::mount(dir.path(), "64k");
        let mnt = disk.path();
        let path = mnt.join("audit.tsv");
        let filler = mnt.join("filler");
        let mut log = AuditLog::open(&path, AuditSync::EveryRecord, 0, 3, None).expect("open");
        // Fill the rest of the disk.
        let mut f = File::create(&filler).expect("filler");
        let chunk = vec![0u8; 1024];
        while f.write_all(&chunk).and_then(|()| f.sync_data()).is_ok() {}
        let mut failed = 0;
        for pid in 0..200 {
            if log.append(&rec("refused", pid)).is_err() {
                failed += 1;
            }
        }
        assert!(failed > 0, "the disk filled up");
        let text = std::fs::read(&path).expect("read");
        assert!(text.ends_with(b"\n"), "no partial record left behind");
        drop(f);
        std::fs::remove_file(&filler).expect("free space");
        log.append(&rec("lost", 0)).expect("space again");
        log.append(&rec("refused", 500)).expect("space again");
        assert!(matches!(verify(&[path], None).expect("readable"), Verdict::Intact { torn_tail: false, .. }));
    }

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: mkfifo(3) with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    }

    #[test]
    fn only_a_regular_owner_only_file_and_only_one_writer() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo.tsv");
        mkfifo(&fifo);
        let e = AuditLog::open(&fifo, AuditSync::EveryRecord, 0, 5, None).expect_err("a FIFO is refused");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = verify(std::slice::from_ref(&fifo), None).expect_err("unreadable, not a hang");
        assert!(e.to_string().contains("not a regular file"), "{e}");

        let open = dir.path().join("open.tsv");
        std::fs::write(&open, "").expect("write");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let e = AuditLog::open(&open, AuditSync::EveryRecord, 0, 5, None).expect_err("group-readable");
        assert!(e.to_string().contains("0640"), "{e}");

        let path = dir.path().join("audit.tsv");
        let first = AuditLog::open(&path, AuditSync::EveryRecord, 0, 5, None).expect("open");
        let e = AuditLog::open(&path, AuditSync::EveryRecord, 0, 5, None).expect_err("a second writer");
        assert!(e.to_string().contains("one writer per audit file"), "{e}");
        drop(first);
        let again = AuditLog::open(&path, AuditSync::EveryRecord, 0, 5, None).expect("the writer ended");
        assert_eq!(again.seq(), 2);
    }

    #[test]
    fn verify_catches_bad_bytes_a_cut_newest_file_and_a_rewrite_without_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.tsv");
        let mut log = AuditLog::open(&path, AuditSync::Interval, 300, 5, None).expect("open");
        for pid in 0..6 {
            log.append(&rec("refused", pid)).expect("append");
        }
        drop(log);
        let old = dir.path().join("audit.tsv.1");
        assert!(old.exists(), "rotated");
        let files = vec![old.clone(), path.clone()];
        let newest = std::fs::read_to_string(&path).expect("read");
        assert!(newest.lines().count() >= 2, "rotation never leaves a header-only file: {newest}");
        assert!(matches!(verify(&files, None).expect("readable"), Verdict::Intact { .. }));

        // The newest file cut back to its header.
        std::fs::write(&path, format!("{HEADER}\n")).expect("write");
        let v = verify(&files, None).expect("readable");
        assert!(matches!(&v, Verdict::Broken { reason, .. } if reason.contains("no record")), "{v:?}");
        std::fs::write(&path, "").expect("write");
        assert!(matches!(verify(&files, None).expect("readable"), Verdict::Broken { .. }));

        // A non-UTF-8 byte is a broken record, not an unreadable file.
        let mut bytes = newest.clone().into_bytes();
        let at = bytes.len() - 3;
        bytes[at] = 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let v = verify(&files, None).expect("readable");
        assert!(matches!(&v, Verdict::Broken { reason, .. } if reason.contains("UTF-8")), "{v:?}");

        // Keyed: a log rewritten without the key does not verify with it.
        let key = Key::from_bytes([7; 32]);
        let keyed = dir.path().join("keyed.tsv");
        let mut log = AuditLog::open(&keyed, AuditSync::EveryRecord, 0, 5, Some(Key::from_bytes([7; 32])))
            .expect("open");
        log.append(&rec("spawn", 1)).expect("append");
        drop(log);
        let one = vec![keyed.clone()];
        assert!(matches!(verify(&one, Some(&key)).expect("readable"), Verdict::Intact { records: 2, .. }));
        assert!(verify(&one, None).is_err(), "a keyed log needs the key");
        let wrong = Key::from_bytes([8; 32]);
        assert!(matches!(verify(&one, Some(&wrong)).expect("readable"), Verdict::Broken { .. }));
        // The forger rewrites it as a plain chain: verifies without a key, never with one.
        let forged = dir.path().join("forged.tsv");
        let mut log = AuditLog::open(&forged, AuditSync::EveryRecord, 0, 5, None).expect("open");
        log.append(&rec("spawn", 2)).expect("append");
        drop(log);
        let forged = vec![forged];
        assert!(matches!(verify(&forged, None).expect("readable"), Verdict::Intact { .. }));
        assert!(matches!(verify(&forged, Some(&key)).expect("readable"), Verdict::Broken { .. }));
        // A keyed file is not reopened as a plain one (nor the reverse).
        assert!(AuditLog::open(&keyed, AuditSync::EveryRecord, 0, 5, None).is_err());
    }
}
