//! The endpoint's counters: requests by outcome, connections and scrape
//! failures — a leaf the server, the scrape body and the families read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::httpd::ConnectionStats;
use varta_pipeline::{Instrumented, Sample};

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Scrape,
    RateLimited,
    NotFound,
    MethodNotAllowed,
    Unauthorized,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Scrape,
        Outcome::RateLimited,
        Outcome::NotFound,
        Outcome::MethodNotAllowed,
        Outcome::Unauthorized,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Outcome::Scrape => "ok",
            Outcome::RateLimited => "rate_limited",
            Outcome::NotFound => "not_found",
            Outcome::MethodNotAllowed => "method_not_allowed",
            Outcome::Unauthorized => "unauthorized",
        }
    }
}

/// Counters of the endpoint (an exporter component in every metrics view).
#[derive(Debug, Default)]
pub struct HttpStats {
    requests: [AtomicU64; 5],
    /// Connection counters (kept by [`crate::httpd`]).
    pub conn: Arc<ConnectionStats>,
    scrape_failures: AtomicU64,
}

impl HttpStats {
    pub(crate) fn count(&self, outcome: Outcome) {
        self.requests[outcome as usize].fetch_add(1, Relaxed);
    }

    pub fn requests(&self, outcome: Outcome) -> u64 {
        self.requests[outcome as usize].load(Relaxed)
    }

    pub fn unauthorized(&self) -> u64 {
        self.requests(Outcome::Unauthorized)
    }

    pub(super) fn count_scrape_failure(&self) {
        self.scrape_failures.fetch_add(1, Relaxed);
    }
}

/// The endpoint's metrics.
pub mod metric {
    use varta_pipeline::Metric;

    pub static REQUESTS: Metric =
        Metric::labelled("requests", "outcome", "Metrics HTTP requests, by outcome.").unit("{request}");
    pub static SCRAPE_FAILURES: Metric = Metric::counter(
        "scrape_failures",
        "Scrapes that could not be encoded (answered 500) or compressed (cut).",
    )
    .unit("{scrape}");
}

impl Instrumented for HttpStats {
    fn samples(&self, out: &mut dyn FnMut(Sample)) {
        use metric::*;
        for o in Outcome::ALL {
            out(Sample::labelled(&REQUESTS, o.label(), self.requests(o)));
        }
        self.conn.samples(out);
        out(Sample::new(&SCRAPE_FAILURES, self.scrape_failures.load(Relaxed)));
    }
}
