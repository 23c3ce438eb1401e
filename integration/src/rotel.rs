//! rotel, a real third-party OTLP receiver that prints what it decoded:
//! started on loopback ports, its output read back by the tests (the
//! `otlp` exporter's and the embedding example's).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::{free_tcp_port, wait_for};

/// `rotel-agent`, as `scripts/install-peers.sh` installs it.
fn rotel_binary() -> PathBuf {
    if let Ok(p) = std::env::var("ROTEL") {
        return PathBuf::from(p);
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    let venv_lib = target.join("peers/venv/lib");
    let found = std::fs::read_dir(&venv_lib).ok().and_then(|dirs| {
        dirs.flatten().map(|d| d.path().join("site-packages/rotel/rotel-agent")).find(|p| p.exists())
    });
    match found {
        Some(p) => p,
        None => panic!(
            "rotel-agent not found (looked for $ROTEL and {}/python3*/site-packages/rotel/rotel-agent). \
             Install it with `scripts/install-peers.sh` (the README test command `./scripts/test.sh` does).",
            venv_lib.display()
        ),
    }
}

#[derive(Debug)]
pub struct Rotel {
    child: Child,
    out: PathBuf,
    /// Its OTLP/gRPC and OTLP/HTTP ports.
    pub grpc: u16,
    pub http: u16,
    _dir: tempfile::TempDir,
}

impl Rotel {
    /// Printing what it receives on OTLP/gRPC port `grpc` (OTLP/HTTP on a free port).
    pub fn start(grpc: u16) -> Rotel {
        Self::start_on(grpc, free_tcp_port())
    }

    /// Printing what it receives on OTLP/gRPC port `grpc` and OTLP/HTTP
    /// port `http`.
    pub fn start_on(grpc: u16, http: u16) -> Rotel {
        Self::launch(
            grpc,
            http,
            &["--exporter", "blackhole", "--debug-log", "traces", "--debug-log", "metrics"],
        )
    }

    pub fn launch(grpc: u16, http: u16, args: &[&str]) -> Rotel {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("rotel.out");
        let file = std::fs::File::create(&out).expect("rotel output");
        let child = Command::new(rotel_binary())
            .args(["start", "--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
            .args(args)
            .args(["--debug-log-verbosity", "detailed"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .expect("start rotel-agent");
        let r = Rotel { child, out, grpc, http, _dir: dir };
        wait_for("rotel to start", || r.output().contains("Starting Rotel").then_some(()));
        r
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// The printed span blocks named `name`, each preceded by the resource
    /// block it arrived under (so a block shows both who the span is about
    /// and what it says).
    pub fn span_blocks(&self, name: &str) -> Vec<String> {
        crate::span_blocks(&self.output(), name)
    }

    /// The printed resource blocks of metrics (`ResourceMetrics #` up to
    /// the next resource).
    pub fn metric_blocks(&self) -> Vec<String> {
        let out = self.output();
        out.split("\nResourceMetrics #")
            .skip(1)
            .map(|b| b.split("\nResourceSpans #").next().unwrap_or(b).to_owned())
            .collect()
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `Trace ID` of a printed span block.
pub fn trace_id_of(block: &str) -> Option<String> {
    block.lines().find_map(|l| l.trim().strip_prefix("Trace ID       : ").map(str::to_owned))
}
