//! The `varta` binary, driven as a user would.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use varta_proto::crc::crc32c;
use varta_proto::hex::{decode_hex, encode_hex};
use varta_proto::{Frame, FrameCipher, Iv, MasterKey, Status};

fn varta(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_varta")).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

const WORKED_OK: &str = "56 41 02 00 02 00 00 00 00 00 00 00 00 00 00 00
                         01 00 00 00 00 00 00 00 00 00 00 00 e4 11 6b aa";
const WORKED_PANIC: &str = "56 41 02 02 02 00 00 00 e7 03 00 00 00 00 00 00
                            ff ff ff ff ff ff ff ff 00 00 00 00 a2 99 ee ed";
const WORKED_TS1000: &str = "5641020002000000e80300000000000001000000000000000000000055d0861c";
const SHARED_WIRE: &str = "1122334455667788 00000000
    bcba1b202190b688a08e0a7ac909da44a2023cb7a421fd6428453fd12141c257
    b6fd638c55fddf5c621020de1327975a";
const MASTER_WIRE: &str = "02000000 1122334455667788 00000000
    efe8fd8c226106641e01fc8fe649f79475e19b4f2093e063987f1c663a5d2f0b
    73ba429fadc4c494e2723baff86af9cc";

fn compact(hex: &str) -> String {
    hex.split_whitespace().collect()
}

fn write_key(dir: &Path, name: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, format!("  {}\n", encode_hex(&counting_key_bytes())).as_bytes())
        })
        .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn encode_reproduces_the_worked_frames() {
    for (args, want) in [
        (["ok", "2", "0", "1"], WORKED_OK),
        (["critical", "2", "999", "18446744073709551615"], WORKED_PANIC),
        (["ok", "2", "1000", "1"], WORKED_TS1000),
    ] {
        let [status, pid, ts, nonce] = args;
        let o = varta(&[
            "frame",
            "encode",
            "--status",
            status,
            "--pid",
            pid,
            "--timestamp",
            ts,
            "--nonce",
            nonce,
            "--payload",
            "0",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o), format!("{}\n", compact(want)));
    }
}

/// Runs `frame decode --json` and returns (exit code, parsed JSON).
fn decode_json(hex: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["frame", "decode", "--json"];
    args.extend_from_slice(extra);
    args.push(hex);
    let o = varta(&args);
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "exactly one JSON object: {out:?} / {}", stderr(&o));
    (o.status.code().unwrap(), serde_json::from_str(&out).unwrap())
}

#[test]
fn decode_json_of_the_worked_frame_is_exact() {
    let o = varta(&["frame", "decode", "--json", WORKED_OK]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), "{\"status\":\"ok\",\"pid\":2,\"timestamp\":0,\"nonce\":1,\"payload\":0}\n");

    // Full u64 range stays exact; the panic frame's nonce is u64::MAX.
    let (code, v) = decode_json(WORKED_PANIC, &[]);
    assert_eq!((code, v["status"].as_str(), v["nonce"].as_u64()), (0, Some("critical"), Some(u64::MAX)));
    let big =
        encode_hex(&Frame::new(Status::Degraded, u32::MAX, u64::MAX - 1, u64::MAX - 1, u32::MAX).encode());
    let (code, v) = decode_json(&big, &[]);
    assert_eq!(code, 0);
    assert_eq!(v["timestamp"].as_u64(), Some(u64::MAX - 1));
    assert_eq!(v["nonce"].as_u64(), Some(u64::MAX - 1));
    assert_eq!((v["pid"].as_u64(), v["payload"].as_u64()), (Some(u32::MAX as u64), Some(u32::MAX as u64)));
    assert_eq!(v["status"], "degraded");
}

fn reseal(mut b: [u8; 32]) -> String {
    let crc = crc32c(&b[..28]);
    b[28..].copy_from_slice(&crc.to_le_bytes());
    encode_hex(&b)
}

#[test]
fn decode_json_names_every_plain_error_kind() {
    let good = Frame::new(Status::Ok, 2, 0, 1, 0).encode();
    let with = |i: usize, v: u8| {
        let mut b = good;
        b[i] = v;
        b
    };
    let stall = stdout(&varta(&[
        "frame",
        "encode",
        "--status",
        "stall",
        "--pid",
        "2",
        "--timestamp",
        "0",
        "--nonce",
        "1",
    ]));
    let cases = [
        (encode_hex(&with(0, b'X')), "BadMagic"),
        (encode_hex(&with(2, 1)), "BadVersion"),
        (encode_hex(&with(24, 1)), "BadCrc"),
        (reseal(with(3, 4)), "BadStatus"),
        (stall.trim().to_string(), "StallOnWire"),
        (encode_hex(&Frame::new(Status::Ok, 1, 0, 1, 0).encode()), "BadPid"),
        (encode_hex(&Frame::new(Status::Ok, 2, u64::MAX, 1, 0).encode()), "BadTimestamp"),
        (encode_hex(&Frame::new(Status::Degraded, 2, 0, u64::MAX, 0).encode()), "BadNonce"),
        (encode_hex(&good[..31]), "BadLength"),
        (format!("{}00", encode_hex(&good)), "BadLength"),
        (format!("{}0", encode_hex(&good)), "BadLength"),
    ];
    for (hex, kind) in cases {
        assert_eq!(decode_json(&hex, &[]), (1, serde_json::json!({ "error": kind })), "{hex}");
    }
}

#[test]
fn decode_refuses_non_hex_as_a_usage_error() {
    let o = varta(&["frame", "decode", "--json", "56 41 zz"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not hexadecimal"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
}

#[test]
fn decode_table_is_readable() {
    let o = varta(&["frame", "decode", WORKED_PANIC]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(out.contains("status") && out.contains("critical") && out.contains("NONCE_TERMINAL"), "{out}");
    let o = varta(&["frame", "decode", &encode_hex(&Frame::new(Status::Ok, 0, 0, 1, 0).encode())]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("BadPid") && stderr(&o).contains("reserved pid 0"), "{}", stderr(&o));
}

#[test]
fn decode_opens_the_known_secure_frames_with_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let key = write_key(dir.path(), "shared.key", 0o600);
    let key = key.to_str().unwrap();
    let ts1000 = serde_json::json!({"status":"ok","pid":2,"timestamp":1000,"nonce":1,"payload":0});
    assert_eq!(decode_json(SHARED_WIRE, &["--key-file", key]), (0, ts1000.clone()));
    assert_eq!(decode_json(MASTER_WIRE, &["--master-key-file", key]), (0, ts1000));

    // Tampering → AuthFailed, never BadCrc.
    let mut wire = decode_hex(SHARED_WIRE).unwrap();
    wire[20] ^= 1;
    assert_eq!(
        decode_json(&encode_hex(&wire), &["--key-file", key]),
        (1, serde_json::json!({"error":"AuthFailed"}))
    );

    // Pid 5 sealed under pid 2's key and labelled 2 → PidMismatch.
    let agent = FrameCipher::new(&MasterKey::new(counting_key()).agent_key(2));
    let iv = Iv { random: [1; 8], counter: 0 };
    let wire = agent.seal_master(2, iv, &Frame::new(Status::Ok, 5, 1, 1, 0).encode());
    let r = decode_json(&encode_hex(&wire), &["--master-key-file", key]);
    assert_eq!(r, (1, serde_json::json!({"error":"PidMismatch"})));

    // A sealed frame whose plaintext is invalid reports the decode kind.
    let shared = FrameCipher::new(&counting_key());
    let wire = shared.seal_shared(iv, &Frame::new(Status::Ok, 2, 1, u64::MAX, 0).encode());
    assert_eq!(
        decode_json(&encode_hex(&wire), &["--key-file", key]),
        (1, serde_json::json!({"error":"BadNonce"}))
    );

    // A 60-byte frame without a key is a usage error.
    let o = varta(&["frame", "decode", "--json", SHARED_WIRE]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--key-file"));
}

#[test]
fn key_files_must_be_private_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let open = write_key(dir.path(), "open.key", 0o644);
    let o = varta(&["frame", "decode", "--key-file", open.to_str().unwrap(), SHARED_WIRE]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("mode 0644") && stderr(&o).contains("0600"), "{}", stderr(&o));

    let private = write_key(dir.path(), "private.key", 0o600);
    let link = dir.path().join("link.key");
    std::os::unix::fs::symlink(&private, &link).unwrap();
    let o = varta(&["frame", "decode", "--key-file", link.to_str().unwrap(), SHARED_WIRE]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("symlink"), "{}", stderr(&o));

    let garbage = dir.path().join("garbage.key");
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&garbage).unwrap();
    std::fs::write(&garbage, "not a key\n").unwrap();
    let o = varta(&["beat", "--secure-udp", "127.0.0.1:9", "--key-file", garbage.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("must contain exactly 64 hex characters"), "{}", stderr(&o));
}

#[test]
fn beat_to_a_real_socket() {
    let c = UdsCollector::bind();
    let path = c.path.to_str().unwrap();
    let o = varta(&["beat", "--socket", path, "--status", "degraded", "--payload", "42"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (w, sender) = c.recv();
    let f = Frame::decode(&w).unwrap();
    assert_eq!((f.status, f.payload, f.nonce, f.pid), (Status::Degraded, 42, 1, sender));
    assert!(c.try_recv().is_none(), "one beat by default");
}

#[test]
fn beat_count_every_sends_nonces_1_2_3() {
    let c = UdsCollector::bind();
    let o = varta(&["beat", "--socket", c.path.to_str().unwrap(), "--count", "3", "--every", "10ms"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let frames: Vec<Frame> = (0..3).map(|_| Frame::decode(&c.recv().0).unwrap()).collect();
    assert_eq!(frames.iter().map(|f| f.nonce).collect::<Vec<_>>(), [1, 2, 3]);
    // Beat k is never sent before its deadline, k × 10 ms after the schedule
    // starts (just before beat 1 is stamped); a late beat may be followed by
    // a quicker one, so only the span from beat 1 to beat 3 is bounded.
    assert!(frames[2].timestamp - frames[0].timestamp >= 19_000_000, "paced by --every");
    assert!(c.try_recv().is_none());
}

#[test]
fn beat_every_after_a_pause_sends_one_beat_not_the_missed_ones() {
    let c = UdsCollector::bind();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_varta"))
        .args(["beat", "--socket", c.path.to_str().unwrap(), "--every", "20ms", "--count", "30"])
        .spawn()
        .unwrap();
    let mut frames: Vec<Frame> = (0..5).map(|_| Frame::decode(&c.recv().0).unwrap()).collect();
    // A pause of ~15 periods (SIGSTOP/SIGCONT, as a suspended laptop).
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGSTOP) };
    std::thread::sleep(std::time::Duration::from_millis(300));
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
    while frames.len() < 30 {
        frames.push(Frame::decode(&c.recv().0).unwrap());
    }
    assert!(child.wait().unwrap().success());
    // The first beat after the pause follows the longest gap. It is the one
    // catch-up beat: a replay of the missed ticks (or a second beat at once)
    // would put the next beats at its timestamp. Beat i after it is sent no
    // earlier than i periods later (the scheduler only makes beats late).
    let every = 20_000_000u64;
    let gaps: Vec<u64> = frames.windows(2).map(|w| w[1].timestamp - w[0].timestamp).collect();
    let pause = (0..gaps.len()).max_by_key(|&i| gaps[i]).unwrap();
    assert!(gaps[pause] >= 10 * every, "no pause seen: {gaps:?}");
    let first = frames[pause + 1].timestamp;
    for (i, f) in frames[pause + 1..].iter().enumerate() {
        assert!(
            f.timestamp - first + every / 2 >= i as u64 * every,
            "beat {i} after the pause came early: {gaps:?}"
        );
    }
}

#[test]
fn beat_exits_1_when_nobody_listens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nobody.sock");
    let o = varta(&["beat", "--socket", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&format!("no collector listening at {}", path.display())), "{}", stderr(&o));
}

#[test]
fn beat_secure_udp_with_a_master_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = write_key(dir.path(), "master.key", 0o400);
    let rx = udp_collector();
    let addr = rx.local_addr().unwrap().to_string();
    let o = varta(&["beat", "--secure-udp", &addr, "--master-key-file", key.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let wire = udp_recv(&rx);
    let pid = varta_proto::master_frame_pid(&wire).unwrap();
    let (_, f) = FrameCipher::new(&MasterKey::new(counting_key()).agent_key(pid)).open_master(&wire).unwrap();
    assert_eq!((f.pid, f.nonce), (pid, 1));
}

#[test]
fn keygen_writes_a_private_key_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new.key");
    let o = varta(&["keygen", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let meta = std::fs::symlink_metadata(&out).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.len(), 65);
    assert!(
        text.ends_with('\n') && text[..64].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert!(varta_proto::Key::from_hex(&text).is_ok());

    let o = varta(&["keygen", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text, "untouched");

    let other = dir.path().join("other.key");
    assert!(varta(&["keygen", "--out", other.to_str().unwrap()]).status.success());
    assert_ne!(std::fs::read_to_string(&other).unwrap(), text, "keys are random");
}
