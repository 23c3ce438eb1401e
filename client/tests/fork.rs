//! A forked child starts a fresh session before its first beat.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::sync::Mutex;

use common::*;
use varta_client::{Client, SecureKey};
use varta_proto::{Frame, FrameCipher, MasterKey, Status};

/// Forking while another test thread is mid-allocation is risky; fork one at a time.
static FORK: Mutex<()> = Mutex::new(());

/// Forks; the child runs `child` (which must not allocate) and `_exit`s with
/// its result. Returns the child's pid after it exited with status 0.
fn in_child(child: impl FnOnce() -> bool) -> u32 {
    // SAFETY: the child only calls allocation-free client code and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let ok = child();
        // SAFETY: ends the child without running the parent's atexit handlers or test harness.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` outlives the call.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child failed: {status:#x}");
    pid as u32
}

#[test]
fn uds_child_beats_with_its_own_pid_and_nonce_1() {
    let _one = FORK.lock().unwrap();
    let c = UdsCollector::bind();
    let client = Client::connect_uds(&c.path).unwrap();
    let parent = std::process::id();
    assert!(client.beat(Status::Ok, 0).is_sent());
    assert!(client.beat(Status::Ok, 0).is_sent());
    for n in 1..=2 {
        let (w, _) = c.recv();
        assert_eq!(Frame::decode(&w).unwrap().nonce, n);
    }

    let child =
        in_child(|| client.beat(Status::Degraded, 7).is_sent() && client.beat(Status::Ok, 8).is_sent());
    assert_ne!(child, parent);
    for n in 1..=2 {
        let (w, sender) = c.recv();
        let f = Frame::decode(&w).unwrap();
        assert_eq!((f.pid, sender, f.nonce), (child, child, n), "child session");
    }

    // The parent's session is untouched.
    assert!(client.beat(Status::Ok, 0).is_sent());
    let (w, sender) = c.recv();
    let f = Frame::decode(&w).unwrap();
    assert_eq!((f.pid, sender, f.nonce), (parent, parent, 3));
}

#[test]
fn master_key_child_derives_its_own_key_and_a_fresh_iv() {
    let _one = FORK.lock().unwrap();
    let rx = udp_collector();
    let client = Client::connect_secure_udp(
        rx.local_addr().unwrap(),
        SecureKey::Master(MasterKey::new(counting_key())),
    )
    .unwrap();
    let master = MasterKey::new(counting_key());
    let parent = std::process::id();
    assert!(client.beat(Status::Ok, 0).is_sent());
    let (parent_iv, _) = FrameCipher::new(&master.agent_key(parent)).open_master(&udp_recv(&rx)).unwrap();

    let child = in_child(|| client.beat(Status::Ok, 0).is_sent());
    let wire = udp_recv(&rx);
    let (iv, f) = FrameCipher::new(&master.agent_key(child)).open_master(&wire).unwrap();
    assert_eq!((f.pid, f.nonce, iv.counter), (child, 1, 0));
    assert_ne!(iv.random, parent_iv.random, "the child must not continue the parent's IV stream");
}
