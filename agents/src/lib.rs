//! varta-agents — who an agent is and what it was doing when it stalled.
//!
//! The processor never reads `/proc` (it stays pure, in virtual time); it
//! talks to an [`varta_processor::Inspector`], which this crate implements
//! with a resolver thread ([`Resolver`]):
//!
//! * [`proc`]: small readers of `/proc/<pid>/…` (stat, status, cmdline,
//!   environ, cgroup, threads); what judges a process says why a read
//!   failed (gone, denied, other).
//! * [`cgroup`]: the trusted recovery selectors (`{unit}`, `{container}`,
//!   `{pod}`) from a process's cgroup path.
//! * [`attributes`]: OpenTelemetry resource attributes of a local agent
//!   (`process.*`, `container.id`, `k8s.pod.uid`, `service.*`), resolved once
//!   per agent incarnation and kept in an [`AttributeStore`] that exporters
//!   read; repeated strings are interned.
//! * [`diagnose`]: two looks at a stalled process (at detection and a window
//!   later) turned into a [`varta_processor::Diagnosis`].
//! * [`evidence`]: where a stalled agent is stuck (threads, locks, stacks),
//!   captured after its diagnosis on a worker of its own.
//! * [`resolver`]: the thread, its bounded backlog, its budget and counters.
//!
//! (A crate of its own because it does I/O on `/proc` — which neither the
//! pure processor nor the socket-only receiver should — and because both
//! the processor's inspector seam and the exporters need it.)

pub mod attributes;
pub mod cgroup;
pub mod diagnose;
pub mod evidence;
pub mod memory_reads;
pub mod proc;
pub mod resolver;

use std::sync::Arc;

use varta_processor::recovery::{AgentLabels, TargetFacts};
use varta_proto::Transport;

pub use attributes::{AttributeStore, Attributes, StoreView};
pub use resolver::{Progress, Resolver, ResolverConfig, ResolverStats};

/// What a recovery runner's command templates may name of a stalled
/// agent: what it declares about itself (`{service}`, `{exe}`: from the
/// resolver's `store` when there is one) and the trusted selectors its
/// cgroup path gives under `trusted_slices` (read fresh from `/proc` at
/// decision time; local agents only — a network agent's pid is a claim).
/// One function for the collector's pipelines and the embedding façade.
pub fn recovery_targets(store: Option<Arc<AttributeStore>>, trusted_slices: Vec<String>) -> AgentLabels {
    Box::new(move |agent| {
        let view = store.as_ref().map(|s| s.read());
        let a = view.as_ref().and_then(|v| v.get(&agent.id));
        let selectors = if agent.transport == Transport::Uds {
            proc::cgroup(agent.host_pid).map(|t| cgroup::selectors(&t, &trusted_slices)).unwrap_or_default()
        } else {
            cgroup::Selectors::default()
        };
        TargetFacts {
            service: a.and_then(|a| a.service_name()).map(str::to_owned),
            exe: a.and_then(|a| a.executable_name()).map(str::to_owned),
            unit: selectors.unit,
            container: selectors.container,
            pod: selectors.pod,
        }
    })
}
