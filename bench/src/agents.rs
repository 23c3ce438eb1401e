//! The simulated agents and the next frame each one sends.
//!
//! Every agent has its own pid, a strictly increasing VLP nonce (starting
//! at 1) and, on secure transports, its own `iv_random` with a counter that
//! starts at 0 and increases by one per frame, so the collector's replay
//! protection accepts every frame. `(key, iv_random, iv_counter)` is never
//! reused: `iv_random` is a fresh random base per run plus the agent index,
//! and it is rotated before the counter would wrap.

use varta_proto::{
    FRAME_LEN, Frame, FrameCipher, Iv, Key, MASTER_FRAME_LEN, MasterKey, SHARED_FRAME_LEN, Status,
};

/// How frames are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Unix datagram socket; the kernel attests the sender pid, so every
    /// agent is a real process (one forked worker per agent).
    Uds,
    /// Plain UDP: any pid may be claimed, so one process simulates many agents.
    Udp,
    /// Secure UDP, one shared key (60-byte frames).
    SecureShared,
    /// Secure UDP, per-agent keys derived from a master key (64-byte frames).
    SecureMaster,
}

impl Transport {
    /// Parses the `--transport` value.
    pub fn parse(s: &str) -> Result<Transport, String> {
        match s {
            "uds" => Ok(Transport::Uds),
            "udp" => Ok(Transport::Udp),
            "secure-shared" => Ok(Transport::SecureShared),
            "secure-master" => Ok(Transport::SecureMaster),
            other => Err(format!("unknown transport `{other}` (uds, udp, secure-shared, secure-master)")),
        }
    }

    /// Bytes per datagram.
    pub const fn frame_len(self) -> usize {
        match self {
            Transport::Uds | Transport::Udp => FRAME_LEN,
            Transport::SecureShared => SHARED_FRAME_LEN,
            Transport::SecureMaster => MASTER_FRAME_LEN,
        }
    }
}

/// The largest datagram any transport sends.
pub const MAX_FRAME_LEN: usize = MASTER_FRAME_LEN;

enum Sealing {
    Plain,
    Shared(FrameCipher),
    /// One cipher per agent (index-aligned with the pids).
    Master(Vec<FrameCipher>),
}

/// A set of agents with their protocol state.
pub struct Agents {
    pids: Vec<u32>,
    nonces: Vec<u64>,
    iv_random: Vec<u64>,
    iv_counter: Vec<u32>,
    sealing: Sealing,
    frame_len: usize,
    /// Agents chosen to fall silent at the stop time.
    pub stop: Vec<bool>,
    /// CLOCK_MONOTONIC ns just before the `sendmmsg` call that carried each
    /// agent's last accepted frame (0 = never sent).
    pub last_sent_ns: Vec<u64>,
    /// The nonce of that frame (matches the collector's beat line).
    pub last_sent_nonce: Vec<u64>,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agents").field("count", &self.pids.len()).field("frame_len", &self.frame_len).finish()
    }
}

impl Agents {
    /// Builds agents with the given pids. `key` is the shared key or the
    /// master key on secure transports (ignored otherwise).
    pub fn new(
        transport: Transport,
        pids: Vec<u32>,
        key: Option<&Key>,
        stop: Vec<bool>,
        iv_base: u64,
    ) -> Result<Agents, String> {
        let sealing = match transport {
            Transport::Uds | Transport::Udp => Sealing::Plain,
            Transport::SecureShared => {
                Sealing::Shared(FrameCipher::new(key.ok_or("secure-shared needs --key-file")?))
            }
            Transport::SecureMaster => {
                let master = key.ok_or("secure-master needs --key-file (the master key)")?;
                let master = MasterKey::new(Key::from_bytes(*master.expose_bytes()));
                Sealing::Master(pids.iter().map(|&pid| FrameCipher::new(&master.agent_key(pid))).collect())
            }
        };
        if stop.len() != pids.len() {
            return Err("internal: stop mask and pid list differ in length".into());
        }
        let n = pids.len();
        Ok(Agents {
            nonces: vec![0; n],
            iv_random: (0..n as u64)
                .map(|i| iv_base.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
                .collect(),
            iv_counter: vec![0; n],
            last_sent_ns: vec![0; n],
            last_sent_nonce: vec![0; n],
            pids,
            sealing,
            frame_len: transport.frame_len(),
            stop,
        })
    }

    pub fn len(&self) -> usize {
        self.pids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.pids[i]
    }

    /// The nonce of agent `i`'s most recently encoded frame.
    pub fn nonce(&self, i: usize) -> u64 {
        self.nonces[i]
    }

    /// Bytes per frame on this transport.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// Writes agent `i`'s next frame into `out` (at least [`Self::frame_len`]
    /// bytes) and advances its nonce and IV counter.
    pub fn encode_next(&mut self, i: usize, timestamp_ns: u64, out: &mut [u8]) {
        let nonce = self.nonces[i].wrapping_add(1).max(1);
        self.nonces[i] = nonce;
        let plain = Frame::new(Status::Ok, self.pids[i], timestamp_ns, nonce, 0).encode();
        let iv = Iv { random: self.iv_random[i].to_le_bytes(), counter: self.iv_counter[i] };
        match &self.sealing {
            Sealing::Plain => {
                out[..FRAME_LEN].copy_from_slice(&plain);
                return;
            }
            Sealing::Shared(cipher) => {
                out[..SHARED_FRAME_LEN].copy_from_slice(&cipher.seal_shared(iv, &plain))
            }
            Sealing::Master(ciphers) => {
                out[..MASTER_FRAME_LEN].copy_from_slice(&ciphers[i].seal_master(self.pids[i], iv, &plain))
            }
        }
        self.advance_iv(i);
    }

    fn advance_iv(&mut self, i: usize) {
        if self.iv_counter[i] == u32::MAX {
            // Rotate before the counter wraps: a new iv_random, counter from 0.
            self.iv_random[i] = self.iv_random[i].wrapping_add(0xD1B5_4A32_D192_ED03);
            self.iv_counter[i] = 0;
        } else {
            self.iv_counter[i] += 1;
        }
    }
}

/// Chooses `floor(n × fraction)` agents spread evenly over `0..n`.
pub fn select_stopped(n: usize, fraction: f64) -> Vec<bool> {
    let f = fraction.clamp(0.0, 1.0);
    (0..n).map(|i| ((i + 1) as f64 * f).floor() > (i as f64 * f).floor()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_selection_is_even_and_exact() {
        let s = select_stopped(4096, 0.1);
        assert_eq!(s.iter().filter(|&&b| b).count(), 409);
        assert!(s[9] && !s[0] && !s[8]);
        assert_eq!(select_stopped(10, 0.0).iter().filter(|&&b| b).count(), 0);
        assert_eq!(select_stopped(10, 1.0).iter().filter(|&&b| b).count(), 10);
    }

    #[test]
    fn frames_decode_and_nonces_increase() {
        let mut a = Agents::new(Transport::Udp, vec![1000, 1001], None, vec![false; 2], 7).unwrap();
        let mut buf = [0u8; MAX_FRAME_LEN];
        a.encode_next(1, 5, &mut buf);
        a.encode_next(1, 6, &mut buf);
        let f = Frame::decode(&buf[..FRAME_LEN]).unwrap();
        assert_eq!((f.pid, f.nonce, f.timestamp), (1001, 2, 6));
    }

    #[test]
    fn secure_frames_open_with_the_right_keys() {
        let key = Key::from_bytes([7; 32]);
        let mut a = Agents::new(Transport::SecureShared, vec![1000], Some(&key), vec![false], 1).unwrap();
        let mut buf = [0u8; MAX_FRAME_LEN];
        a.encode_next(0, 5, &mut buf);
        let (iv, f) = FrameCipher::new(&key).open_shared(&buf[..SHARED_FRAME_LEN]).unwrap();
        assert_eq!((iv.counter, f.pid, f.nonce), (0, 1000, 1));

        let mut m = Agents::new(Transport::SecureMaster, vec![4242], Some(&key), vec![false], 1).unwrap();
        m.encode_next(0, 5, &mut buf);
        m.encode_next(0, 6, &mut buf);
        let agent_key = MasterKey::new(Key::from_bytes([7; 32])).agent_key(4242);
        let (iv, f) = FrameCipher::new(&agent_key).open_master(&buf[..MASTER_FRAME_LEN]).unwrap();
        assert_eq!((iv.counter, f.pid, f.nonce), (1, 4242, 2));
    }
}
