//! A small blocking HTTP client for tests (ureq, no automatic
//! decompression, so what the server sent is what the test sees).

use std::io::Read;
use std::time::Duration;

/// One response, whatever its status.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build()
}

/// Sends `method url` with `headers`; HTTP error statuses are replies, not errors.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
    let mut req = agent().request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.to_string()),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .filter_map(|k| resp.header(&k).map(|v| (k.clone(), v.to_owned())))
        .collect();
    let mut body = Vec::new();
    resp.into_reader().take(64 << 20).read_to_end(&mut body).map_err(|e| e.to_string())?;
    Ok(Reply { status, headers, body })
}

pub fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    request("GET", url, headers).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// The value of the sample `series` (exact text before the value, e.g.
/// `varta_stalls_total{pid="42"}`) in a Prometheus text body.
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The first value of the Prometheus instant query `q` at the server on
/// loopback port `port`, once the query returns one.
pub fn promql(port: u16, q: &str) -> Option<f64> {
    let url = format!("http://127.0.0.1:{port}/api/v1/query?query={}", url_encode(q));
    let r = request("GET", &url, &[]).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
    v.pointer("/data/result/0/value/1")?.as_str()?.parse().ok()
}

/// `q` percent-encoded for a URL query (letters, digits, `_`, `.` kept).
pub fn url_encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
