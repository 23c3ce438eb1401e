//! The incident callback: a panic in the host's code costs that incident
//! only, and is counted.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::{TempDir, uds, wait_for};
use varta_client::Client;
use varta_embed::{Engine, EventKind, TrackerConfig};
use varta_pipeline::Role;
use varta_proto::Status;

#[test]
fn a_panicking_callback_is_counted_and_the_next_incident_still_arrives() {
    let dir = TempDir::new();
    let socket = dir.join("varta.sock");
    let (tx, resumes) = mpsc::channel::<u64>();
    let engine = Engine::builder()
        .receiver("vlp/uds", uds(&socket))
        .resolver(None)
        .ratelimit(None)
        .tracker(TrackerConfig { threshold: Duration::from_millis(50), ..Default::default() })
        .on_incident(move |i| match i.event.kind {
            EventKind::Stall { .. } => panic!("a host bug"),
            EventKind::Resume { incident, .. } => {
                let _ = tx.send(incident);
            }
            _ => {}
        })
        .start()
        .expect("engine starts");
    let agent = Client::connect_uds(&socket).expect("agent");
    assert!(agent.beat(Status::Ok, 0).is_sent());
    let stats = engine.stats();
    wait_for("the stall", || (stats.stalls() == 1).then_some(()));
    assert!(agent.beat(Status::Ok, 0).is_sent());
    let incident = resumes.recv_timeout(common::PATIENCE).expect("the resume after the panic");
    assert_eq!(incident, 1);
    let panics = wait_for("the panic counted", || {
        let mut n = None;
        for c in engine
            .view()
            .components
            .iter()
            .filter(|c| c.role == Role::Exporter && c.id == "incidents.callback")
        {
            c.metrics.samples(&mut |s| {
                if s.metric.name == "callback_panics" {
                    n = Some(s.value);
                }
            });
        }
        n.filter(|&n| n > 0)
    });
    // One panic per stall: the agent, silent again after its resume, may
    // stall once more (50 ms) before this reads the counters.
    let stalls = stats.stalls();
    assert!(panics >= 1 && panics <= stalls, "{panics} callback panics for {stalls} stalls");
    let stopped = engine.shutdown(Duration::from_secs(10));
    assert!(stopped.clean, "{stopped:?}");
}
