//! `varta-load`: drives any VLP collector with N agents.
//!
//! * UDP / secure UDP: one process simulates N agents with distinct pids
//!   (`--pid-base + i`), batched with `sendmmsg`.
//! * UDS: the kernel attests the sender's pid, so each agent is a real
//!   process: `varta-load` forks one worker per agent and each worker beats
//!   as itself. The number of UDS agents is therefore bounded by how many
//!   processes the machine can run (use UDP for 100,000-agent scenarios).
//!
//! With `--stop-fraction F --stop-after D`, `floor(N × F)` evenly spread
//! agents fall silent D after the start; the report records, for each, the
//! CLOCK_MONOTONIC ns just before the send call that carried its last frame.
//! Only loopback targets are accepted.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};
use varta_bench::agents::{Agents, Transport, select_stopped};
use varta_bench::clock::monotonic_ns;
use varta_bench::sender::{self, SendPlan, SendStats};
use varta_proto::Key;
use varta_proto::duration::parse_duration;

#[derive(Debug, Parser)]
#[command(name = "varta-load", about = "VLP load generator (loopback only)")]
struct Args {
    /// uds | udp | secure-shared | secure-master
    #[arg(long, value_parser = Transport::parse)]
    transport: Transport,
    /// Socket path (uds) or ADDR:PORT (udp, secure-*), loopback only.
    #[arg(long)]
    target: String,
    /// Number of agents (over UDS: number of worker processes).
    #[arg(long, default_value_t = 1)]
    agents: usize,
    /// Total beats per second over all agents; 0 = flat out.
    #[arg(long, conflicts_with = "interval")]
    rate: Option<f64>,
    /// Per-agent beat interval (e.g. 100ms); sets rate = agents / interval.
    #[arg(long, value_parser = parse_duration)]
    interval: Option<Duration>,
    /// How long to send.
    #[arg(long, value_parser = parse_duration)]
    duration: Duration,
    /// Shared key (secure-shared) or master key (secure-master): 64 hex chars.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Fraction of agents that fall silent at --stop-after.
    #[arg(long, default_value_t = 0.0)]
    stop_fraction: f64,
    /// When the chosen agents stop, counted from the start.
    #[arg(long, value_parser = parse_duration)]
    stop_after: Option<Duration>,
    /// Write a JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Frames per sendmmsg call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Paced mode: longest a due beat waits for its batch to fill.
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    max_batch_delay: Duration,
    /// First simulated pid on UDP transports (agents get pid-base .. pid-base+N).
    #[arg(long, default_value_t = 1000)]
    pid_base: u32,
    /// When the socket is full (EAGAIN): `drop` counts the frames as dropped
    /// and goes on; `wait` blocks until writable and retries them.
    #[arg(long, default_value = "drop", value_parser = ["drop", "wait"])]
    on_full: String,
    /// Source address of UDP transports (a loopback address such as
    /// 127.0.0.2, so that rules on `source` tell loads apart).
    #[arg(long)]
    bind: Option<std::net::IpAddr>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("varta-load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    if args.agents == 0 {
        return Err("--agents must be at least 1".into());
    }
    if !(0.0..=1.0).contains(&args.stop_fraction) {
        return Err("--stop-fraction must be within 0..=1".into());
    }
    let rate = match (args.rate, args.interval) {
        (Some(r), _) if r.is_finite() && r >= 0.0 => r,
        (Some(_), _) => return Err("--rate must be a non-negative number".into()),
        (None, Some(i)) if !i.is_zero() => args.agents as f64 / i.as_secs_f64(),
        (None, Some(_)) => return Err("--interval must be positive".into()),
        (None, None) => 0.0,
    };
    let stop = select_stopped(args.agents, if args.stop_after.is_some() { args.stop_fraction } else { 0.0 });
    let key = match &args.key_file {
        Some(p) => Some(read_key(p)?),
        None => None,
    };
    let (stats, stopped, start_ns, end_ns) = if args.transport == Transport::Uds {
        run_uds_workers(args, rate, &stop)?
    } else {
        run_udp(args, rate, stop, key.as_ref())?
    };
    let secs = (end_ns - start_ns) as f64 / 1e9;
    let report = json!({
        "transport": format!("{:?}", args.transport),
        "target": args.target,
        "agents": args.agents,
        "rate": rate,
        "batch": args.batch,
        "start_ns": start_ns,
        "end_ns": end_ns,
        "finished_ns": stats.finished_ns,
        "duration_s": secs,
        "stop_at_ns": args.stop_after.map(|d| start_ns + d.as_nanos() as u64),
        "sent": stats.sent,
        "refused": stats.refused(),
        "send_errors": stats.errors,
        "syscalls": stats.syscalls,
        "full_waits": stats.full_waits,
        "achieved_rate": stats.sent as f64 / secs,
        "stopped": stopped
            .iter()
            .map(|(pid, ns, nonce)| json!({"pid": pid, "last_beat_ns": ns, "last_nonce": nonce}))
            .collect::<Vec<_>>(),
    });
    eprintln!(
        "varta-load: {:?} agents={} sent={} refused={} ({:.0}/s) stopped={}",
        args.transport,
        args.agents,
        stats.sent,
        stats.refused(),
        stats.sent as f64 / secs,
        stopped.len()
    );
    if let Some(path) = &args.report {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

fn read_key(path: &PathBuf) -> Result<Key, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading key {}: {e}", path.display()))?;
    Key::from_hex(&text).map_err(|e| format!("key {}: {e}", path.display()))
}

fn set_sndbuf(fd: RawFd, bytes: i32) {
    // SAFETY: fd is an open socket; the option value is a valid c_int for the call's duration.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
}

/// (totals, stopped agents as (pid, last beat ns, last nonce), start ns, end ns)
type Outcome = (SendStats, Vec<(u32, u64, u64)>, u64, u64);

fn plan(args: &Args, rate: f64, start_ns: u64) -> SendPlan {
    SendPlan {
        rate,
        start_ns,
        end_ns: start_ns + args.duration.as_nanos() as u64,
        stop_at_ns: args.stop_after.map(|d| start_ns + d.as_nanos() as u64),
        batch: args.batch,
        max_batch_delay_ns: args.max_batch_delay.as_nanos() as u64,
        wait_when_full: args.on_full == "wait",
    }
}

fn run_udp(args: &Args, rate: f64, stop: Vec<bool>, key: Option<&Key>) -> Result<Outcome, String> {
    let addr: SocketAddr = args.target.parse().map_err(|e| format!("--target {}: {e}", args.target))?;
    if !addr.ip().is_loopback() {
        return Err(format!("--target {addr} is not a loopback address; varta-load only sends to loopback"));
    }
    let last_pid = u64::from(args.pid_base) + args.agents as u64;
    if args.pid_base < 2 || last_pid > u64::from(u32::MAX) {
        return Err("--pid-base must be ≥ 2 and pid-base + agents must fit in u32".into());
    }
    let from = args.bind.unwrap_or(addr.ip());
    if !from.is_loopback() {
        return Err(format!("--bind {from} is not a loopback address"));
    }
    let sock = UdpSocket::bind((from, 0)).map_err(|e| format!("bind {from}: {e}"))?;
    sock.connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    sock.set_nonblocking(true).map_err(|e| format!("nonblocking: {e}"))?;
    set_sndbuf(sock.as_raw_fd(), 4 << 20);
    let pids: Vec<u32> = (0..args.agents as u32).map(|i| args.pid_base + i).collect();
    let mut iv = [0u8; 8];
    getrandom::fill(&mut iv).map_err(|e| format!("getrandom: {e}"))?;
    let mut agents = Agents::new(args.transport, pids, key, stop, u64::from_le_bytes(iv))?;
    let start_ns = monotonic_ns() + 10_000_000;
    let p = plan(args, rate, start_ns);
    let stats = sender::run(sock.as_raw_fd(), &mut agents, &p);
    let stopped = (0..agents.len())
        .filter(|&i| agents.stop[i])
        .map(|i| (agents.pid(i), agents.last_sent_ns[i], agents.last_sent_nonce[i]))
        .collect();
    Ok((stats, stopped, start_ns, p.end_ns))
}

/// One UDS worker's result, sent to the parent as one JSON line over a pipe
/// (well below PIPE_BUF, so lines from different workers never interleave).
fn worker_line(pid: u32, stopped: bool, last: (u64, u64), stats: &SendStats) -> String {
    let mut v = json!({
        "pid": pid, "stopped": stopped, "last_ns": last.0, "last_nonce": last.1, "sent": stats.sent,
        "syscalls": stats.syscalls, "finished_ns": stats.finished_ns, "errors": stats.errors,
        "full_waits": stats.full_waits,
    })
    .to_string();
    v.push('\n');
    v
}

fn uds_worker(args: &Args, rate: f64, stopped: bool, start_ns: u64, out: RawFd) -> i32 {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    let mut stats = SendStats::default();
    let mut last = (0, 0);
    match UnixDatagram::unbound().and_then(|s| s.connect(&args.target).map(|()| s)) {
        Ok(sock) => {
            if sock.set_nonblocking(true).is_ok() {
                set_sndbuf(sock.as_raw_fd(), 1 << 20);
                match Agents::new(Transport::Uds, vec![pid], None, vec![stopped], 0) {
                    Ok(mut agents) => {
                        stats = sender::run(sock.as_raw_fd(), &mut agents, &plan(args, rate, start_ns));
                        last = (agents.last_sent_ns[0], agents.last_sent_nonce[0]);
                    }
                    Err(e) => {
                        stats.errors.insert(format!("setup: {e}"), 1);
                    }
                }
            }
        }
        Err(e) => {
            stats.errors.insert(format!("connect: {}", sender::errno_name(e.raw_os_error().unwrap_or(0))), 1);
        }
    }
    let line = worker_line(pid, stopped, last, &stats);
    // SAFETY: `out` is the pipe's write end, owned by this process; the buffer is valid.
    let n = unsafe { libc::write(out, line.as_ptr().cast(), line.len()) };
    if n == line.len() as isize { 0 } else { 1 }
}

fn run_uds_workers(args: &Args, rate: f64, stop: &[bool]) -> Result<Outcome, String> {
    let k = args.agents;
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 just returned these two fresh descriptors; each is owned exactly once.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let per_worker = rate / k as f64;
    // Leave time to fork every worker (about 1 ms each on a busy VM) before the first beat.
    let start_ns = monotonic_ns() + 100_000_000 + k as u64 * 1_000_000;
    let mut children = Vec::with_capacity(k);
    for (i, &stopped) in stop.iter().enumerate() {
        let offset = if rate > 0.0 { (i as f64 * 1e9 / rate) as u64 } else { 0 };
        // SAFETY: the process is single-threaded here, so the child may run ordinary Rust code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            let e = std::io::Error::last_os_error();
            for &c in &children {
                // SAFETY: c is a child we forked.
                unsafe { libc::kill(c, libc::SIGKILL) };
            }
            return Err(format!("fork worker {i}: {e}"));
        }
        if pid == 0 {
            drop(read_end);
            let code = uds_worker(args, per_worker, stopped, start_ns + offset, write_end.as_raw_fd());
            // SAFETY: _exit ends the child without running the parent's atexit handlers twice.
            unsafe { libc::_exit(code) };
        }
        children.push(pid);
    }
    drop(write_end);
    let mut text = String::new();
    let mut file = std::fs::File::from(read_end);
    let read = file.read_to_string(&mut text);
    for &c in &children {
        let mut status = 0;
        // SAFETY: c is our child; status is a valid out pointer.
        unsafe { libc::waitpid(c, &mut status, 0) };
    }
    read.map_err(|e| format!("reading worker results: {e}"))?;
    let mut total = SendStats::default();
    let mut stopped = Vec::new();
    let mut lines = 0;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        lines += 1;
        let mut s = SendStats {
            sent: v["sent"].as_u64().unwrap_or(0),
            syscalls: v["syscalls"].as_u64().unwrap_or(0),
            full_waits: v["full_waits"].as_u64().unwrap_or(0),
            finished_ns: v["finished_ns"].as_u64().unwrap_or(0),
            errors: BTreeMap::new(),
        };
        if let Some(errs) = v["errors"].as_object() {
            for (name, n) in errs {
                s.errors.insert(name.clone(), n.as_u64().unwrap_or(0));
            }
        }
        total.merge(&s);
        if v["stopped"].as_bool() == Some(true) {
            stopped.push((
                v["pid"].as_u64().unwrap_or(0) as u32,
                v["last_ns"].as_u64().unwrap_or(0),
                v["last_nonce"].as_u64().unwrap_or(0),
            ));
        }
    }
    if lines != k {
        total.errors.insert("worker_lost".into(), (k - lines.min(k)) as u64);
    }
    Ok((total, stopped, start_ns, start_ns + args.duration.as_nanos() as u64))
}
