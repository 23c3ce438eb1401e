//! The panic hook sends Critical + NONCE_TERMINAL, then chains to the
//! previous hook. The panic happens in a subprocess (this test binary run
//! again with an environment variable selecting the panicking test).
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::process::Command;
use std::sync::Arc;

use common::*;
use varta_client::{Client, install_panic_hook};
use varta_proto::{Frame, NONCE_TERMINAL, Status};

const SOCKET_VAR: &str = "VARTA_TEST_PANIC_SOCKET";

/// Only does something when started by `panic_sends_the_terminal_frame`.
#[test]
fn panicking_agent() {
    let Ok(path) = std::env::var(SOCKET_VAR) else { return };
    let client = Arc::new(Client::connect_uds(path).unwrap());
    assert!(client.beat(Status::Ok, 0).is_sent());
    install_panic_hook(client);
    panic!("deliberate agent panic");
}

#[test]
fn panic_sends_the_terminal_frame() {
    let c = UdsCollector::bind();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["panicking_agent", "--exact", "--test-threads=1", "--nocapture"])
        .env(SOCKET_VAR, &c.path)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "the agent must have panicked: {text}");
    assert!(text.contains("deliberate agent panic"), "previous hook must still run: {text}");

    let (w, first) = c.recv();
    assert_eq!(Frame::decode(&w).unwrap().nonce, 1);
    let (w, sender) = c.recv();
    let f = Frame::decode(&w).unwrap();
    assert_eq!((f.status, f.nonce, f.pid, sender), (Status::Critical, NONCE_TERMINAL, first, first));
    assert_ne!(first, std::process::id());
}
