//! `beat()` performs zero heap allocations after connect, on every path:
//! sent, dropped (queue full / no collector) and sealed.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::*;
use varta_client::{BeatOutcome, Client, DropReason, SecureKey};
use varta_proto::{MasterKey, Status};

struct CountingAlloc;

thread_local! {
    // Per thread, so tests running in parallel do not count each other.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: forwards every call unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Allocations made by this thread while running `f`.
fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get) - before
}

fn beat_many(client: &Client, expect: impl Fn(BeatOutcome) -> bool) -> u64 {
    let mut unexpected = 0;
    let n = allocations_in(|| {
        for _ in 0..2000 {
            if !expect(client.beat(Status::Ok, 1)) {
                unexpected += 1;
            }
        }
    });
    assert_eq!(unexpected, 0);
    n
}

#[test]
fn counting_allocator_sees_allocations() {
    assert!(allocations_in(|| drop(std::hint::black_box(vec![1u8; 16]))) >= 1);
}

#[test]
fn beat_allocates_nothing_after_connect() {
    // UDS to a live collector that never reads: Sent, then QueueFull.
    let c = UdsCollector::bind();
    let client = Client::connect_uds(&c.path).unwrap();
    let n =
        beat_many(&client, |o| matches!(o, BeatOutcome::Sent | BeatOutcome::Dropped(DropReason::QueueFull)));
    assert_eq!(n, 0, "UDS beats allocated");
    assert!(c.try_recv().is_some());

    // UDS with no collector: every beat re-tries connect.
    let dir = tempfile::tempdir().unwrap();
    let client = Client::connect_uds(dir.path().join("absent.sock")).unwrap();
    let n = beat_many(&client, |o| o == BeatOutcome::Dropped(DropReason::NoCollector));
    assert_eq!(n, 0, "dropped UDS beats allocated");

    // Plain and sealed UDP.
    let rx = udp_collector();
    let addr = rx.local_addr().unwrap();
    let plain = Client::connect_udp(addr).unwrap();
    let shared = Client::connect_secure_udp(addr, SecureKey::Shared(counting_key())).unwrap();
    let master = Client::connect_secure_udp(addr, SecureKey::Master(MasterKey::new(counting_key()))).unwrap();
    for (name, client) in [("udp", &plain), ("shared", &shared), ("master", &master)] {
        let n = beat_many(client, |o| matches!(o, BeatOutcome::Sent | BeatOutcome::Dropped(_)));
        assert_eq!(n, 0, "{name} beats allocated");
    }
}
