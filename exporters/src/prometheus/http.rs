//! The HTTP side of the metrics endpoint: hyper (HTTP/1.1) on the
//! collector's Tokio runtime, never on a pipeline thread.
//!
//! Every request is classified once ([`classify`], the receiver's pattern
//! for outside input) into a scrape or a typed refusal, and counted:
//! per-client-IP rate limit → 429 (checked first, so token guessing is
//! rate-limited too), wrong path → 404, method other than GET → 405 with
//! `Allow: GET`, missing or wrong bearer token → 401 with
//! `WWW-Authenticate` (constant-time comparison; scheme and hex digits
//! case-insensitive). Bounds: open connections (`max_connections`; more
//! are closed at once and counted), request header size (16 KiB buffer,
//! 32 headers) and header read time (`header_timeout`, slowloris). A
//! scrape is streamed ([`super::body`]): its fixed families are built when
//! the request is classified, its per-agent series rendered slice by slice
//! as the client takes them, so a scrape costs one slice of memory and a
//! slow or stalled client holds no thread. Beat ingestion and stall
//! detection never wait for any of this: they run on their own threads and
//! publish snapshots this side only reads.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::httpd;
use varta_pipeline::clock::monotonic_ns;

use varta_proto::Key;

use super::body::ScrapeBody;
use super::config::PrometheusConfig;
use super::families::VartaFamilies;
use super::ratelimit::ClientLimiter;
pub use super::stats::{HttpStats, Outcome, metric};

/// Whether `Authorization` carries `token` (`Bearer <64 hex>`; scheme and
/// hex digits case-insensitive; compared in constant time).
pub fn token_matches(headers: &HeaderMap, token: &Key) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some((scheme, credentials)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    // A malformed token reveals nothing about the real one: its length and
    // alphabet are public.
    match varta_proto::hex::decode_hex_array::<32>(credentials.trim()) {
        Ok(given) => bool::from(given.ct_eq(token.expose_bytes())),
        Err(_) => false,
    }
}

/// Everything one request needs to be answered.
#[derive(Debug)]
pub struct Endpoint {
    pub config: PrometheusConfig,
    pub token: Option<Key>,
    pub families: VartaFamilies,
    pub limiter: Mutex<ClientLimiter>,
    pub stats: Arc<HttpStats>,
}

/// A refusal's plain body or a scrape's stream.
pub type ResponseBody = Either<Full<Bytes>, ScrapeBody>;

/// Decides what a request gets (see the module docs for the order).
pub fn classify(ep: &Endpoint, method: &Method, path: &str, headers: &HeaderMap, peer: IpAddr) -> Outcome {
    let admitted = match ep.limiter.lock() {
        Ok(mut l) => l.admit(peer, monotonic_ns()),
        Err(_) => false,
    };
    if !admitted {
        Outcome::RateLimited
    } else if path != ep.config.path {
        Outcome::NotFound
    } else if method != Method::GET {
        Outcome::MethodNotAllowed
    } else if ep.token.as_ref().is_some_and(|t| !token_matches(headers, t)) {
        Outcome::Unauthorized
    } else {
        Outcome::Scrape
    }
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',').any(|enc| {
            let mut parts = enc.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| p.trim().replace(' ', "") == "q=0");
            name.eq_ignore_ascii_case("gzip") && !refused
        })
    })
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

async fn respond(ep: Arc<Endpoint>, req: Request<Incoming>, peer: IpAddr) -> Response<ResponseBody> {
    let outcome = classify(&ep, req.method(), req.uri().path(), req.headers(), peer);
    ep.stats.count(outcome);
    let refusal = match outcome {
        Outcome::RateLimited => {
            let mut r = plain(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Outcome::NotFound => plain(StatusCode::NOT_FOUND, "not found\n"),
        Outcome::MethodNotAllowed => {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
            r
        }
        Outcome::Unauthorized => {
            let mut r = plain(StatusCode::UNAUTHORIZED, "unauthorized\n");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"varta\""));
            r
        }
        Outcome::Scrape => return scrape(&ep, accepts_gzip(req.headers())),
    };
    refusal.map(Either::Left)
}

/// Begins a scrape: the collector's own families now (an encoding error is
/// a 500), the per-agent series as the body is sent.
fn scrape(ep: &Arc<Endpoint>, gzip: bool) -> Response<ResponseBody> {
    match ep.families.scrape() {
        Ok(exposition) => {
            let mut r =
                Response::new(Either::Right(ScrapeBody::new(exposition, gzip, Arc::clone(&ep.stats))));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(prometheus::TEXT_FORMAT));
            if gzip {
                r.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            r.headers_mut().insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
            r
        }
        Err(e) => {
            ep.stats.count_scrape_failure();
            tracing::error!("cannot encode metrics: {e}");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").map(Either::Left)
        }
    }
}

/// Accepts and serves scrapes until `stop` turns true (see [`crate::httpd`]).
pub async fn serve(listener: TcpListener, ep: Arc<Endpoint>, stop: watch::Receiver<bool>) {
    let limits = ep.config.limits();
    let conn = Arc::clone(&ep.stats.conn);
    httpd::serve("metrics endpoint", listener, limits, conn, stop, move |req, peer| {
        respond(Arc::clone(&ep), req, peer)
    })
    .await;
}
