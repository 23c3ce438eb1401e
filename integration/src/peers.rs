//! The real third-party programs tests talk to: `promtool` and
//! `prometheus` (Debian package `prometheus`), `systemd-analyze` (Debian
//! `systemd`), `rotel` and `kubernetes-validate` (PyPI), an OpenTelemetry
//! Collector and Jaeger (built with Go from `integration/peers/`). The
//! README test command installs them (`scripts/install-peers.sh`) and
//! exports their paths; a test that needs one and cannot find it fails
//! with a message saying so — it never passes without having run.

use std::path::PathBuf;

/// `$VAR` if set, else `name` on `PATH`, else the fallbacks; panics with
/// what to do when none exists.
fn find(var: &str, name: &str, fallbacks: &[&str]) -> PathBuf {
    let candidates = std::env::var_os(var)
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::var_os("PATH")
                .into_iter()
                .flat_map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect::<Vec<_>>()),
        )
        .chain(fallbacks.iter().map(PathBuf::from));
    for c in candidates {
        if c.is_file() {
            return c;
        }
    }
    panic!("{name} not found (set {var} or run scripts/install-peers.sh; ./scripts/test.sh does both)")
}

pub fn promtool() -> PathBuf {
    find("PROMTOOL", "promtool", &["/usr/bin/promtool"])
}

pub fn prometheus() -> PathBuf {
    find("PROMETHEUS", "prometheus", &["/usr/bin/prometheus"])
}

pub fn rotel() -> PathBuf {
    find("ROTEL", "rotel-agent", &[])
}

pub fn systemd_analyze() -> PathBuf {
    find("SYSTEMD_ANALYZE", "systemd-analyze", &["/usr/bin/systemd-analyze"])
}

pub fn kubernetes_validate() -> PathBuf {
    let venv =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/peers/venv/bin/kubernetes-validate");
    find("KUBERNETES_VALIDATE", "kubernetes-validate", &[venv.to_str().unwrap_or_default()])
}

/// `$VAR`, else `<target>/peers/<name>` where `scripts/install-peers.sh`
/// builds the Go peers.
fn go_peer(var: &str, name: &str) -> PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let built = target.join("peers").join(name);
    find(var, &format!("varta-peer-{name}"), &[built.to_str().unwrap_or_default()])
}

/// The minimal OpenTelemetry Collector of `integration/peers/otelcol`.
pub fn otelcol() -> PathBuf {
    go_peer("OTELCOL", "otelcol")
}

/// Jaeger v2 (`integration/peers/jaeger`).
pub fn jaeger() -> PathBuf {
    go_peer("JAEGER", "jaeger")
}
