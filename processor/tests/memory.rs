//! A million agents fit in ≤ 256 bytes each, by the processor's own accounting.

mod common;

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use common::*;
use varta_processor::TrackerConfig;
use varta_proto::{Batch, Source, Transport};

const AGENTS: u32 = 1_000_000;

#[test]
fn one_million_agents_within_256_bytes_each() {
    let cfg = TrackerConfig {
        capacity: AGENTS as usize,
        threshold: Duration::from_secs(60),
        ..TrackerConfig::default()
    };
    let mut p = processor(None, cfg);
    let mut out = Recorder::default();
    let mut b = Batch::new();
    for i in 0..AGENTS {
        // IPv6 sources (the largest key) spread over 1,000 hosts.
        let host = Source::Ip(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, (i % 1000) as u16)));
        let beat = net(host, Transport::SecureMaster, i + 1, 1, 1);
        if b.push(varta_proto::Arrival::Beat(beat)).is_err() {
            p.handle_batch(&b, T0, &mut out);
            b.clear();
            assert!(b.push(varta_proto::Arrival::Beat(beat)).is_ok());
        }
    }
    p.handle_batch(&b, T0, &mut out);
    assert!(out.events.is_empty(), "{:?}", out.events.first());
    assert_eq!(p.agents(), AGENTS as usize);
    assert_eq!(p.stats().snapshot().agents_tracked, u64::from(AGENTS));

    let bytes = p.memory_bytes();
    let per_agent = bytes as f64 / f64::from(AGENTS);
    println!("memory: {bytes} bytes for {AGENTS} agents = {per_agent:.1} bytes/agent");
    assert!(bytes <= 256 * AGENTS as usize, "{bytes} bytes > 256 × {AGENTS}");

    // One more agent is refused (nobody is stalled), and nothing grew.
    p.handle_batch(&batch(&[uds(1, 1)]), T0 + 1, &mut out);
    assert_eq!(p.stats().snapshot().capacity_exceeded, 1);
    assert_eq!(p.memory_bytes(), bytes);
}
