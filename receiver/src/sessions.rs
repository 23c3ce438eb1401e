//! A secure receiver's replay sessions, kept across a restart: without
//! them a frame recorded before the collector restarted would be accepted
//! once after it (the table lives in memory).
//!
//! `<dir>/<receiver>.sessions` holds the [`ReplayTable::save`] bytes in an
//! envelope: a magic, the format version, and a CRC-32C of everything
//! before it. It is written whole or not at all (see
//! [`varta_pipeline::state_file`]) by a writer thread of its own, at most
//! every `interval` while frames are admitted (the receiver thread only
//! copies the table, never waits on the disk: a writer still busy skips
//! one, counted) and once more when the receiver stops. A SIGKILL loses
//! what was admitted since the last write: sessions started since then
//! can be replayed once. Unlike the processor's checkpoint it is not
//! bound to the boot: `iv_random`s and counters mean the same after a
//! reboot, and a recorded frame is as replayable then.
//!
//! A file that is not such a table (other version, bad checksum, cut
//! short, too large) is set aside, counted and logged; the receiver
//! starts with an empty table, as it did before sessions were kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError, bounded};
use varta_pipeline::state_file::{self, Found};

use crate::replay::ReplayTable;
use crate::stats::ReceiverStats;

const MAGIC: &[u8; 8] = b"VARTARP\0";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Files larger than this are not read (a full table of 65,536 senders
/// is ~18 MiB).
pub const MAX_SESSION_BYTES: u64 = 1 << 30;
/// How often admitted sessions are written by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// `<dir>/<receiver>.sessions` (the receiver id's `/` made `_`).
pub fn path_in(dir: &Path, receiver: &str) -> PathBuf {
    let name: String = receiver
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
        .collect();
    dir.join(format!("{name}.sessions"))
}

fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The body of a sealed file, or why it is not one.
fn open(bytes: &[u8]) -> Result<&[u8], &'static str> {
    let (sealed, crc) = bytes.split_last_chunk::<4>().ok_or("cut short")?;
    let (magic, rest) = sealed.split_first_chunk::<8>().ok_or("cut short")?;
    let (version, body) = rest.split_first_chunk::<4>().ok_or("cut short")?;
    if magic != MAGIC || u32::from_le_bytes(*version) != FORMAT_VERSION {
        return Err("format");
    }
    if crc32c::crc32c(sealed) != u32::from_le_bytes(*crc) {
        return Err("corrupt");
    }
    Ok(body)
}

/// Keeps one secure receiver's sessions in its file.
#[derive(Debug)]
pub(crate) struct SessionKeeper {
    path: PathBuf,
    interval_ns: u64,
    next_ns: u64,
    tx: Option<Sender<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<ReceiverStats>,
}

impl SessionKeeper {
    /// Restores `table` from `path` (at `now`) and starts the writer.
    pub(crate) fn start(
        id: &str,
        path: PathBuf,
        interval: Duration,
        table: &mut ReplayTable,
        now: u64,
        stats: Arc<ReceiverStats>,
    ) -> std::io::Result<SessionKeeper> {
        stats.keeps_sessions.store(true, Relaxed);
        restore(id, &path, table, now, &stats);
        let (tx, rx) = bounded::<Vec<u8>>(1);
        let (file, written) = (path.clone(), Arc::clone(&stats));
        let thread = std::thread::Builder::new().name(format!("sessions-{id}")).spawn(move || {
            for body in rx {
                wrote(&file, state_file::write_whole(&file, &seal(&body)), &written);
            }
        })?;
        let interval_ns = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX).max(1);
        Ok(SessionKeeper { path, interval_ns, next_ns: now, tx: Some(tx), thread: Some(thread), stats })
    }

    /// At most every interval, hands what was admitted since to the writer.
    pub(crate) fn tick(&mut self, table: &mut ReplayTable, now: u64) {
        if now < self.next_ns || !table.changed() {
            return;
        }
        self.next_ns = now.saturating_add(self.interval_ns);
        let Some(tx) = &self.tx else { return };
        if tx.is_full() {
            // Still writing the last one: the next tick tries again.
            ReceiverStats::add(&self.stats.session_saves_skipped, 1);
            return;
        }
        if let Err(TrySendError::Full(_)) = tx.try_send(table.save()) {
            ReceiverStats::add(&self.stats.session_saves_skipped, 1);
        }
    }

    /// The last write, waited for (the receiver stops).
    pub(crate) fn finish(&mut self, table: &mut ReplayTable) {
        let Some(tx) = self.tx.take() else { return };
        let _ = tx.send(table.save());
        drop(tx);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        tracing::debug!(path = %self.path.display(), senders = table.len(), "secure sessions saved");
    }
}

fn wrote(path: &Path, result: std::io::Result<u64>, stats: &ReceiverStats) {
    match result {
        Ok(n) => {
            stats.session_saves.fetch_add(1, Relaxed);
            stats.session_bytes.store(n, Relaxed);
        }
        Err(e) => {
            let n = stats.session_saves_failed.fetch_add(1, Relaxed);
            if n == 0 || n.is_power_of_two() {
                tracing::error!(path = %path.display(), failed = n + 1, "cannot write the secure sessions; the previous file stays: {e}");
            }
        }
    }
}

fn restore(id: &str, path: &Path, table: &mut ReplayTable, now: u64, stats: &ReceiverStats) {
    let why = match state_file::read_bounded(path, MAX_SESSION_BYTES) {
        Ok(Found::Missing) => return,
        Ok(Found::TooLarge) => "too_large",
        Ok(Found::Bytes(bytes)) => {
            match open(&bytes).and_then(|body| table.restore(body, now).map_err(|_| "corrupt")) {
                Ok((taken, left_out)) => {
                    ReceiverStats::add(&stats.senders_restored, taken as u64);
                    tracing::info!(receiver = id, senders = taken, left_out, path = %path.display(), "secure sessions restored: frames recorded before the restart stay refused");
                    return;
                }
                Err(why) => why,
            }
        }
        Err(e) => {
            tracing::warn!(receiver = id, path = %path.display(), "cannot read the secure sessions, starting without them: {e}");
            return;
        }
    };
    ReceiverStats::add(&stats.session_files_set_aside, 1);
    let aside = state_file::set_aside(path);
    tracing::warn!(receiver = id, path = %path.display(), set_aside = %aside.display(), reason = why, "secure sessions not restored; the receiver starts with none");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bodies_open_and_damaged_ones_do_not() {
        let sealed = seal(b"body");
        assert_eq!(open(&sealed), Ok(&b"body"[..]));
        let mut flipped = sealed.clone();
        flipped[13] ^= 1;
        assert_eq!(open(&flipped), Err("corrupt"));
        let mut other = sealed.clone();
        other[8] = 2;
        assert_eq!(open(&other), Err("format"));
        assert_eq!(open(&sealed[..10]), Err("cut short"));
        assert_eq!(path_in(Path::new("/s"), "vlp/net"), PathBuf::from("/s/vlp_net.sessions"));
    }
}
