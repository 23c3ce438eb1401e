//! Bytes per tracked agent at 1,000,000 local agents, attributes included:
//! the tracker, the published snapshot's agent views and the attribute
//! store, by their own accounting (goal: ≤ 256 B).

use std::time::Duration;

use varta_agents::AttributeStore;
use varta_agents::attributes::{Host, resolve};
use varta_processor::{AgentId, DiscardSink, Processor, TrackerConfig};
use varta_proto::{Arrival, Batch, Beat, Frame, Source, Status, Transport};

const AGENTS: u32 = 1_000_000;

#[test]
fn a_million_local_agents_with_attributes_within_256_bytes_each() {
    let cfg = TrackerConfig {
        capacity: AGENTS as usize,
        threshold: Duration::from_secs(60),
        ..TrackerConfig::default()
    };
    let mut p = Processor::new(None, cfg, Box::new(|pid| Some(u64::from(pid)))).expect("processor");
    let mut b = Batch::new();
    for i in 0..AGENTS {
        let pid = i + 2;
        let beat = Beat {
            frame: Frame::new(Status::Ok, pid, 1, 1, 0),
            transport: Transport::Uds,
            source: Source::Local,
            host_pid: pid,
            received_ns: 0,
        };
        if b.push(Arrival::Beat(beat)).is_err() {
            p.handle_batch(&b, 1_000_000_000, &mut DiscardSink);
            b.clear();
            assert!(b.push(Arrival::Beat(beat)).is_ok());
        }
    }
    p.handle_batch(&b, 1_000_000_000, &mut DiscardSink);
    p.publish_snapshot(1_000_000_000);
    let snapshot = p.snapshots().latest();
    assert_eq!(snapshot.agent_count(), AGENTS as usize);

    // Every agent with the attributes a real process has (ours), strings shared.
    let store = AttributeStore::default();
    let ours = resolve(std::process::id(), Host::read(), false).expect("we exist");
    for i in 0..AGENTS {
        let pid = i + 2;
        store.insert(AgentId { source: Source::Local, pid, start_time: u64::from(pid) }, &ours);
    }
    let tracker = p.memory_bytes();
    let views = snapshot.memory_bytes();
    let varta_agents::attributes::StoreUsage { agents, bytes: attributes, .. } = store.usage();
    assert_eq!(agents, AGENTS as usize);
    let total = tracker + views + attributes;
    let per = |b: usize| b as f64 / f64::from(AGENTS);
    println!(
        "per agent: tracker {:.1} B + snapshot views {:.1} B + attributes {:.1} B = {:.1} B",
        per(tracker),
        per(views),
        per(attributes),
        per(total)
    );
    assert!(total <= 256 * AGENTS as usize, "{:.1} bytes per agent", per(total));
}
