//! varta-telemetry — what varta reports, in OpenTelemetry's shapes, with
//! no transport: the OTLP exporters, the embedding façade (through the
//! host's OpenTelemetry API) and tests build the same spans, points and
//! resources from here.
//!
//! * [`view`]: what metrics views read — every component's counters and
//!   each pipeline's published snapshot.
//! * [`metrics`]: metric points from a view (names, units, temporality).
//! * [`traces`]: one trace per stall incident (stall, recovery, resolved spans).
//! * [`ids`]: trace and span ids derived from a process salt and the incident.
//! * [`resource`]: the agent-as-resource and the collector's own resource.
//! * [`attrs`]: agent attributes as OTLP key-values (semantic conventions).
//! * [`wallclock`]: the processor's monotonic clock mapped to Unix time.
//!
//! Why a crate of its own: the exporter core and the transports depend on
//! it, never the other way round, and a program that only embeds the
//! engine gets these shapes without tonic, hyper or rustls.

pub mod attrs;
pub mod ids;
pub mod metrics;
pub mod resource;
pub mod traces;
pub mod view;
pub mod wallclock;
