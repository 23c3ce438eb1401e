//! Agents in other pid namespaces, as containers run them: real namespaces
//! made with `unshare --pid --fork --mount-proc` (needs root, or a kernel
//! that lets this user create namespaces).
//!
//! A custom harness (no libtest). Where the kernel forbids namespaces the
//! tests fail — unless `VARTA_TEST_NO_NAMESPACES=<why>` says this machine
//! cannot (CI never sets it); then each is reported as *skipped* with that
//! reason, never as passed.
//!
//! Why this is a test binary of its own, not a module of `end_to_end`:
//! libtest has no "skipped, because…" outcome (an ignored test is decided
//! at compile time, an early return passes), so reporting a skip with its
//! reason needs this `harness = false` `main`, and a binary has one `main`.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use varta_integration::{Collector, binary, read_events, reap, send_signal, wait_for};

const CONFIG: &str = r#"receivers:
  vlp/uds: { transport: uds, path: "@DIR@/varta.sock", allow_cross_namespace: @CROSS@ }
processors:
  tracker: { threshold: 300ms }
exporters:
  file: { path: "@DIR@/events.tsv" }
service:
  pipelines:
    liveness: { receivers: [vlp/uds], processors: [tracker], exporters: [file] }
  telemetry: { logs: { format: json } }
"#;

fn collector(cross: bool) -> Collector {
    Collector::start(&CONFIG.replace("@CROSS@", if cross { "true" } else { "false" }))
}

/// Why namespaces cannot be used here, if they cannot.
fn unavailable() -> Option<String> {
    match Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "true"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => {
            Some(format!("unshare --pid --fork --mount-proc: {}", String::from_utf8_lossy(&o.stderr).trim()))
        }
        Err(e) => Some(format!("cannot run unshare: {e}")),
    }
}

/// `varta beat` in a fresh pid namespace; `as_init` makes it the
/// namespace's pid 1, otherwise a shell is pid 1 and the agent pid 2.
/// Killing the returned `unshare` kills the whole namespace (`--kill-child`).
fn namespaced_agent(socket: &Path, as_init: bool) -> Child {
    let varta = binary("varta");
    let beat = format!("{} beat --socket {} --every 50ms", varta.display(), socket.display());
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"]);
    if as_init {
        cmd.args(["sh", "-c", &format!("exec {beat}")]);
    } else {
        // `; true` keeps the shell as pid 1 with the agent as its child, pid 2.
        cmd.args(["sh", "-c", &format!("{beat}; true")]);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("unshare")
}

/// Host pids of agents that beat, in order of first beat.
fn beating_pids(c: &Collector) -> Vec<String> {
    let mut pids = Vec::new();
    for e in read_events(&c.path("events.tsv")) {
        if matches!(e.kind.as_str(), "beat" | "status") && !pids.contains(&e.pid) {
            pids.push(e.pid);
        }
    }
    pids
}

fn count(c: &Collector, kind: &str, pid: &str) -> usize {
    read_events(&c.path("events.tsv")).iter().filter(|e| e.kind == kind && e.pid == pid).count()
}

/// Two containers whose agents both write pid 2 are two agents, and stall
/// and resume separately.
fn same_frame_pid_in_two_namespaces_is_two_agents() {
    let c = collector(true);
    let sock = c.path("varta.sock");
    let a = namespaced_agent(&sock, false);
    let b = namespaced_agent(&sock, false);
    let pids = wait_for("two agents beating", || {
        let p = beating_pids(&c);
        (p.len() == 2).then_some(p)
    });
    // Freeze the first; the second keeps beating.
    let frozen: u32 = pids[0].parse().expect("host pid");
    send_signal(frozen, libc::SIGSTOP);
    wait_for("the frozen agent's stall", || (count(&c, "stall", &pids[0]) == 1).then_some(()));
    send_signal(frozen, libc::SIGCONT);
    wait_for("the frozen agent's resume", || (count(&c, "resume", &pids[0]) == 1).then_some(()));
    assert_eq!(count(&c, "stall", &pids[1]), 0, "the other agent never stalled");
    reap(a);
    reap(b);
    wait_for("both stall once their namespaces are gone", || {
        (count(&c, "stall", &pids[0]) == 2 && count(&c, "stall", &pids[1]) == 1).then_some(())
    });
    let events = std::fs::read_to_string(c.path("events.tsv")).unwrap_or_default();
    let tail: Vec<&str> = events.lines().filter(|l| !l.contains("\tbeat\t")).collect();
    assert_eq!(c.counter("pipelines::liveness", "agents_tracked", ""), 2, "{tail:#?}\n{}", c.log());
    assert_eq!(c.counter("receivers::vlp/uds", "refused", "bad_pid"), 0);
}

/// A containerised agent that is its namespace's pid 1 is tracked when
/// cross-namespace senders are allowed, and refused (`bad_pid`, the spec's
/// rule) when they are not.
fn namespace_init_agent_is_tracked_only_with_cross_namespace() {
    let c = collector(true);
    let agent = namespaced_agent(&c.path("varta.sock"), true);
    let pid = wait_for("the pid-1 agent beating", || beating_pids(&c).into_iter().next());
    assert_ne!(pid, "1", "keyed by its host pid");
    assert_eq!(c.counter("receivers::vlp/uds", "refused", "bad_pid"), 0);
    reap(agent);
    wait_for("its stall after the namespace died", || (count(&c, "stall", &pid) == 1).then_some(()));

    let c = collector(false);
    let agent = namespaced_agent(&c.path("varta.sock"), true);
    wait_for("pid-1 frames refused", || {
        (c.counter("receivers::vlp/uds", "refused", "bad_pid") >= 2).then_some(())
    });
    assert!(beating_pids(&c).is_empty());
    reap(agent);
}

fn main() {
    let tests: [(&str, fn()); 2] = [
        ("same_frame_pid_in_two_namespaces_is_two_agents", same_frame_pid_in_two_namespaces_is_two_agents),
        (
            "namespace_init_agent_is_tracked_only_with_cross_namespace",
            namespace_init_agent_is_tracked_only_with_cross_namespace,
        ),
    ];
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let selected: Vec<_> = tests
        .iter()
        .filter(|(name, _)| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str())))
        .collect();
    let skip = match (unavailable(), std::env::var("VARTA_TEST_NO_NAMESPACES")) {
        (None, _) => None,
        (Some(why), Ok(allowed)) if !allowed.trim().is_empty() => {
            Some(format!("{why}; VARTA_TEST_NO_NAMESPACES={allowed}"))
        }
        (Some(why), _) => {
            println!("namespaces are not available here ({why}): set VARTA_TEST_NO_NAMESPACES=<why> to skip");
            std::process::exit(1);
        }
    };
    let mut failed = 0;
    for (name, test) in &selected {
        if let Some(why) = &skip {
            println!("test {name} ... skipped ({why})");
            continue;
        }
        match std::panic::catch_unwind(test) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    let skipped = if skip.is_some() { selected.len() } else { 0 };
    println!(
        "\ntest result: {}. {} passed; {failed} failed; {skipped} skipped",
        if failed == 0 { "ok" } else { "FAILED" },
        selected.len() - failed - skipped
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
