//! varta-embed — the liveness engine inside any Rust program.
//!
//! A Rust service that runs workers (a job runner, a proxy with worker
//! processes, a collector of its own) starts the engine in-process from
//! Rust config structs, and learns when a worker wedges through a callback
//! and through the OpenTelemetry API it already uses:
//!
//! ```no_run
//! use std::time::Duration;
//! use varta_embed::{Engine, OpenTelemetry, TrackerConfig, TransportKind, VlpReceiverConfig};
//!
//! # fn main() -> Result<(), varta_embed::EmbedError> {
//! let socket = VlpReceiverConfig {
//!     transport: TransportKind::Uds,
//!     path: Some("/run/myservice/varta.sock".into()),
//!     ..Default::default()
//! };
//! let engine = Engine::builder()
//!     .receiver("vlp/uds", socket)
//!     .tracker(TrackerConfig { threshold: Duration::from_millis(300), ..Default::default() })
//!     .on_incident(|incident| eprintln!("{:?}", incident.event.kind))
//!     .opentelemetry(
//!         OpenTelemetry::new()
//!             .tracer(opentelemetry::global::tracer("varta"))
//!             .meter(opentelemetry::global::meter("varta")),
//!     )
//!     .start()?;
//! // … the program runs …
//! let stopped = engine.shutdown(Duration::from_secs(5));
//! assert!(stopped.clean, "{stopped:?}");
//! # Ok(())
//! # }
//! ```
//!
//! * [`compose`]: the engine's parts (a pipeline that parks and reloads,
//!   receivers that feed several pipelines), which the `varta-collector`
//!   binary composes; [`Engine`] is one pipeline built from them.
//! * [`engine`]: the builder (defaults as the collector's), start, the
//!   ordered shutdown within a deadline, the counters.
//! * [`incident`]: incident events with the agent's attributes, for a callback.
//! * [`otel`]: spans through the host's `Tracer`, metrics as observable
//!   instruments on the host's `Meter`, in the collector's shapes.
//!
//! Why a crate of its own, not a module of `varta-exporters` or the
//! collector: it is the one piece that speaks the OpenTelemetry *API*
//! (the host's SDK decides export, batching and resource), which no other
//! crate needs, and it assembles receivers, processor, resolver and
//! exporter queues the way the `varta-collector` binary does from YAML —
//! without the binary's signals, logging setup, reloads or health endpoint.
//! The pieces themselves are the collector's crates, reused as they are.

pub mod compose;
pub mod engine;
pub mod incident;
pub mod otel;

pub use engine::{EmbedError, Engine, EngineBuilder, Stopped};
pub use incident::Incident;
pub use otel::OpenTelemetry;

pub use varta_agents::ResolverConfig;
pub use varta_processor::recovery::RecoveryConfig;
pub use varta_processor::{AgentRef, Event, EventKind, RateLimitConfig, RecoveryOutcome, TrackerConfig};
pub use varta_proto::duration::parse_duration;
pub use varta_receiver::{SocketMode, TransportKind, VlpReceiverConfig};
