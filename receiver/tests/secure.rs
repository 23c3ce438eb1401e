//! Secure UDP over loopback: frames sealed in the test with `FrameCipher`.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;

use common::{Running, TempDir, yaml};
use varta_proto::frame::DecodeErrorKind;
use varta_proto::{FRAME_LEN, Frame, FrameCipher, Iv, Key, MasterKey, Refusal, Source, Status, Transport};
use varta_receiver::VlpReceiver;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const K1: [u8; 32] = [0x11; 32];
const K2: [u8; 32] = [0x22; 32];
const KM: [u8; 32] = [0x33; 32];

fn key_file(d: &TempDir, name: &str, bytes: &[u8; 32]) -> PathBuf {
    let p = d.join(name);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&p, format!("{hex}\n")).expect("write key");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}

struct Setup {
    _dir: TempDir,
    run: Running,
    addr: SocketAddr,
    tx: UdpSocket,
}

impl Setup {
    fn new(extra: &str) -> Setup {
        let d = TempDir::new("secure");
        let k1 = key_file(&d, "k1", &K1);
        let k2 = key_file(&d, "k2", &K2);
        let km = key_file(&d, "km", &KM);
        let cfg = yaml(&format!(
            "transport: secure_udp\nendpoint: 127.0.0.1:0\nkey_files: [{}, {}]\nmaster_key_file: {}\n{extra}",
            k1.display(),
            k2.display(),
            km.display()
        ));
        let r = VlpReceiver::bind("vlp/secure", &cfg).expect("bind secure");
        let desc = r.describe();
        assert!(desc.contains("2 shared key(s)") && desc.contains("master key"), "{desc}");
        let addr = r.local_addr().expect("address");
        Setup { _dir: d, run: Running::start(r), addr, tx: UdpSocket::bind("127.0.0.1:0").expect("client") }
    }

    fn send(&self, wire: &[u8]) {
        self.tx.send_to(wire, self.addr).expect("send");
    }
}

fn plain(pid: u32, nonce: u64) -> [u8; FRAME_LEN] {
    Frame::new(Status::Ok, pid, 1000 + nonce, nonce, 0).encode()
}

fn iv(random: u8, counter: u32) -> Iv {
    Iv { random: [random; 8], counter }
}

fn shared(key: [u8; 32]) -> FrameCipher {
    FrameCipher::new(&Key::from_bytes(key))
}

#[test]
fn shared_key_round_trip_replay_rotation_and_restart() {
    let mut s = Setup::new("");
    let c1 = shared(K1);
    let f1 = c1.seal_shared(iv(1, 0), &plain(4242, 1));
    s.send(&f1);
    let b = s.run.next_beat();
    assert_eq!((b.transport, b.source, b.host_pid), (Transport::SecureShared, Source::Ip(LOOPBACK), 4242));

    // The second (rotation) key opens too.
    s.send(&shared(K2).seal_shared(iv(1, 1), &plain(4242, 2)));
    assert_eq!(s.run.next_beat().frame.nonce, 2);

    // Wrong key, tampered byte.
    s.send(&shared([0x99; 32]).seal_shared(iv(1, 2), &plain(4242, 3)));
    s.run.expect_refusal(Refusal::DecryptFailed);
    let mut t = c1.seal_shared(iv(1, 2), &plain(4242, 3));
    t[20] ^= 0x01;
    s.send(&t);
    s.run.expect_refusal(Refusal::DecryptFailed);

    // Exact replay; older counter under the current iv_random.
    s.send(&f1);
    assert_eq!(s.run.expect_refusal(Refusal::Replay).claimed_pid, 4242);
    let f5 = c1.seal_shared(iv(1, 5), &plain(4242, 5));
    s.send(&f5);
    s.run.next_beat();
    s.send(&c1.seal_shared(iv(1, 4), &plain(4242, 6)));
    s.run.expect_refusal(Refusal::Replay);

    // Rotation to a new iv_random with a higher nonce; a recorded frame of
    // the old session is still a replay (its session is remembered).
    s.send(&c1.seal_shared(iv(2, 0), &plain(4242, 7)));
    assert_eq!(s.run.next_beat().frame.nonce, 7);
    s.send(&f5);
    s.run.expect_refusal(Refusal::Replay);

    // Restart: fresh iv_random, nonce 1 again — accepted and counted.
    s.send(&c1.seal_shared(iv(3, 0), &plain(4242, 1)));
    assert_eq!(s.run.next_beat().frame.nonce, 1);
    let st = s.run.stats.clone();
    assert_eq!(st.sessions_restarted.load(Relaxed), 1);
    assert_eq!(st.refusal(Refusal::DecryptFailed), 2);
    assert_eq!(st.refusal(Refusal::Replay), 3);

    // A plain frame on the secure port is the wrong length.
    s.send(&plain(4242, 9));
    s.run.expect_refusal(Refusal::Decode(DecodeErrorKind::BadLength));
}

#[test]
fn master_key_frames_for_two_pids_and_pid_binding() {
    let mut s = Setup::new("");
    let master = MasterKey::new(Key::from_bytes(KM));
    for pid in [2u32, 31337] {
        let c = FrameCipher::new(&master.agent_key(pid));
        for n in 1..=2u64 {
            s.send(&c.seal_master(pid, iv(7, n as u32), &plain(pid, n)));
            let b = s.run.next_beat();
            assert_eq!((b.transport, b.host_pid, b.frame.nonce), (Transport::SecureMaster, pid, n));
        }
    }
    // Sealed under pid 2's key and labelled 2, but the frame inside says 5.
    let c2 = FrameCipher::new(&master.agent_key(2));
    s.send(&c2.seal_master(2, iv(8, 0), &plain(5, 9)));
    assert_eq!(s.run.expect_refusal(Refusal::PidMismatch).claimed_pid, 2);
    // Relabelled wire pid: wrong key for that pid → decrypt failure.
    let mut w = c2.seal_master(2, iv(8, 1), &plain(2, 10));
    w[0] = 9;
    s.send(&w);
    assert_eq!(s.run.expect_refusal(Refusal::DecryptFailed).claimed_pid, 9);
    // Replay of a master frame.
    s.send(&c2.seal_master(2, iv(7, 1), &plain(2, 1)));
    s.run.expect_refusal(Refusal::Replay);
}

#[test]
fn sender_table_full_of_live_senders_refuses() {
    let mut s = Setup::new("max_senders: 2\nsender_idle_timeout: 10m\n");
    let master = MasterKey::new(Key::from_bytes(KM));
    for pid in [10u32, 11] {
        s.send(&FrameCipher::new(&master.agent_key(pid)).seal_master(pid, iv(1, 0), &plain(pid, 1)));
        s.run.next_beat();
    }
    s.send(&FrameCipher::new(&master.agent_key(12)).seal_master(12, iv(1, 0), &plain(12, 1)));
    assert_eq!(s.run.expect_refusal(Refusal::SenderTableFull).claimed_pid, 12);
    // Known senders still get through.
    s.send(&FrameCipher::new(&master.agent_key(10)).seal_master(10, iv(1, 1), &plain(10, 2)));
    assert_eq!(s.run.next_beat().host_pid, 10);
    assert_eq!(s.run.stats.refusal(Refusal::SenderTableFull), 1);
}

#[test]
fn bad_key_file_fails_bind_naming_the_rule() {
    let d = TempDir::new("badkey");
    let k = key_file(&d, "k", &K1);
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let cfg = yaml(&format!("transport: secure_udp\nendpoint: 127.0.0.1:0\nkey_files: [{}]\n", k.display()));
    let e = VlpReceiver::bind("vlp/s", &cfg).expect_err("0644 key").to_string();
    assert!(e.contains("owner-only") && e.contains(&k.display().to_string()), "{e}");
}

/// The reported lock-out: an agent beat in an earlier session; the
/// collector restarts (a fresh receiver, empty replay state); someone sends
/// one captured frame of that earlier session; the live agent goes on
/// beating under its new session. Every live frame is accepted (no false
/// stall); the captured frame counts once and is refused when sent again.
#[test]
fn a_replayed_frame_of_an_earlier_session_never_locks_the_live_agent_out() {
    let c = shared(K1);
    let captured = c.seal_shared(iv(7, 900), &plain(4242, 900));
    let mut s = Setup::new("");
    let live = |k: u32| c.seal_shared(iv(8, k), &plain(4242, 1 + u64::from(k)));
    for k in 0..3 {
        s.send(&live(k));
        s.run.next_beat();
    }
    s.send(&captured);
    assert_eq!(s.run.next_beat().frame.nonce, 900, "a replay is at most one counted beat");
    for k in 3..58u32 {
        s.send(&live(k));
        assert_eq!(s.run.next_beat().frame.nonce, 1 + u64::from(k), "live frame {k}");
    }
    s.send(&captured);
    s.run.expect_refusal(Refusal::Replay);
    assert_eq!(s.run.stats.refusal(Refusal::Replay), 1, "only the replay was refused");
}
