//! The `prometheus` exporter: a pull endpoint serving every counter of the
//! collector and every agent's liveness, in the Prometheus text format.
//!
//! It is a *view*, not an event consumer: series are built at scrape time
//! from the published snapshots and component counters ([`families`]), the
//! per-agent ones rendered straight from the snapshot ([`agents`]) and
//! streamed slice by slice ([`scrape`], [`body`]) so a scrape's memory does
//! not grow with the fleet, and served over HTTP on the collector's Tokio
//! runtime ([`http`]) behind a
//! bearer token, a per-client rate limit ([`ratelimit`]) and connection
//! bounds. One endpoint may serve several pipelines (their agents; with
//! more than one, per-agent series carry a `pipeline` label).
//!
//! Promises: nothing here runs on a pipeline thread or takes a lock a
//! pipeline thread takes; a scrape reads at most `snapshot_interval`-old
//! agent state; every fixed-label series exists from the first scrape.

mod agents;
mod body;
pub mod config;
mod exposition;
mod families;
pub mod http;
mod ratelimit;
mod scrape;
mod stats;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use varta_pipeline::Instrumented;

pub use config::{Auth, PrometheusConfig, RateLimit};
pub use families::{AgentSeries, VartaFamilies};
pub use http::HttpStats;

use crate::view::LiveView;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Token(#[from] varta_secrets::SecretFileError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// A bound, not yet serving endpoint (binding first lets startup fail
/// before any receiver runs).
#[derive(Debug)]
pub struct BoundEndpoint {
    config: PrometheusConfig,
    token: Option<varta_proto::Key>,
    listener: std::net::TcpListener,
    stats: Arc<HttpStats>,
}

impl BoundEndpoint {
    /// Validates the config, reads the token file and binds the socket.
    pub fn bind(config: PrometheusConfig) -> Result<BoundEndpoint, PrometheusError> {
        config.validate().map_err(PrometheusError::Config)?;
        let token = match (&config.auth, &config.bearer_token_file) {
            (Auth::Bearer, Some(path)) => Some(varta_secrets::load_key_file(path)?),
            _ => None,
        };
        let addr = config.socket_addr().map_err(PrometheusError::Config)?;
        let bind_err = |source| PrometheusError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(BoundEndpoint { config, token, listener, stats: Arc::new(HttpStats::default()) })
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The endpoint's own counters, to add to the view before serving.
    pub fn telemetry(&self) -> Arc<dyn Instrumented> {
        self.stats.clone()
    }

    /// Starts serving `view` on `runtime`.
    pub fn serve(
        self,
        view: LiveView,
        runtime: &tokio::runtime::Handle,
    ) -> Result<PrometheusServer, PrometheusError> {
        let addr = self
            .local_addr()
            .map_err(|source| PrometheusError::Bind { addr: SocketAddr::from(([0, 0, 0, 0], 0)), source })?;
        let agents =
            AgentSeries { enabled: self.config.per_agent_series, max_agents: self.config.max_agent_series };
        let endpoint = Arc::new(http::Endpoint {
            limiter: Mutex::new(ratelimit::ClientLimiter::new(self.config.rate_limit)),
            config: self.config,
            token: self.token,
            families: VartaFamilies::new(view, agents, Arc::clone(&self.stats)),
            stats: self.stats,
        });
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(self.listener)
                .map_err(|source| PrometheusError::Bind { addr, source })?
        };
        let (stop, stopped) = watch::channel(false);
        let task = runtime.spawn(http::serve(listener, endpoint, stopped));
        tracing::info!(%addr, "metrics endpoint listening");
        Ok(PrometheusServer { stop, task, addr })
    }
}

/// A serving endpoint.
#[derive(Debug)]
pub struct PrometheusServer {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    addr: SocketAddr,
}

impl PrometheusServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and asks open connections to finish; the runtime's
    /// shutdown bounds how long they may take.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}
