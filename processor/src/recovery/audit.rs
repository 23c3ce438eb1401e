//! The recovery audit log: append-only TSV, one record per line, each
//! linked to the previous one by a SHA-256 hash chain — across rotation
//! and restarts — so that editing, removing or reordering a record is
//! detected by [`verify`] (`varta-collector audit verify FILE…`).
//!
//! Format (version 1): every file starts with [`HEADER`]; then records of
//! [`FIELDS`] tab-separated columns:
//!
//! `seq wall_time kind incident pid start_time origin child_pid program
//!  outcome exit duration_ms stdout_bytes stderr_bytes detail prev hash`
//!
//! * `seq` increases by one per record, across rotation and restarts;
//! * `kind` is `boot`, `spawn`, `complete`, `refused` or `torn`;
//! * `hash` = hex SHA-256 of every other column of the line joined by tabs
//!   (`prev` included), and `prev` is the previous record's `hash`
//!   ([`GENESIS`] for the very first record).
//!
//! Promises: the file is created 0600 and never opened through a symlink;
//! each record is written with one `write` and made durable according to
//! [`AuditSync`]; a torn last line (a crash mid-write) is detected on
//! open, cut off and recorded as a `torn` record, and every earlier record
//! stays intact. Values never contain tabs or newlines (they are replaced).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::AuditSync;

/// First line of every audit file.
pub const HEADER: &str = "# varta-audit v1\tseq\twall_time\tkind\tincident\tpid\tstart_time\torigin\tchild_pid\tprogram\toutcome\texit\tduration_ms\tstdout_bytes\tstderr_bytes\tdetail\tprev\thash";
/// Columns per record.
pub const FIELDS: usize = 17;
/// `prev` of the first record ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
    s.replace(['\t', '\n', '\r'], " ")
}

fn hash(columns: &[&str]) -> String {
    let mut h = Sha256::new();
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            h.update(b"\t");
        }
        h.update(c.as_bytes());
    }
    varta_proto::hex::encode_hex(&h.finalize())
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
    sync: AuditSync,
    last_sync: Instant,
    rotate_bytes: u64,
    keep: u32,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// The last complete record of `text`: `(seq, hash)`.
fn last_record(text: &str) -> Option<(u64, String)> {
    text.lines().rev().filter(|l| !l.starts_with('#') && !l.is_empty()).find_map(|l| {
        let cols: Vec<&str> = l.split('\t').collect();
        (cols.len() == FIELDS)
            .then(|| (cols[0].parse().ok(), cols[FIELDS - 1].to_owned()))
            .and_then(|(s, h)| Some((s?, h)))
    })
}

impl AuditLog {
    /// Opens (or creates) the log, recovering the sequence and chain from
    /// what is there (or from the newest rotated generation), cutting off a
    /// torn last line (reported as a `torn` record). Writes a `boot` record.
    pub fn open(path: &Path, sync: AuditSync, rotate_bytes: u64, keep: u32) -> io::Result<AuditLog> {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(io::Error::other(format!(
                "audit file {} is a symlink; refusing to follow it",
                path.display()
            )));
        }
        let mut file = open_append(path)?;
        let mut text = String::new();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_string(&mut text)
            .map_err(|e| io::Error::other(format!("audit file {}: {e}", path.display())))?;
        let mut torn = 0usize;
        if !text.is_empty() && !text.ends_with('\n') {
            let keep_len = text.rfind('\n').map_or(0, |i| i + 1);
            torn = text.len() - keep_len;
            file.set_len(keep_len as u64)?;
            text.truncate(keep_len);
        }
        let (seq, last_hash) = match last_record(&text) {
            Some(r) => r,
            None => {
                let rotated = path.with_extension(format!(
                    "{}1",
                    path.extension().map(|e| format!("{}.", e.to_string_lossy())).unwrap_or_default()
                ));
                std::fs::read_to_string(&rotated)
                    .ok()
                    .and_then(|t| last_record(&t))
                    .unwrap_or((0, GENESIS.to_owned()))
            }
        };
        let mut log = AuditLog {
            path: path.to_path_buf(),
            size: text.len() as u64,
            file,
            seq,
            last_hash,
            sync,
            last_sync: Instant::now(),
            rotate_bytes,
            keep: keep.max(1),
        };
        if text.is_empty() {
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
        let line = format!("{HEADER}\n");
        self.file.write_all(line.as_bytes())?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// The sequence number of the last record written.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Appends one record (one `write`), then syncs per the policy and
    /// rotates when the file grew past `rotate_bytes`.
    pub fn append(&mut self, r: &Record) -> io::Result<()> {
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
        let h = hash(&refs);
        let line = format!("{}\t{h}\n", refs.join("\t"));
        self.file.write_all(line.as_bytes())?;
        self.size += line.len() as u64;
        self.seq += 1;
        self.last_hash = h;
        match self.sync {
            AuditSync::EveryRecord => self.file.sync_data()?,
            AuditSync::Interval if self.last_sync.elapsed().as_secs() >= 1 => {
                self.file.sync_data()?;
                self.last_sync = Instant::now();
            }
            AuditSync::Interval => {}
        }
        if self.rotate_bytes > 0 && self.size >= self.rotate_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Makes everything written durable (shutdown).
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn generation(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        for n in (1..self.keep).rev() {
            let from = self.generation(n);
            if from.exists() {
                std::fs::rename(&from, self.generation(n + 1))?;
            }
        }
        std::fs::rename(&self.path, self.generation(1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        self.write_header()
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

/// Checks `files` (oldest first: `audit.tsv.2 audit.tsv.1 audit.tsv`):
/// headers, sequence continuity and the hash chain. `Err` when a file
/// cannot be read.
pub fn verify(files: &[PathBuf]) -> io::Result<Verdict> {
    let mut prev: Option<(u64, String)> = None;
    let mut records = 0;
    let mut torn_tail = false;
    for (fi, path) in files.iter().enumerate() {
        let text = std::fs::read_to_string(path)
            .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
        let last_file = fi + 1 == files.len();
        let broken = |line: usize, seq: Option<u64>, reason: String| Verdict::Broken {
            file: path.clone(),
            line,
            seq,
            reason,
        };
        let complete = if text.ends_with('\n') || text.is_empty() {
            text.as_str()
        } else if last_file {
            torn_tail = true;
            &text[..text.rfind('\n').map_or(0, |i| i + 1)]
        } else {
            return Ok(broken(
                text.lines().count(),
                None,
                "file ends in a partial line but is not the newest".into(),
            ));
        };
        for (i, line) in complete.lines().enumerate() {
            let n = i + 1;
            if i == 0 {
                if line != HEADER {
                    return Ok(broken(n, None, "missing or altered header".into()));
                }
                continue;
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
            if hash(&cols[..FIELDS - 1]) != cols[FIELDS - 1] {
                return Ok(broken(n, Some(seq), "hash does not match the record (edited)".into()));
            }
            prev = Some((seq, cols[FIELDS - 1].to_owned()));
            records += 1;
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
            let mut log = AuditLog::open(&path, AuditSync::EveryRecord, 0, 5).expect("open");
            log.append(&rec("spawn", 42)).expect("append");
            log.append(&rec("complete", 42)).expect("append");
            assert_eq!(log.seq(), 3, "boot + 2");
        }
        // Restart continues the sequence; rotation keeps the chain.
        let mut log = AuditLog::open(&path, AuditSync::Interval, 600, 3).expect("reopen");
        assert_eq!(log.seq(), 4);
        for pid in 0..10 {
            log.append(&rec("refused", pid)).expect("append");
        }
        log.sync().expect("sync");
        let mut files: Vec<PathBuf> =
            (1..=3).rev().map(|n| dir.path().join(format!("audit.tsv.{n}"))).filter(|p| p.exists()).collect();
        files.push(path.clone());
        assert!(files.len() >= 2, "rotated: {files:?}");
        let verdict = verify(&files).expect("readable");
        assert!(matches!(verdict, Verdict::Intact { torn_tail: false, .. }), "{verdict:?}");

        // A torn tail is tolerated by verify and cut off on the next open.
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"15\t123.4\tspa").expect("write");
        drop(f);
        assert!(matches!(verify(&files).expect("readable"), Verdict::Intact { torn_tail: true, .. }));
        drop(log);
        let log = AuditLog::open(&path, AuditSync::EveryRecord, 0, 3).expect("reopen after tear");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("\ttorn\t") && text.ends_with('\n'));
        assert!(matches!(verify(&files).expect("readable"), Verdict::Intact { torn_tail: false, .. }));
        let last = log.seq();

        // Editing one byte of one record breaks the chain at that record.
        let edited = text.replacen("\trefused\t", "\trefuseD\t", 1);
        std::fs::write(&path, edited).expect("write");
        match verify(&files).expect("readable") {
            Verdict::Broken { seq: Some(seq), reason, .. } => {
                assert!(seq <= last && reason.contains("edited"), "{seq} {reason}");
            }
            other => panic!("edit not detected: {other:?}"),
        }
    }
}
