//! `debounce`: at most one recovery per agent per `debounce`, kept across
//! restarts and reloads when the pipeline keeps state (a `file_storage`
//! extension): a collector restarted, or a recovery runner rebuilt by a
//! reload, just after a recovery ran must not run it again for the same
//! agent within `debounce`.
//!
//! The file (`<state dir>/<pipeline>.recovery`) is small text, rewritten
//! whole (see [`varta_pipeline::state_file`]) after each recovery that
//! runs: the boot id, then one line per agent with its last run on the
//! boot clock (`CLOCK_BOOTTIME`, which counts suspend). A file of another
//! boot is ignored (no agent of that boot is running); one that does not
//! parse is set aside and logged — a lost debounce never stops recovery.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use varta_pipeline::clock::boottime_ns;
use varta_pipeline::procfs::boot_id;
use varta_pipeline::state_file::{self, Found};
use varta_proto::Source;

use crate::agent::AgentId;

const HEADER: &str = "varta-recovery-debounce 1";
/// Files larger than this are not read (a line is < 80 bytes).
const MAX_BYTES: u64 = 64 << 20;

/// When each agent's recovery last ran, and where that is kept.
#[derive(Debug, Default)]
pub(crate) struct Debounce {
    last_run: HashMap<AgentId, Instant>,
    file: Option<PathBuf>,
}

impl Debounce {
    /// Takes back the runs `file` holds that are younger than `debounce`.
    pub(crate) fn load(file: Option<PathBuf>, debounce: Duration) -> Debounce {
        let mut me = Debounce { last_run: HashMap::new(), file };
        let Some(path) = me.file.clone() else { return me };
        let text = match state_file::read_bounded(&path, MAX_BYTES) {
            Ok(Found::Missing) => return me,
            Ok(Found::Bytes(b)) => String::from_utf8(b).ok(),
            Ok(Found::TooLarge) => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), "recovery debounce not read, starting without it: {e}");
                return me;
            }
        };
        let (now, boot_now) = (Instant::now(), boottime_ns());
        match text.as_deref().and_then(|t| parse(t, boot_id())) {
            Some(runs) => {
                for (id, at) in runs {
                    let age = Duration::from_nanos(boot_now.saturating_sub(at));
                    if age < debounce
                        && let Some(when) = now.checked_sub(age)
                    {
                        me.last_run.insert(id, when);
                    }
                }
                if !me.last_run.is_empty() {
                    tracing::info!(
                        agents = me.last_run.len(),
                        "recovery debounce restored: agents recovered just before keep their debounce"
                    );
                }
            }
            None => {
                let aside = state_file::set_aside(&path);
                tracing::warn!(path = %path.display(), set_aside = %aside.display(), "recovery debounce file not understood; starting without it");
            }
        }
        me
    }

    /// Whether `id`'s recovery ran less than `debounce` ago (older runs
    /// are forgotten).
    pub(crate) fn recent(&mut self, id: &AgentId, now: Instant, debounce: Duration) -> bool {
        self.last_run.retain(|_, t| now.duration_since(*t) < debounce);
        self.last_run.contains_key(id)
    }

    /// Records a recovery of `id` at `now`, and keeps it.
    pub(crate) fn ran(&mut self, id: AgentId, now: Instant) {
        self.last_run.insert(id, now);
        let Some(path) = &self.file else { return };
        if let Err(e) = state_file::write_whole(path, render(&self.last_run, now).as_bytes()) {
            tracing::warn!(path = %path.display(), "recovery debounce not kept (a restart may run this recovery again within debounce): {e}");
        }
    }
}

fn render(runs: &HashMap<AgentId, Instant>, now: Instant) -> String {
    let boot_now = boottime_ns();
    let mut out = format!("{HEADER}\nboot {}\n", hex(&boot_id()));
    for (id, at) in runs {
        let at = boot_now.saturating_sub(now.duration_since(*at).as_nanos() as u64);
        let _ = writeln!(out, "{}\t{}\t{}\t{at}", id.source, id.pid, id.start_time);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The runs of a file written in boot `boot` (none for another boot);
/// `None` if it does not parse.
fn parse(text: &str, boot: [u8; 16]) -> Option<Vec<(AgentId, u64)>> {
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let written_in = lines.next()?.strip_prefix("boot ")?;
    let mut runs = Vec::new();
    for line in lines {
        let mut f = line.split('\t');
        let source = match f.next()? {
            "local" => Source::Local,
            ip => Source::Ip(ip.parse().ok()?),
        };
        let (pid, start_time, at) =
            (f.next()?.parse().ok()?, f.next()?.parse().ok()?, f.next()?.parse().ok()?);
        if f.next().is_some() {
            return None;
        }
        runs.push((AgentId { source, pid, start_time }, at));
    }
    Some(if written_in == hex(&boot) { runs } else { Vec::new() })
}

/// `<dir>/<pipeline>.recovery`.
pub fn file_in(dir: &Path, pipeline: &str) -> PathBuf {
    let name: String = pipeline
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
        .collect();
    dir.join(format!("{name}.recovery"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(pid: u32) -> AgentId {
        AgentId { source: Source::Local, pid, start_time: 77 }
    }

    #[test]
    fn runs_survive_a_new_runner_within_debounce_only() {
        let dir = std::env::temp_dir().join(format!("varta-debounce-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = file_in(&dir, "live/ness");
        assert_eq!(file, dir.join("live_ness.recovery"));
        let long = Duration::from_secs(3600);
        let mut first = Debounce::load(Some(file.clone()), long);
        let now = Instant::now();
        assert!(!first.recent(&id(1), now, long));
        first.ran(id(1), now);
        let remote = AgentId { source: Source::Ip("10.1.2.3".parse().expect("ip")), pid: 9, start_time: 0 };
        first.ran(remote, now);
        // A new runner (a restart, a reload) on the same file.
        let mut second = Debounce::load(Some(file.clone()), long);
        assert!(second.recent(&id(1), Instant::now(), long), "kept across");
        assert!(second.recent(&remote, Instant::now(), long));
        assert!(!second.recent(&id(2), Instant::now(), long));
        // With a debounce already over, nothing comes back.
        let mut third = Debounce::load(Some(file.clone()), Duration::from_nanos(1));
        assert!(!third.recent(&id(1), Instant::now(), long));
        // Another boot's file: ignored, not set aside.
        let other = std::fs::read_to_string(&file).expect("file").replace("boot ", "boot ff");
        std::fs::write(&file, other).expect("write");
        let mut fourth = Debounce::load(Some(file.clone()), long);
        assert!(!fourth.recent(&id(1), Instant::now(), long));
        assert!(file.exists());
        // Garbage: set aside, recovery goes on without it.
        std::fs::write(&file, "not a debounce file").expect("write");
        let mut fifth = Debounce::load(Some(file.clone()), long);
        assert!(!fifth.recent(&id(1), Instant::now(), long));
        assert!(dir.join("live_ness.recovery.set-aside").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
