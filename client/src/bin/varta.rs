//! `varta`: emit VLP beats from scripts, encode/decode frames, make keys.
//!
//! Exit status: 0 success; 1 the operation failed (beat not sent, frame
//! invalid, key file refused, key file exists); 2 usage errors (bad
//! arguments, invalid hex characters, missing key for a sealed frame).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use varta_client::{BeatOutcome, Client, SecureKey};
use varta_proto::duration::parse_duration;
use varta_proto::hex::{HexError, decode_hex, encode_hex};
use varta_proto::{
    Frame, FrameCipher, Iv, MASTER_FRAME_LEN, MasterKey, OpenError, SHARED_FRAME_LEN, Status,
    master_frame_pid,
};
use varta_secrets::load_key_file as read_key_file;
use zeroize::Zeroizing;

#[derive(Debug, Parser)]
#[command(
    name = "varta",
    version,
    about = "VLP v0.2 heartbeat tool: send beats, encode/decode frames, make keys"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send beats to a collector (one by default).
    Beat(BeatArgs),
    /// Encode or decode single frames.
    #[command(subcommand)]
    Frame(FrameCommand),
    /// Write a fresh random 32-byte key (64 hex characters) to a new file, mode 0600.
    Keygen {
        /// File to create; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("transport").required(true))]
#[command(group = clap::ArgGroup::new("key").requires("secure_udp"))]
struct BeatArgs {
    /// Unix datagram socket of the collector.
    #[arg(long, value_name = "PATH", group = "transport")]
    socket: Option<PathBuf>,
    /// Plain UDP address of the collector (unauthenticated).
    #[arg(long, value_name = "ADDR", group = "transport")]
    udp: Option<String>,
    /// Secure UDP address of the collector (needs --key-file or --master-key-file).
    #[arg(long, value_name = "ADDR", group = "transport")]
    secure_udp: Option<String>,
    /// Shared key file (64 hex characters, mode 0600).
    #[arg(long, value_name = "FILE", group = "key")]
    key_file: Option<PathBuf>,
    /// Master key file (64 hex characters, mode 0600); the per-pid agent key is derived.
    #[arg(long, value_name = "FILE", group = "key")]
    master_key_file: Option<PathBuf>,
    /// ok, degraded or critical.
    #[arg(long, default_value = "ok", value_parser = parse_beat_status)]
    status: Status,
    /// Opaque application value carried in the frame.
    #[arg(long, default_value_t = 0)]
    payload: u32,
    /// Keep beating at this interval (150ms, 2s, 1m) until killed or --count is reached.
    #[arg(long, value_parser = parse_duration)]
    every: Option<Duration>,
    /// Number of beats (default: 1, or unlimited with --every).
    #[arg(long)]
    count: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum FrameCommand {
    /// Print a 32-byte frame as 64 lowercase hex characters. Fields are
    /// written verbatim, so invalid frames can be crafted.
    Encode {
        /// ok, degraded, critical or stall.
        #[arg(long)]
        status: Status,
        #[arg(long)]
        pid: u32,
        #[arg(long)]
        timestamp: u64,
        #[arg(long)]
        nonce: u64,
        #[arg(long, default_value_t = 0)]
        payload: u32,
    },
    /// Decode a 32-byte frame, or open a 60-byte (--key-file) or 64-byte
    /// (--master-key-file) sealed frame. Whitespace in HEX is ignored.
    Decode {
        /// One JSON object on stdout: the frame's fields, or {"error":"<Kind>"}.
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "FILE", conflicts_with = "master_key_file")]
        key_file: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        master_key_file: Option<PathBuf>,
        /// The frame's bytes in hex (may be split across several arguments).
        #[arg(required = true, num_args = 1..)]
        hex: Vec<String>,
    },
}

fn parse_beat_status(s: &str) -> Result<Status, String> {
    match s.parse::<Status>()? {
        Status::Stall => Err("stall is observer-synthesised; beats may be ok, degraded or critical".into()),
        st => Ok(st),
    }
}

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Beat(args) => beat(&args),
        Command::Frame(FrameCommand::Encode { status, pid, timestamp, nonce, payload }) => {
            println!("{}", encode_hex(&Frame::new(status, pid, timestamp, nonce, payload).encode()));
            ExitCode::SUCCESS
        }
        Command::Frame(FrameCommand::Decode { json, key_file, master_key_file, hex }) => {
            decode(json, key_file.as_deref(), master_key_file.as_deref(), &hex.join(" "))
        }
        Command::Keygen { out } => keygen(&out),
    }
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("varta: {msg}");
    ExitCode::from(code)
}

fn beat(args: &BeatArgs) -> ExitCode {
    let (client, target) = match connect(args) {
        Ok(c) => c,
        Err(msg) => return fail(EXIT_FAILED, msg),
    };
    let count = args.count.unwrap_or(if args.every.is_some() { u64::MAX } else { 1 });
    if count == 0 {
        return fail(EXIT_USAGE, "--count must be at least 1");
    }
    let mut deadline = Instant::now();
    let mut last = BeatOutcome::Failed(std::io::ErrorKind::Other);
    for i in 0..count {
        if i > 0
            && let Some(every) = args.every
        {
            deadline += every;
            let now = Instant::now();
            if deadline < now {
                // Fell behind (stopped, suspended): one catch-up beat now.
                // Missed ticks are not replayed as a burst the collector
                // would rate-limit; the schedule restarts from here.
                deadline = now;
            }
            std::thread::sleep(deadline.saturating_duration_since(now));
            let woke = Instant::now();
            if woke > deadline + every {
                // Stopped while sleeping: this beat is the catch-up beat;
                // re-anchor so the next one is a period after it, not at once.
                deadline = woke;
            }
        }
        last = client.beat(args.status, args.payload);
        if !last.is_sent() {
            eprintln!("varta: beat {} not sent: {}", i + 1, describe(last, &target));
        }
    }
    if last.is_sent() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILED) }
}

fn describe(outcome: BeatOutcome, target: &str) -> String {
    match outcome {
        BeatOutcome::Sent => format!("sent to {target}"),
        BeatOutcome::Dropped(varta_client::DropReason::NoCollector) => {
            format!("no collector listening at {target}")
        }
        BeatOutcome::Dropped(reason) => format!("{reason} ({target})"),
        BeatOutcome::Failed(kind) => format!("sending to {target} failed: {kind}"),
    }
}

fn connect(args: &BeatArgs) -> Result<(Client, String), String> {
    if let Some(path) = &args.socket {
        let target = path.display().to_string();
        let client = Client::connect_uds(path).map_err(|e| format!("cannot use socket {target}: {e}"))?;
        return Ok((client, target));
    }
    if let Some(addr) = &args.udp {
        let client = Client::connect_udp(addr.as_str()).map_err(|e| format!("cannot use UDP {addr}: {e}"))?;
        return Ok((client, addr.clone()));
    }
    let Some(addr) = &args.secure_udp else {
        return Err("one of --socket, --udp or --secure-udp is required".into());
    };
    let key = match (&args.key_file, &args.master_key_file) {
        (Some(f), None) => SecureKey::Shared(read_key_file(f).map_err(|e| e.to_string())?),
        (None, Some(f)) => SecureKey::Master(MasterKey::new(read_key_file(f).map_err(|e| e.to_string())?)),
        _ => return Err("--secure-udp needs exactly one of --key-file or --master-key-file".into()),
    };
    let client =
        Client::connect_secure_udp(addr.as_str(), key).map_err(|e| format!("cannot use UDP {addr}: {e}"))?;
    Ok((client, addr.clone()))
}

#[derive(serde::Serialize)]
struct FrameJson {
    status: &'static str,
    pid: u32,
    timestamp: u64,
    nonce: u64,
    payload: u32,
}

/// A frame that failed to decode or open: the kind name and a reason.
struct Refusal {
    kind: &'static str,
    reason: String,
}

impl From<OpenError> for Refusal {
    fn from(e: OpenError) -> Refusal {
        let kind = match e {
            OpenError::BadLength { .. } => "BadLength",
            OpenError::AuthFailed => "AuthFailed",
            OpenError::Decode(d) => d.kind().name(),
            OpenError::PidMismatch { .. } => "PidMismatch",
        };
        Refusal { kind, reason: e.to_string() }
    }
}

fn decode(json: bool, key_file: Option<&Path>, master_key_file: Option<&Path>, hex: &str) -> ExitCode {
    let bytes = match decode_hex(hex) {
        Ok(b) => b,
        Err(HexError::OddLength(n)) => {
            return refuse(
                json,
                Refusal { kind: "BadLength", reason: format!("odd number of hex digits ({n})") },
            );
        }
        Err(e) => return fail(EXIT_USAGE, format!("HEX is not hexadecimal: {e}")),
    };
    let opened: Result<(Option<Iv>, Frame), Refusal> = match bytes.len() {
        SHARED_FRAME_LEN => {
            let Some(f) = key_file else {
                return fail(EXIT_USAGE, "a 60-byte shared-key frame needs --key-file");
            };
            match read_key_file(f) {
                Ok(key) => FrameCipher::new(&key)
                    .open_shared(&bytes)
                    .map(|(iv, fr)| (Some(iv), fr))
                    .map_err(Into::into),
                Err(e) => return fail(EXIT_USAGE, e),
            }
        }
        MASTER_FRAME_LEN => {
            let Some(f) = master_key_file else {
                return fail(EXIT_USAGE, "a 64-byte master-key frame needs --master-key-file");
            };
            let master = match read_key_file(f) {
                Ok(key) => MasterKey::new(key),
                Err(e) => return fail(EXIT_USAGE, e),
            };
            master_frame_pid(&bytes)
                .and_then(|pid| FrameCipher::new(&master.agent_key(pid)).open_master(&bytes))
                .map(|(iv, fr)| (Some(iv), fr))
                .map_err(Into::into)
        }
        _ => Frame::decode(&bytes)
            .map(|fr| (None, fr))
            .map_err(|e| Refusal { kind: e.kind().name(), reason: e.to_string() }),
    };
    match opened {
        Err(r) => refuse(json, r),
        Ok((iv, frame)) => {
            if json {
                let out = FrameJson {
                    status: frame.status.as_str(),
                    pid: frame.pid,
                    timestamp: frame.timestamp,
                    nonce: frame.nonce,
                    payload: frame.payload,
                };
                match serde_json::to_string(&out) {
                    Ok(s) => println!("{s}"),
                    Err(e) => return fail(EXIT_FAILED, format!("cannot render JSON: {e}")),
                }
            } else {
                print_table(&frame, iv);
            }
            ExitCode::SUCCESS
        }
    }
}

fn refuse(json: bool, r: Refusal) -> ExitCode {
    if json {
        println!("{}", serde_json::json!({ "error": r.kind }));
        eprintln!("varta: {}", r.reason);
        ExitCode::from(EXIT_FAILED)
    } else {
        fail(EXIT_FAILED, format!("invalid frame ({}): {}", r.kind, r.reason))
    }
}

fn print_table(frame: &Frame, iv: Option<Iv>) {
    let nonce = if frame.is_panic() {
        format!("{} (NONCE_TERMINAL: panic frame)", frame.nonce)
    } else {
        frame.nonce.to_string()
    };
    let mut rows = vec![
        ("status", frame.status.as_str().to_string()),
        ("pid", frame.pid.to_string()),
        ("timestamp", frame.timestamp.to_string()),
        ("nonce", nonce),
        ("payload", frame.payload.to_string()),
    ];
    if let Some(iv) = iv {
        rows.push(("iv_random", encode_hex(&iv.random)));
        rows.push(("iv_counter", iv.counter.to_string()));
    }
    println!("{:<10}  value", "field");
    for (field, value) in rows {
        println!("{field:<10}  {value}");
    }
}

fn keygen(out: &Path) -> ExitCode {
    let mut bytes = Zeroizing::new([0u8; 32]);
    if let Err(e) = getrandom::fill(&mut bytes[..]) {
        return fail(EXIT_FAILED, format!("no OS entropy: {e}"));
    }
    let mut text = Zeroizing::new(encode_hex(&bytes[..]));
    text.push('\n');
    // create_new = O_CREAT|O_EXCL: never overwrites, never follows a symlink;
    // the mode applies from creation, so the key is never world-readable.
    let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(out);
    let mut file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return fail(
                EXIT_FAILED,
                format!("{} already exists; refusing to overwrite a key", out.display()),
            );
        }
        Err(e) => return fail(EXIT_FAILED, format!("cannot create {}: {e}", out.display())),
    };
    if let Err(e) = file.write_all(text.as_bytes()).and_then(|()| file.sync_all()) {
        let _ = std::fs::remove_file(out);
        return fail(EXIT_FAILED, format!("cannot write {}: {e}", out.display()));
    }
    ExitCode::SUCCESS
}
