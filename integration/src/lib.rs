//! Test harness: runs the real `varta-collector` binary with a config
//! written to a temporary directory, waits for it through the systemd
//! notify protocol (so READY=1 is tested too), reads its event file and
//! counter dump, and stops it with real signals.
//!
//! Binaries are taken from the cargo target directory next to the test
//! executable; the README test command builds them first.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod http;
pub mod otlp_server;
pub mod peers;
pub mod rotel;

/// Upper bound for anything a test waits for; generous so slow CI machines pass.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Path of a workspace binary (`varta-collector`, `varta`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(path.exists(), "{} not built; run `cargo build --workspace --bins` first", path.display());
    path
}

/// Path of a workspace example (`embedded`), built by
/// `cargo build --workspace --examples`.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} not built; run `cargo build --workspace --bins --examples` first",
        path.display()
    );
    path
}

/// Sends signal `sig` to process `pid` (a child the test started).
pub fn send_signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) takes any pid and signal number; it only reports errors.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Sends signal `sig` to `child`.
pub fn signal(child: &Child, sig: i32) {
    send_signal(child.id(), sig);
}

/// Kills `child` (SIGKILL) and waits for it, so no zombie is left.
pub fn reap(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A child process killed and reaped when dropped — also when the test
/// panics first (a leftover collector or agent would load the machine for
/// every test after it).
#[derive(Debug)]
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Tests that load the machine (thousands of agents, floods of datagrams
/// or connections) take turns through this lock, so that on a small CI
/// machine they do not starve each other; the other tests run beside them.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the turn of a heavy test until dropped.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Polls `f` until it returns Some, or panics after [`PATIENCE`].
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A one-pipeline config: receiver `vlp/<name>` with the given body lines
/// (already indented by four spaces), a tracker with `threshold`, and the
/// event file at `@DIR@/events.tsv`; JSON logs so counters can be read.
pub fn pipeline_config(name: &str, receiver_body: &str, threshold: &str) -> String {
    format!(
        r#"receivers:
  vlp/{name}:
{receiver_body}
processors:
  tracker: {{ threshold: {threshold} }}
exporters:
  file: {{ path: "@DIR@/events.tsv" }}
service:
  pipelines:
    liveness: {{ receivers: [vlp/{name}], processors: [tracker], exporters: [file] }}
  telemetry: {{ logs: {{ format: json }} }}
"#
    )
}

/// A loopback TCP port that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

/// Writes an owner-only (0600) secret file, as key and token files must be.
pub fn write_secret(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("create secret file");
    f.write_all(text.as_bytes()).expect("write secret file");
}

/// `varta keygen --out DIR/NAME`: a new key file (mode 0600), and the key in it.
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, varta_proto::Key) {
    let path = dir.join(name);
    let out = varta(&["keygen", "--out", path.to_str().expect("utf8")]).output().expect("keygen");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = varta_proto::Key::from_hex(&std::fs::read_to_string(&path).expect("key")).expect("hex key");
    (path, key)
}

/// A loopback UDP port that was free a moment ago.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).expect("port")
}

/// One line of the TSV event file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLine {
    pub ns: u64,
    pub kind: String,
    pub pid: String,
    pub nonce: String,
    pub status: String,
    pub payload: String,
}

pub fn read_events(path: &Path) -> Vec<EventLine> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() != 6 {
                return None;
            }
            Some(EventLine {
                ns: f[0].parse().ok()?,
                kind: f[1].into(),
                pid: f[2].into(),
                nonce: f[3].into(),
                status: f[4].into(),
                payload: f[5].into(),
            })
        })
        .collect()
}

/// A running collector under test.
#[derive(Debug)]
pub struct Collector {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    stderr_path: PathBuf,
    notify: UnixDatagram,
}

impl Collector {
    /// Writes `config` (with `@DIR@` replaced by the temp dir) and starts the
    /// collector, waiting for READY=1. Panics if it exits first.
    pub fn start(config: &str) -> Collector {
        Self::start_with(config, &[])
    }

    pub fn start_with(config: &str, env: &[(&str, &str)]) -> Collector {
        Self::start_prepared(config, env, |_| {})
    }

    /// Like [`Collector::start_with`], calling `prepare` with the temp dir
    /// first (to write token or key files the config refers to).
    pub fn start_prepared(config: &str, env: &[(&str, &str)], prepare: impl FnOnce(&Path)) -> Collector {
        Self::start_with_args(config, env, prepare, &[])
    }

    /// Like [`Collector::start_prepared`], with more command-line `args`
    /// after `--config` (`@DIR@` is replaced by the temp dir there too).
    pub fn start_with_args(
        config: &str,
        env: &[(&str, &str)],
        prepare: impl FnOnce(&Path),
        args: &[&str],
    ) -> Collector {
        let dir = tempfile::tempdir().expect("tempdir");
        prepare(dir.path());
        let (child, stderr_path, notify) = spawn(&dir, Some(config), env, args);
        let mut c = Collector { dir, child: Some(child), stderr_path, notify };
        c.wait_ready();
        c
    }

    /// Starts the collector without `--config` (the embedded default).
    pub fn start_default(env: &[(&str, &str)]) -> Collector {
        Self::start_default_with_args(env, &[])
    }

    /// Like [`Collector::start_default`], with command-line `args` (such
    /// as `--set` overrides of the embedded default).
    pub fn start_default_with_args(env: &[(&str, &str)], args: &[&str]) -> Collector {
        let dir = tempfile::tempdir().expect("tempdir");
        let (child, stderr_path, notify) = spawn(&dir, None, env, args);
        let mut c = Collector { dir, child: Some(child), stderr_path, notify };
        c.wait_ready();
        c
    }

    /// Path inside the collector's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        let mut buf = [0u8; 512];
        loop {
            if let Ok(n) = self.notify.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1")
            {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("collector exited before READY ({status}); log:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "collector not ready; log:\n{}", self.log());
        }
    }

    /// Waits for the next systemd notification that satisfies `want`.
    pub fn wait_notification(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let mut buf = [0u8; 512];
        wait_for(what, || {
            let n = self.notify.recv(&mut buf).ok()?;
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            want(&msg).then_some(msg)
        })
    }

    /// The next systemd notification, if one arrives within the notify
    /// socket's read timeout (50 ms).
    pub fn next_notification(&self) -> Option<String> {
        let mut buf = [0u8; 512];
        let n = self.notify.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// The collector's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        send_signal(self.pid(), sig);
    }

    /// Sends SIGTERM and waits for exit; returns the status and final log.
    /// SIGKILL (a crash): nothing runs at exit; waits for it to be gone.
    pub fn kill(mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait()
    }

    pub fn stop(mut self) -> (ExitStatus, String) {
        self.signal(libc::SIGTERM);
        let status = self.wait();
        (status, self.log())
    }

    /// [`stop`](Self::stop), asserting a clean exit (its log if not);
    /// returns the final log.
    pub fn stop_cleanly(self) -> String {
        let (status, log) = self.stop();
        assert!(status.success(), "{log}");
        log
    }

    fn wait(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = wait_for("collector exit", || child.try_wait().ok().flatten());
        self.child = None;
        status
    }

    /// Asks for a counter dump (SIGUSR1) and returns the value of
    /// `component`/`name`/`label` once it appears in the log.
    pub fn counter(&self, component: &str, name: &str, label: &str) -> u64 {
        let before = self.log().len();
        self.signal(libc::SIGUSR1);
        wait_for("counter dump", || {
            let log = self.log();
            let fresh = log.get(before..)?;
            fresh.lines().find_map(|l| counter_value(l, component, name, label))
        })
    }
}

/// The value of a counter-dump log line (JSON logs) if it is the one asked for.
fn counter_value(line: &str, component: &str, name: &str, label: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str());
    if field("target")? != "varta::stats" || field("component")? != component {
        return None;
    }
    if field("name")? != name || field("label")? != label {
        return None;
    }
    v.get("value")?.as_u64()
}

/// Reads a counter from a finished collector's final dump.
pub fn final_counter(log: &str, component: &str, name: &str, label: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| counter_value(l, component, name, label))
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(
    dir: &tempfile::TempDir,
    config: Option<&str>,
    env: &[(&str, &str)],
    args: &[&str],
) -> (Child, PathBuf, UnixDatagram) {
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    notify.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
    let stderr_path = dir.path().join("collector.log");
    let stderr = std::fs::File::create(&stderr_path).expect("log file");
    let mut cmd = Command::new(binary("varta-collector"));
    if let Some(config) = config {
        let config = config.replace("@DIR@", &dir.path().display().to_string());
        let config_path = dir.path().join("collector.yaml");
        std::fs::write(&config_path, config).expect("write config");
        cmd.arg("--config").arg(&config_path);
    }
    cmd.args(args.iter().map(|a| a.replace("@DIR@", &dir.path().display().to_string())));
    let child = cmd
        .env("NOTIFY_SOCKET", &notify_path)
        .env_remove("RUST_LOG")
        // Each collector keeps its agents' state (the default
        // configuration's file_storage) in its own directory: tests never
        // restore each other's agents, nor this machine's.
        .env_remove("STATE_DIRECTORY")
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn varta-collector");
    (child, stderr_path, notify)
}

/// Runs `varta-collector ARGS` to completion.
pub fn collector_cmd(args: &[&str]) -> std::process::Output {
    Command::new(binary("varta-collector")).args(args).output().expect("run varta-collector")
}

/// Starts `varta beat ...` as a separate agent process.
pub fn varta(args: &[&str]) -> Command {
    let mut c = Command::new(binary("varta"));
    c.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// The span blocks named `name` in the text output of an OTLP receiver that
/// prints what it receives (rotel's `--debug-log`, the Collector's `debug`
/// exporter), each preceded by the resource block it arrived under — so a
/// block shows both who the span is about and what it says.
pub fn span_blocks(out: &str, name: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    for resource_spans in out.split("ResourceSpans #").skip(1) {
        let resource_spans = resource_spans.split("ResourceMetrics #").next().unwrap_or(resource_spans);
        let mut parts = resource_spans.split("Span #");
        let resource = parts.next().unwrap_or("");
        for span in parts {
            if span.lines().any(|l| l.trim() == format!("Name           : {name}")) {
                blocks.push(format!("{resource}\nSpan #{span}"));
            }
        }
    }
    blocks
}

/// A `varta beat` agent beating every 50 ms on the collector's
/// `varta.sock`, named `service` (its `OTEL_SERVICE_NAME`).
pub fn service_agent(c: &Collector, service: &str) -> std::process::Child {
    let sock = c.path("varta.sock");
    varta(&["beat", "--socket", sock.to_str().expect("utf8"), "--every", "50ms"])
        .env("OTEL_SERVICE_NAME", service)
        .spawn()
        .expect("spawn varta beat")
}
