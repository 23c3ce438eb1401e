//! OpenTelemetry resource attributes of local agents, resolved from `/proc`
//! once per agent incarnation and kept where exporters can read them.
//!
//! Promises: the [`AttributeStore`] has one writer (the resolver thread)
//! and any number of readers (exporters, scrapes); the processor never
//! touches it. Memory is bounded: one compact [`Attributes`] (interned
//! string ids, 48 bytes; ~75 bytes per agent with its key and index) per
//! tracked local agent, removed when the agent's
//! state is dropped, and each distinct string once while an agent refers
//! to it (reference counts: a string no agent uses is freed at once, O(1)),
//! up to [`MAX_STRINGS`] / [`MAX_STRING_BYTES`] (beyond, new values are
//! left out and counted). Every value is cut to the store's value limit
//! (default [`DEFAULT_VALUE_LIMIT`] bytes, at a character boundary;
//! counted), like the OpenTelemetry SDK's attribute value length limit, so
//! an agent's 100 KiB `OTEL_SERVICE_NAME` costs 256 bytes. Command
//! arguments are only kept when configured, because they can hold secrets.
//!
//! Names and sources (semantic conventions): `process.pid`,
//! `process.parent_pid` (stat), `process.executable.name` and
//! `process.executable.path` (`exe` link, else `comm`), `process.command`
//! (argv[0]) and `process.command_args` (opt-in), `process.owner` (real uid
//! → `/etc/passwd`), `process.creation.time` (boot time + start ticks),
//! `container.id` and `k8s.pod.uid` (cgroup paths: docker, containerd,
//! CRI-O, systemd and cgroupfs layouts, v1 and v2), `service.name` (the
//! agent's `OTEL_SERVICE_NAME`, else `service.name` of its
//! `OTEL_RESOURCE_ATTRIBUTES`), `service.namespace`,
//! `service.instance.id`, `deployment.environment.name`.
//!
//! Three parts: [`intern`] (each distinct string once), [`resolve`]
//! (reading `/proc`), [`store`] (what exporters read).

mod intern;
mod resolve;
mod store;

pub use intern::{DEFAULT_VALUE_LIMIT, MAX_STRING_BYTES, MAX_STRINGS, Sym};
pub use resolve::{Host, Resolved, apply_otel_env, creation_time_ns, parse_cgroup, resolve, resolve_with};
pub use store::{AttrValue, AttributeStore, Attributes, AttributesRef, StoreUsage, StoreView};
