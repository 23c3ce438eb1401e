//! Replay protection for secure UDP (VLP v0.2 §2, "Replay protection").
//!
//! A *sender* is (source IP, authenticated pid, key kind): the same pid on
//! two hosts is two senders, and a shared-key holder cannot disturb the
//! state of a master-key sender with the same pid. Per sender we keep up to
//! [`SESSIONS`] *sessions* (one per `iv_random`), each with its own
//! high-water marks:
//!
//! * the last accepted `iv_counter` — only strictly greater counters are
//!   accepted under that `iv_random`;
//! * the last regular VLP nonce — a frame must exceed it (a wrap from near
//!   `u64::MAX` to a small value is accepted); a panic frame
//!   (NONCE_TERMINAL) is accepted once per session.
//!
//! A never-seen `iv_random` starts a new session (an agent that rotated its
//! IV, or restarted with the same pid — containers do this all the time);
//! when its nonce is not above that of the sender's most recent session it
//! is reported as [`Admitted::restarted`]. When a sender already has
//! [`SESSIONS`] sessions, the one heard from least recently is *retired*:
//! its `iv_random` and last `iv_counter` go into a ring of the sender's
//! [`RETIRED`] most recently retired sessions, as the reference asks ("keep
//! enough history that an old `iv_random` cannot be replayed after a
//! rotation").
//!
//! **What a replay can and cannot achieve.** Replaying a recorded datagram
//! of a session still remembered *or retired* is refused (`replay`): a
//! retired session takes only counters above its last one. So a recorded
//! session replays only when it is older than the sender's last
//! `SESSIONS + RETIRED` sessions (or was recorded before the collector
//! restarted: this state lives in memory). It can never make the live
//! session's frames refused: sessions never judge each other's counters or
//! nonces, and a retired session is remembered with its counter, not
//! banned — were the live session pushed out by a burst of replays, its
//! next genuine frame (a higher counter) brings it back. (A design before
//! this one moved the live session aside when an unknown `iv_random`
//! arrived and refused it from then on: one replayed datagram after a
//! collector restart silenced a live agent; the one after it forgot pushed
//! out sessions entirely, so a session pushed out by four newer ones
//! replayed in full.)
//!
//! **Bounds.** At most `max_senders` senders. The table starts at
//! [`INITIAL_SENDERS`] and grows (only when a new sender arrives) up to the
//! bound, so a few thousand senders stay cache-resident instead of being
//! spread over a table sized for the worst case. A new sender arriving at a full table triggers a sweep that
//! evicts every sender idle for longer than `idle_timeout`; sweeps run at
//! most once per `min(idle_timeout, 1 s)`, so a flood of new senders costs
//! O(1) per frame. If no room is made, the frame is refused as
//! `SenderTableFull` (fail closed) — live senders are never forgotten.
//! Accepting or refusing a frame of a known sender never allocates.

use std::net::IpAddr;
use std::time::Duration;

use hashbrown::HashMap;
use varta_proto::{Frame, Iv, Refusal};

/// Senders the table has room for before its first growth.
pub const INITIAL_SENDERS: usize = 1024;
/// Sessions (`iv_random`s) remembered per sender.
pub const SESSIONS: usize = 4;
/// Retired sessions (`iv_random` and last counter) remembered per sender
/// beyond those (12 bytes each).
pub const RETIRED: usize = 8;
/// Longest interval between two sweeps of a full table.
const MAX_SWEEP_INTERVAL_NS: u64 = 1_000_000_000;

/// Who sent a secure frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SenderId {
    pub ip: IpAddr,
    pub pid: u32,
    /// Master-key frame (per-pid key) rather than shared-key.
    pub master: bool,
}

/// An accepted frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Admitted {
    /// A new session under a known pid (fresh `iv_random`, nonce not above
    /// that of the sender's most recent session).
    pub restarted: bool,
    /// Idle senders evicted to make room for this one.
    pub evicted: usize,
}

/// One `iv_random` of a sender and its high-water marks.
#[derive(Debug, Clone, Copy, Default)]
struct Session {
    iv_random: [u8; 8],
    iv_counter: u32,
    nonce_high: u64,
    terminal_seen: bool,
    last_seen_ns: u64,
}

/// `nonce` is after `high` in a sender's sequence (the protocol's one rule).
fn nonce_after(nonce: u64, high: u64) -> bool {
    varta_proto::nonce_follows(high, nonce)
}

impl Session {
    fn start(iv: Iv, frame: &Frame, now: u64) -> Session {
        let mut s = Session { iv_random: iv.random, ..Session::default() };
        s.record(iv, frame, now);
        s
    }

    fn fresh(&self, iv: Iv, frame: &Frame) -> bool {
        iv.counter > self.iv_counter
            && if frame.is_panic() { !self.terminal_seen } else { nonce_after(frame.nonce, self.nonce_high) }
    }

    fn record(&mut self, iv: Iv, frame: &Frame, now: u64) {
        self.iv_counter = iv.counter;
        if frame.is_panic() {
            self.terminal_seen = true;
        } else {
            self.nonce_high = frame.nonce;
        }
        self.last_seen_ns = now;
    }
}

#[derive(Debug, Clone)]
struct SenderState {
    sessions: [Session; SESSIONS],
    len: usize,
    /// Retired sessions, oldest first: `(iv_random, last iv_counter)`.
    retired: [([u8; 8], u32); RETIRED],
    retired_len: u8,
}

impl SenderState {
    fn new(iv: Iv, frame: &Frame, now: u64) -> SenderState {
        let mut sessions = [Session::default(); SESSIONS];
        sessions[0] = Session::start(iv, frame, now);
        SenderState { sessions, len: 1, retired: [([0; 8], 0); RETIRED], retired_len: 0 }
    }

    /// Remembers a session pushed out of the live set (the oldest retired
    /// one is forgotten when the ring is full).
    fn retire(&mut self, s: Session) {
        let len = usize::from(self.retired_len);
        if len == RETIRED {
            self.retired.copy_within(1.., 0);
            self.retired[RETIRED - 1] = (s.iv_random, s.iv_counter);
        } else {
            self.retired[len] = (s.iv_random, s.iv_counter);
            self.retired_len += 1;
        }
    }

    /// Takes a retired session out of the ring (it is live again).
    fn unretire(&mut self, at: usize) {
        let len = usize::from(self.retired_len);
        self.retired.copy_within(at + 1..len, at);
        self.retired_len -= 1;
    }

    fn last_seen_ns(&self) -> u64 {
        self.sessions[..self.len].iter().map(|s| s.last_seen_ns).max().unwrap_or(0)
    }

    fn admit(&mut self, iv: Iv, frame: &Frame, now: u64) -> Result<bool, Refusal> {
        let live = &mut self.sessions[..self.len];
        if let Some(s) = live.iter_mut().find(|s| s.iv_random == iv.random) {
            if !s.fresh(iv, frame) {
                return Err(Refusal::Replay);
            }
            s.record(iv, frame, now);
            return Ok(false);
        }
        // A retired session comes back only with a counter above its last:
        // the live agent pushed out by replays, never a recording.
        let retired = self.retired[..usize::from(self.retired_len)].iter().position(|(r, _)| *r == iv.random);
        if let Some(at) = retired {
            if iv.counter <= self.retired[at].1 {
                return Err(Refusal::Replay);
            }
            self.unretire(at);
        }
        let live = &self.sessions[..self.len];
        // A new session: a rotation (nonce continues) or a restart (nonce
        // starts over), judged against the most recent session only.
        let newest = live.iter().max_by_key(|s| s.last_seen_ns).copied().unwrap_or_default();
        let restarted = !frame.is_panic() && !nonce_after(frame.nonce, newest.nonce_high);
        let slot = if self.len < SESSIONS {
            self.len += 1;
            self.len - 1
        } else {
            // Full: retire the session heard from least recently.
            let oldest = (0..SESSIONS).min_by_key(|&i| self.sessions[i].last_seen_ns).unwrap_or(0);
            self.retire(self.sessions[oldest]);
            oldest
        };
        self.sessions[slot] = Session::start(iv, frame, now);
        Ok(restarted)
    }
}

/// The bounded per-sender replay state of one secure receiver.
#[derive(Debug)]
pub struct ReplayTable {
    senders: HashMap<SenderId, SenderState>,
    max_senders: usize,
    /// Senders one source address may hold at most (`max_senders_per_source`),
    /// so one key holder's fake pids never lock every new sender out.
    max_per_source: usize,
    /// Senders per source address (only addresses with one).
    per_source: HashMap<IpAddr, usize>,
    idle_ns: u64,
    sweep_interval_ns: u64,
    next_sweep_ns: u64,
    /// Something was admitted since the last [`ReplayTable::save`].
    changed: bool,
}

impl ReplayTable {
    pub fn new(max_senders: usize, idle_timeout: Duration) -> ReplayTable {
        let max_senders = max_senders.max(1);
        let idle_ns = u64::try_from(idle_timeout.as_nanos()).unwrap_or(u64::MAX).max(1);
        ReplayTable {
            senders: HashMap::with_capacity(max_senders.min(INITIAL_SENDERS)),
            max_senders,
            max_per_source: max_senders,
            per_source: HashMap::new(),
            idle_ns,
            sweep_interval_ns: idle_ns.min(MAX_SWEEP_INTERVAL_NS),
            next_sweep_ns: 0,
            changed: false,
        }
    }

    /// At most `max` senders from one source address (default: no bound
    /// below `max_senders`).
    pub fn with_max_per_source(mut self, max: usize) -> ReplayTable {
        self.max_per_source = max.max(1);
        self
    }

    pub fn len(&self) -> usize {
        self.senders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Decides whether an authenticated frame is fresh for its sender, and
    /// records it if so. `now` is the receiver's monotonic clock (ns).
    pub fn admit(&mut self, id: SenderId, iv: Iv, frame: &Frame, now: u64) -> Result<Admitted, Refusal> {
        if let Some(s) = self.senders.get_mut(&id) {
            let admitted = s.admit(iv, frame, now).map(|restarted| Admitted { restarted, evicted: 0 });
            self.changed |= admitted.is_ok();
            return admitted;
        }
        let mut evicted = 0;
        if self.senders.len() >= self.max_senders {
            evicted = self.sweep(now);
            if self.senders.len() >= self.max_senders {
                return Err(Refusal::SenderTableFull);
            }
        }
        if self.per_source.get(&id.ip).is_some_and(|&n| n >= self.max_per_source) {
            evicted += self.sweep(now);
            if self.per_source.get(&id.ip).is_some_and(|&n| n >= self.max_per_source) {
                // Its own share is full: other sources keep theirs.
                return Err(Refusal::SenderTableFull);
            }
        }
        self.insert(id, SenderState::new(iv, frame, now));
        Ok(Admitted { restarted: false, evicted })
    }

    fn insert(&mut self, id: SenderId, state: SenderState) {
        self.senders.insert(id, state);
        *self.per_source.entry(id.ip).or_insert(0) += 1;
        self.changed = true;
    }

    /// Whether anything was admitted since the last [`ReplayTable::save`].
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Every sender's sessions and retired `iv_random`s, as bytes
    /// [`ReplayTable::restore`] reads (see [`crate::sessions`] for the file
    /// around them). Times are not kept: a session's place among its
    /// sender's (which one is retired next) is.
    pub fn save(&mut self) -> Vec<u8> {
        self.changed = false;
        let mut out = Vec::with_capacity(4 + self.senders.len() * 64);
        out.extend_from_slice(&(self.senders.len() as u32).to_le_bytes());
        for (id, s) in &self.senders {
            let ip = match id.ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.extend_from_slice(&ip.octets());
            out.push(u8::from(id.ip.is_ipv4()));
            out.extend_from_slice(&id.pid.to_le_bytes());
            out.push(u8::from(id.master));
            let mut live: Vec<&Session> = s.sessions[..s.len].iter().collect();
            live.sort_by_key(|s| s.last_seen_ns);
            out.push(live.len() as u8);
            out.push(s.retired_len);
            for session in live {
                out.extend_from_slice(&session.iv_random);
                out.extend_from_slice(&session.iv_counter.to_le_bytes());
                out.extend_from_slice(&session.nonce_high.to_le_bytes());
                out.push(u8::from(session.terminal_seen));
            }
            for (random, counter) in &s.retired[..usize::from(s.retired_len)] {
                out.extend_from_slice(random);
                out.extend_from_slice(&counter.to_le_bytes());
            }
        }
        out
    }

    /// Takes back senders [`ReplayTable::save`] wrote, as heard from at
    /// `now` (their idle time starts over). Senders beyond `max_senders`
    /// (or their source's share) are left out. `Err`: the bytes are not
    /// such a table (nothing is taken then). `Ok((taken, left_out))`.
    pub fn restore(&mut self, bytes: &[u8], now: u64) -> Result<(usize, usize), &'static str> {
        let senders = parse_saved(bytes, now).ok_or("not a saved sender table")?;
        let (mut taken, mut left_out) = (0, 0);
        for (id, state) in senders {
            let full = self.senders.len() >= self.max_senders
                || self.per_source.get(&id.ip).is_some_and(|&n| n >= self.max_per_source);
            if full || self.senders.contains_key(&id) {
                left_out += 1;
                continue;
            }
            self.insert(id, state);
            taken += 1;
        }
        Ok((taken, left_out))
    }

    /// Evicts idle senders (at most once per sweep interval); how many.
    fn sweep(&mut self, now: u64) -> usize {
        if now < self.next_sweep_ns {
            return 0;
        }
        let before = self.senders.len();
        let idle_ns = self.idle_ns;
        let per_source = &mut self.per_source;
        self.senders.retain(|id, s| {
            let keep = now.saturating_sub(s.last_seen_ns()) <= idle_ns;
            if !keep && let Some(n) = per_source.get_mut(&id.ip) {
                *n -= 1;
                if *n == 0 {
                    per_source.remove(&id.ip);
                }
            }
            keep
        });
        self.next_sweep_ns = now.saturating_add(self.sweep_interval_ns);
        before - self.senders.len()
    }
}

/// Reads [`ReplayTable::save`]'s bytes; `None` if they are cut short,
/// too long or out of range.
fn parse_saved(bytes: &[u8], now: u64) -> Option<Vec<(SenderId, SenderState)>> {
    let mut r = Reader(bytes);
    let count = u32::from_le_bytes(r.take()?);
    let mut senders = Vec::with_capacity((count as usize).min(bytes.len() / 26));
    for _ in 0..count {
        let ip = std::net::Ipv6Addr::from(r.take::<16>()?);
        let v4 = r.take::<1>()?[0] == 1;
        let ip = match (v4, ip.to_ipv4_mapped()) {
            (true, Some(v4)) => IpAddr::V4(v4),
            (true, None) => return None,
            (false, _) => IpAddr::V6(ip),
        };
        let pid = u32::from_le_bytes(r.take()?);
        let master = r.take::<1>()?[0] == 1;
        let [live, retired] = r.take::<2>()?;
        let (live, retired) = (usize::from(live), usize::from(retired));
        if live == 0 || live > SESSIONS || retired > RETIRED {
            return None;
        }
        let mut state = SenderState {
            sessions: [Session::default(); SESSIONS],
            len: live,
            retired: [([0; 8], 0); RETIRED],
            retired_len: retired as u8,
        };
        for (k, s) in state.sessions[..live].iter_mut().enumerate() {
            *s = Session {
                iv_random: r.take()?,
                iv_counter: u32::from_le_bytes(r.take()?),
                nonce_high: u64::from_le_bytes(r.take()?),
                terminal_seen: r.take::<1>()?[0] == 1,
                // Oldest first: the order decides which one retires next.
                last_seen_ns: now.saturating_sub((live - 1 - k) as u64),
            };
        }
        for slot in &mut state.retired[..retired] {
            *slot = (r.take()?, u32::from_le_bytes(r.take()?));
        }
        senders.push((SenderId { ip, pid, master }, state));
    }
    r.0.is_empty().then_some(senders)
}

/// Fixed-size reads off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use varta_proto::{NONCE_TERMINAL, Status};

    const A: [u8; 8] = [1; 8];
    const B: [u8; 8] = [2; 8];
    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn id(pid: u32) -> SenderId {
        SenderId { ip: IP, pid, master: false }
    }

    fn frame(nonce: u64) -> Frame {
        Frame::new(Status::Ok, 42, 1, nonce, 0)
    }

    fn iv(random: [u8; 8], counter: u32) -> Iv {
        Iv { random, counter }
    }

    fn table() -> ReplayTable {
        ReplayTable::new(4, Duration::from_secs(10))
    }

    #[test]
    fn counters_and_nonces_must_increase() {
        let mut t = table();
        assert!(t.admit(id(42), iv(A, 0), &frame(1), 1).is_ok());
        assert_eq!(t.admit(id(42), iv(A, 0), &frame(1), 2), Err(Refusal::Replay));
        assert!(t.admit(id(42), iv(A, 1), &frame(2), 3).is_ok());
        assert!(t.admit(id(42), iv(A, 3), &frame(4), 3).is_ok());
        assert_eq!(t.admit(id(42), iv(A, 2), &frame(3), 4), Err(Refusal::Replay), "older counter");
        assert_eq!(t.admit(id(42), iv(A, 9), &frame(4), 4), Err(Refusal::Replay), "same nonce");
        // Other ip, other key kind: separate senders.
        let other = SenderId { ip: "10.0.0.1".parse().expect("ip"), ..id(42) };
        assert!(t.admit(other, iv(A, 0), &frame(1), 5).is_ok());
        assert!(t.admit(SenderId { master: true, ..id(42) }, iv(A, 0), &frame(1), 5).is_ok());
    }

    #[test]
    fn rotation_and_restart_start_sessions_and_old_frames_stay_refused() {
        let mut t = table();
        assert!(t.admit(id(42), iv(A, 5), &frame(10), 1).is_ok());
        assert_eq!(t.admit(id(42), iv(B, 0), &frame(11), 2), Ok(Admitted::default()), "rotation");
        assert_eq!(t.admit(id(42), iv(A, 5), &frame(10), 3), Err(Refusal::Replay), "A's frame again");
        let r = t.admit(id(42), iv([3; 8], 0), &frame(1), 4).expect("restart accepted");
        assert!(r.restarted);
        assert!(t.admit(id(42), iv([3; 8], 1), &frame(2), 5).is_ok());
        assert_eq!(t.admit(id(42), iv(B, 0), &frame(11), 6), Err(Refusal::Replay), "B's frame again");
    }

    /// The collector restarted (empty table); someone replays one frame of
    /// the agent's earlier session, then the live agent goes on beating:
    /// every live frame is accepted.
    #[test]
    fn a_replayed_old_session_never_gets_the_live_one_refused() {
        let mut t = table();
        let old = [9; 8];
        assert!(t.admit(id(42), iv(old, 700), &frame(700), 1).is_ok(), "the replay counts once");
        for k in 0..50u32 {
            let now = 2 + u64::from(k);
            assert!(
                t.admit(id(42), iv(A, 100 + k), &frame(100 + u64::from(k)), now).is_ok(),
                "live frame {k}"
            );
        }
        assert_eq!(t.admit(id(42), iv(old, 700), &frame(700), 60), Err(Refusal::Replay), "once only");
    }

    /// More old sessions than are remembered, replayed between two live
    /// beats: the live session may be forgotten, never refused.
    #[test]
    fn overflowing_the_sessions_forgets_the_live_one_but_never_refuses_it() {
        let mut t = table();
        assert!(t.admit(id(42), iv(A, 1), &frame(1), 1).is_ok());
        for k in 0..(SESSIONS as u8 + 2) {
            assert!(t.admit(id(42), iv([20 + k; 8], 0), &frame(1000), 2 + u64::from(k)).is_ok());
        }
        for k in 2..20u32 {
            assert!(t.admit(id(42), iv(A, k), &frame(u64::from(k)), 100 + u64::from(k)).is_ok(), "live {k}");
        }
    }

    /// A recorded session pushed out by four newer sessions of the same
    /// sender was accepted in full; it is retired with its counter now.
    #[test]
    fn a_session_pushed_out_of_the_remembered_set_cannot_be_replayed() {
        let mut t = table();
        let recorded = [(iv(A, 1), frame(1)), (iv(A, 2), frame(2)), (iv(A, 3), frame(3))];
        for (k, (i, f)) in recorded.iter().enumerate() {
            assert!(t.admit(id(42), *i, f, 1 + k as u64).is_ok());
        }
        // Four newer sessions (restarts or rotations) push A out.
        for k in 0..SESSIONS as u8 {
            assert!(t.admit(id(42), iv([30 + k; 8], 0), &frame(10), 10 + u64::from(k)).is_ok());
        }
        for (k, (i, f)) in recorded.iter().enumerate() {
            assert_eq!(t.admit(id(42), *i, f, 20 + k as u64), Err(Refusal::Replay), "recorded frame {k}");
        }
        // The retired ring is bounded: sessions older than SESSIONS + RETIRED replay.
        for k in 0..RETIRED as u8 {
            assert!(t.admit(id(42), iv([50 + k; 8], 0), &frame(10), 30 + u64::from(k)).is_ok());
        }
        assert!(t.admit(id(42), recorded[0].0, &recorded[0].1, 100).is_ok(), "beyond the bound");
    }

    #[test]
    fn the_retired_ring_stays_compact_when_sessions_come_back() {
        let mut t = table();
        // Sessions 0..12: 0..8 retire as 8..12 arrive.
        for k in 0..(SESSIONS + RETIRED) as u8 {
            assert!(t.admit(id(42), iv([k + 1; 8], 5), &frame(10), 1 + u64::from(k)).is_ok());
        }
        // Every retired one comes back with a higher counter (and retires another).
        for k in 0..RETIRED as u8 {
            assert!(t.admit(id(42), iv([k + 1; 8], 6), &frame(11), 100 + u64::from(k)).is_ok(), "{k}");
        }
        // Their old counters stay refused wherever they are now.
        for k in 0..(SESSIONS + RETIRED) as u8 {
            assert_eq!(t.admit(id(42), iv([k + 1; 8], 5), &frame(10), 200), Err(Refusal::Replay), "{k}");
        }
    }

    #[test]
    fn nonce_wrap_and_terminal_once() {
        let mut t = table();
        assert!(t.admit(id(42), iv(A, 0), &frame(u64::MAX - 1), 1).is_ok());
        assert!(t.admit(id(42), iv(A, 1), &frame(0), 2).is_ok(), "wrap");
        let panic = Frame::new(Status::Critical, 42, 2, NONCE_TERMINAL, 0);
        assert!(t.admit(id(42), iv(A, 2), &panic, 3).is_ok());
        assert_eq!(t.admit(id(42), iv(A, 3), &panic, 4), Err(Refusal::Replay));
        assert!(t.admit(id(42), iv(A, 4), &frame(1), 5).is_ok());
    }

    /// One key holder's fake pids fill only its own source's share: a
    /// sender from another address is still admitted.
    #[test]
    fn one_source_cannot_take_the_whole_sender_table() {
        let mut t = ReplayTable::new(100, Duration::from_secs(3600)).with_max_per_source(10);
        let flood = SenderId { ip: "10.0.0.9".parse().expect("ip"), pid: 0, master: false };
        let refused = (1..=50u32)
            .filter(|&pid| t.admit(SenderId { pid, ..flood }, iv(A, 0), &frame(1), 1).is_err())
            .count();
        assert_eq!(refused, 40, "ten admitted from that address, the rest refused");
        assert!(t.admit(id(42), iv(A, 0), &frame(1), 2).is_ok(), "another source is still admitted");
    }

    /// What a restart keeps: a frame of any remembered or retired session
    /// is still refused, the live sessions go on, a new one is admitted.
    #[test]
    fn a_saved_table_refuses_the_same_replays_after_restore() {
        let mut t = table();
        let v6 = SenderId { ip: "::1".parse().expect("ip"), pid: 7, master: true };
        assert!(t.admit(v6, iv(B, 3), &frame(3), 1).is_ok());
        for k in 0..(SESSIONS + 2) as u8 {
            assert!(t.admit(id(42), iv([k + 1; 8], 5), &frame(10 + u64::from(k)), 1 + u64::from(k)).is_ok());
        }
        let panic = Frame::new(Status::Critical, 42, 2, NONCE_TERMINAL, 0);
        assert!(t.admit(id(42), iv([6; 8], 6), &panic, 20).is_ok());
        assert!(t.changed());
        let saved = t.save();
        assert!(!t.changed());
        let mut back = table();
        assert_eq!(back.restore(&saved, 1_000), Ok((2, 0)));
        for k in 0..(SESSIONS + 2) as u8 {
            let replay = back.admit(id(42), iv([k + 1; 8], 5), &frame(10 + u64::from(k)), 1_001);
            assert_eq!(replay, Err(Refusal::Replay), "session {k}");
        }
        assert_eq!(back.admit(id(42), iv([6; 8], 7), &panic, 1_002), Err(Refusal::Replay), "terminal once");
        assert_eq!(back.admit(v6, iv(B, 3), &frame(3), 1_003), Err(Refusal::Replay));
        assert!(back.admit(v6, iv(B, 4), &frame(4), 1_004).is_ok(), "the live session goes on");
        assert!(back.admit(id(42), iv([9; 8], 0), &frame(1), 1_005).is_ok(), "a new session");
        // The oldest live session (k = 2) is the one the new session
        // retired: it comes back on its counter alone (live, its nonce
        // high-water mark of 12 would refuse nonce 5).
        assert!(back.admit(id(42), iv([3; 8], 6), &frame(5), 1_006).is_ok());
        // The same bytes again: every sender is already known.
        assert_eq!(back.restore(&saved, 2_000), Ok((0, 2)));
        // Cut short or with bytes left over: refused whole.
        assert!(table().restore(&saved[..saved.len() - 1], 1).is_err());
        assert!(table().restore(&[saved.as_slice(), &[0]].concat(), 1).is_err());
        assert_eq!(table().restore(&[], 1), Err("not a saved sender table"));
        // Room for one sender only: the other is left out, counted.
        assert_eq!(ReplayTable::new(1, Duration::from_secs(9)).restore(&saved, 1), Ok((1, 1)));
    }

    #[test]
    fn full_table_evicts_idle_or_refuses() {
        let mut t = ReplayTable::new(2, Duration::from_nanos(100));
        assert!(t.admit(id(2), iv(A, 0), &frame(1), 0).is_ok());
        assert!(t.admit(id(3), iv(A, 0), &frame(1), 50).is_ok());
        assert_eq!(t.admit(id(4), iv(A, 0), &frame(1), 60), Err(Refusal::SenderTableFull));
        // Known senders keep working while full.
        assert!(t.admit(id(3), iv(A, 1), &frame(2), 70).is_ok());
        // pid 2 idle for > 100 ns: evicted at the next sweep (sweeps are rate-limited).
        assert_eq!(t.admit(id(4), iv(A, 0), &frame(1), 150), Err(Refusal::SenderTableFull));
        assert_eq!(t.admit(id(4), iv(A, 0), &frame(1), 161), Ok(Admitted { restarted: false, evicted: 1 }));
        assert_eq!(t.len(), 2);
    }
}
