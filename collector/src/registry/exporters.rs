//! `exporters:` — event exporters (`file`, `debug`, `otlp_grpc`,
//! `otlp_http`) that run behind a queue fed by pipelines, and the
//! `prometheus` pull endpoint that serves the published views.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use serde::de::MapAccess;
use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};
use varta_embed::compose::Pipeline;
use varta_exporters::otlp::config::Protocol;
use varta_exporters::otlp::{OtlpTelemetry, PipelineWiring, Wiring};
use varta_exporters::prometheus::{BoundEndpoint, PrometheusConfig};
use varta_exporters::{
    DebugExporter, DebugExporterConfig, Exporter, FileExporter, FileExporterConfig, OtlpExporter,
    OtlpExporterConfig,
};
use varta_pipeline::Instrumented;
use varta_pipeline::config::FieldError;

use super::Factory;
use crate::config::components::{ComponentFamily, spanned_body};

#[derive(Debug, Clone, PartialEq)]
pub enum ExporterConfig {
    File(FileExporterConfig),
    Debug(DebugExporterConfig),
    Prometheus(PrometheusConfig),
    Otlp(Box<OtlpExporterConfig>),
}

/// `otlp_grpc` and `otlp_http` are the Collector's current names;
/// `otlp` and `otlphttp` stay as aliases.
pub const FACTORIES: &[Factory] = &[
    Factory { kind: "file", aliases: &[] },
    Factory { kind: "debug", aliases: &[] },
    Factory { kind: "prometheus", aliases: &[] },
    Factory { kind: "otlp_grpc", aliases: &["otlp"] },
    Factory { kind: "otlp_http", aliases: &["otlphttp"] },
];

impl ComponentFamily for ExporterConfig {
    const SECTION: &'static str = "exporters";
    fn types() -> Vec<&'static str> {
        super::names(FACTORIES)
    }
    fn check(&self) -> Result<(), FieldError> {
        self.validate()
    }
    fn body<'de, A: MapAccess<'de>>(kind: &str, map: &mut A) -> Result<Spanned<Self>, A::Error> {
        match super::find(FACTORIES, kind).map_or(kind, |f| f.kind) {
            "file" => spanned_body(map, ExporterConfig::File),
            "prometheus" => spanned_body(map, ExporterConfig::Prometheus),
            "otlp_grpc" => spanned_body(map, ExporterConfig::otlp),
            "otlp_http" => spanned_body(map, |c: OtlpExporterConfig| {
                ExporterConfig::otlp(OtlpExporterConfig { protocol: Protocol::Http, ..c })
            }),
            _ => spanned_body(map, ExporterConfig::Debug),
        }
    }
}

/// What an exporter is, for a reload: its settings by value (secrets
/// included, which their `Debug` text hides: a rotated header must
/// compare by value or the reload would keep the old one), the pipelines
/// whose state it reads, and a digest of the contents of the files it
/// names (TLS, bearer token), so a reload re-reads a rotated certificate
/// kept at the same path. Never printed.
#[derive(Debug, Clone, PartialEq)]
pub struct ExporterKey {
    settings: ExporterConfig,
    serves: Vec<(String, u64)>,
    files: [u8; 32],
}

/// Files a key digests are read up to this much (PEM bundles are far
/// smaller); what lies beyond does not take part in the comparison.
const MAX_DIGESTED_FILE: u64 = 4 << 20;

/// One digest of the named files' contents (a file that cannot be read
/// contributes its error kind: the build that follows reports it).
fn digest(files: &[&Path]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for path in files {
        let mut contents = Vec::new();
        match std::fs::File::open(path).and_then(|f| f.take(MAX_DIGESTED_FILE).read_to_end(&mut contents)) {
            Ok(n) => {
                hash.update((n as u64).to_le_bytes());
                hash.update(&contents);
            }
            Err(e) => hash.update(format!("error {:?}", e.kind()).as_bytes()),
        }
        contents.iter_mut().for_each(|b| *b = 0);
    }
    hash.finalize().into()
}

/// What async exporters are given besides their configuration (the
/// collector's runtime and shared views).
#[derive(Debug, Clone)]
pub struct AsyncWiring {
    pub runtime: Option<tokio::runtime::Handle>,
    pub view: varta_exporters::otlp::ViewCell,
    pub shutdown_timeout: std::time::Duration,
    pub shutdown_deadline: varta_exporters::otlp::ShutdownDeadline,
}

/// An event exporter, built: what its queue runs.
pub struct Built {
    pub exporter: Box<dyn Exporter>,
    /// Its queue's bound, in events.
    pub capacity: usize,
    /// Its metrics beyond the queue's (OTLP sending).
    pub extra: Option<Arc<varta_exporters::otlp::stats::OtlpStats>>,
    /// Its final flush talks to the network: when replaced, it is closed
    /// after the pipelines resume, never while they are parked.
    pub closes_late: bool,
}

impl ExporterConfig {
    /// An OTLP exporter's settings (gRPC or HTTP, as `cfg.protocol` says).
    pub fn otlp(cfg: OtlpExporterConfig) -> ExporterConfig {
        ExporterConfig::Otlp(Box::new(cfg))
    }

    /// Its own checks.
    pub fn validate(&self) -> Result<(), FieldError> {
        match self {
            ExporterConfig::File(cfg) => Ok(cfg.validate()?),
            ExporterConfig::Debug(_) => Ok(()),
            ExporterConfig::Prometheus(cfg) => Ok(cfg.validate()?),
            ExporterConfig::Otlp(cfg) => Ok(cfg.validate()?),
        }
    }

    /// What it reads from disk: the endpoint's bearer token file.
    pub fn check_files(&self) -> Result<(), String> {
        if let ExporterConfig::Prometheus(cfg) = self
            && let Some(path) = &cfg.bearer_token_file
        {
            varta_secrets::load_key_file(path).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// A pull endpoint (it serves views) rather than an event exporter.
    pub fn is_endpoint(&self) -> bool {
        matches!(self, ExporterConfig::Prometheus(_))
    }

    /// It runs on the shared async runtime.
    pub fn needs_runtime(&self) -> bool {
        matches!(self, ExporterConfig::Otlp(_) | ExporterConfig::Prometheus(_))
    }

    /// Its cap on open connections, if it accepts connections.
    pub fn connection_cap(&mut self) -> Option<&mut usize> {
        match self {
            ExporterConfig::Prometheus(p) => Some(&mut p.max_connections),
            _ => None,
        }
    }

    /// Its reload key; `serves` names the pipelines it serves with their
    /// state's generation (`debug` and `otlp` read that state — agent
    /// attributes, snapshots — so they are rebuilt when it changes).
    pub fn reload_key(&self, serves: &[(&str, u64)]) -> ExporterKey {
        let serves = match self {
            ExporterConfig::Debug(_) | ExporterConfig::Otlp(_) => {
                serves.iter().map(|(name, generation)| ((*name).to_owned(), *generation)).collect()
            }
            _ => Vec::new(),
        };
        let files: Vec<&Path> = match self {
            ExporterConfig::Otlp(o) => [&o.tls.ca_file, &o.tls.cert_file, &o.tls.key_file]
                .into_iter()
                .flatten()
                .map(|p| p.as_path())
                .collect(),
            ExporterConfig::Prometheus(p) => p.bearer_token_file.iter().map(|p| p.as_path()).collect(),
            ExporterConfig::File(_) | ExporterConfig::Debug(_) => Vec::new(),
        };
        ExporterKey { settings: self.clone(), serves, files: digest(&files) }
    }

    /// Builds an event exporter `id` for the pipelines it `serves`.
    pub fn build(&self, id: &str, serves: &[&Pipeline], wiring: AsyncWiring) -> Result<Built, String> {
        let events = |exporter: Box<dyn Exporter>, capacity| Built {
            exporter,
            capacity,
            extra: None,
            closes_late: false,
        };
        match self {
            ExporterConfig::File(cfg) => {
                let stores = serves.iter().map(|p| p.attributes.clone()).collect();
                let file = FileExporter::open(cfg.clone()).map_err(|e| e.to_string())?.with_stores(stores);
                Ok(events(Box::new(file), cfg.queue_size))
            }
            ExporterConfig::Debug(cfg) => {
                let pipelines = serves.iter().map(|p| (p.name.clone(), p.attributes.clone())).collect();
                Ok(events(Box::new(DebugExporter::new(cfg.clone(), pipelines)), 4096))
            }
            ExporterConfig::Otlp(cfg) => {
                let runtime = wiring.runtime.ok_or("no async runtime")?;
                let pipelines = serves
                    .iter()
                    .map(|p| PipelineWiring {
                        name: p.name.clone(),
                        snapshots: p.snapshots.clone(),
                        attributes: p.attributes.clone(),
                    })
                    .collect();
                let wiring = Wiring {
                    pipelines,
                    view: wiring.view,
                    runtime,
                    shutdown_timeout: wiring.shutdown_timeout,
                    shutdown_deadline: wiring.shutdown_deadline,
                };
                let (exporter, stats) = OtlpExporter::start(id, cfg, wiring).map_err(|e| e.to_string())?;
                Ok(Built {
                    exporter: Box::new(exporter),
                    capacity: cfg.sending_queue.queue_size,
                    extra: Some(stats),
                    closes_late: true,
                })
            }
            ExporterConfig::Prometheus(_) => Err("a metrics endpoint is not an event exporter".into()),
        }
    }

    /// Binds a pull endpoint's socket.
    pub fn bind_endpoint(&self) -> Result<BoundEndpoint, String> {
        match self {
            ExporterConfig::Prometheus(cfg) => BoundEndpoint::bind(cfg.clone()).map_err(|e| e.to_string()),
            _ => Err("an event exporter is not a metrics endpoint".into()),
        }
    }
}

impl Built {
    /// An exporter's metrics: its queue's, with `extra` (the OTLP
    /// sender's) where it has them.
    pub fn telemetry(
        extra: Option<Arc<varta_exporters::otlp::stats::OtlpStats>>,
        queue: Arc<dyn Instrumented>,
    ) -> Arc<dyn Instrumented> {
        match extra {
            Some(otlp) => Arc::new(OtlpTelemetry { queue, otlp }),
            None => queue,
        }
    }
}
