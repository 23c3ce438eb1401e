//! `varta-bench-tool`: small parsers `bench/run.sh` uses so that the
//! harness needs nothing beyond a shell, coreutils and awk.
//!
//! * `stall --report R.json --events E.tsv --threshold 1s` → one TSV line:
//!   `stopped detected false_stalls min_us p50_us p99_us max_us origin_ns`
//! * `json --file R.json --key a.b` → the value at that path
//! * `stats --log collector.stderr` → `component<TAB>name<TAB>label<TAB>value`
//!   per counter of the collector's last `varta::stats` dump
//! * `prom --file metrics.txt` → `metric<TAB>sum over all label sets`
//! * `median V…` → the median of the numbers given (`nan` if none)

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;
use varta_bench::analysis::{LastBeat, median, stall_latency};
use varta_proto::duration::parse_duration;

#[derive(Debug, Parser)]
#[command(name = "varta-bench-tool")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Stall-detection latency of the stopped agents in a varta-load report.
    Stall {
        /// One or more load reports (several loads, e.g. one per source address).
        #[arg(long, required = true, num_args = 1..)]
        report: Vec<PathBuf>,
        #[arg(long)]
        events: PathBuf,
        /// The threshold, unless a stall line says its own (`threshold_ns=`).
        #[arg(long, value_parser = parse_duration)]
        threshold: Duration,
    },
    /// Prints one value of a JSON file (dotted path).
    Json {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        key: String,
    },
    /// The collector's self-telemetry counters from its stderr log.
    Stats {
        #[arg(long)]
        log: PathBuf,
    },
    /// Prometheus text exposition summed per metric name.
    Prom {
        #[arg(long)]
        file: PathBuf,
    },
    /// Median of the given numbers.
    Median { values: Vec<String> },
}

fn main() -> ExitCode {
    match run(Args::parse().cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("varta-bench-tool: {e}");
            ExitCode::FAILURE
        }
    }
}

fn open(path: &PathBuf) -> Result<BufReader<File>, String> {
    File::open(path).map(BufReader::new).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_json(path: &PathBuf) -> Result<Value, String> {
    serde_json::from_reader(open(path)?).map_err(|e| format!("{}: {e}", path.display()))
}

fn fmt(x: f64) -> String {
    if x.is_finite() { format!("{x:.1}") } else { "nan".into() }
}

fn run(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Stall { report, events, threshold } => {
            let mut stopped: HashMap<u32, LastBeat> = HashMap::new();
            for report in &report {
                let r = read_json(report)?;
                let list = r["stopped"].as_array().ok_or("report has no `stopped` list")?;
                stopped.extend(
                    list.iter()
                        .filter_map(|s| {
                            let pid = u32::try_from(s["pid"].as_u64()?).ok()?;
                            let last = LastBeat {
                                sent_ns: s["last_beat_ns"].as_u64()?,
                                nonce: s["last_nonce"].as_u64()?,
                            };
                            Some((pid, last))
                        })
                        .filter(|(_, last)| last.sent_ns > 0),
                );
            }
            let s = stall_latency(&stopped, open(&events)?, threshold.as_nanos() as u64)
                .map_err(|e| format!("{}: {e}", events.display()))?;
            println!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                s.stopped,
                s.detected,
                s.false_stalls,
                fmt(s.min_us),
                fmt(s.p50_us),
                fmt(s.p99_us),
                fmt(s.max_us),
                s.origin_ns
            );
            if s.scheduler_p50_us.is_finite() {
                eprintln!(
                    "scheduler lateness (stall line − beat line of the last frame − threshold): p50 {} µs, p99 {} µs",
                    fmt(s.scheduler_p50_us),
                    fmt(s.scheduler_p99_us)
                );
            }
        }
        Cmd::Json { file, key } => {
            let mut v = &read_json(&file)?;
            for part in key.split('.') {
                v = &v[part];
            }
            match v {
                Value::Null => println!("0"),
                Value::String(s) => println!("{s}"),
                other => println!("{other}"),
            }
        }
        Cmd::Stats { log } => {
            let mut last: BTreeMap<(String, String, String), u64> = BTreeMap::new();
            for line in open(&log)?.lines() {
                let line = line.map_err(|e| e.to_string())?;
                let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                let target = v["target"].as_str().or_else(|| v["fields"]["target"].as_str());
                if target != Some("varta::stats") {
                    continue;
                }
                let field = |k: &str| v.get(k).or_else(|| v["fields"].get(k)).cloned().unwrap_or(Value::Null);
                let s = |x: Value| x.as_str().map(str::to_owned).unwrap_or_default();
                let value = field("value").as_u64().unwrap_or(0);
                last.insert((s(field("component")), s(field("name")), s(field("label"))), value);
            }
            for ((c, n, l), v) in last {
                println!("{c}\t{n}\t{l}\t{v}");
            }
        }
        Cmd::Prom { file } => {
            let mut sums: BTreeMap<String, f64> = BTreeMap::new();
            for line in open(&file)?.lines() {
                let line = line.map_err(|e| e.to_string())?;
                if line.starts_with('#') || line.trim().is_empty() {
                    continue;
                }
                let name_end = line.find(['{', ' ']).unwrap_or(line.len());
                let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
                    continue;
                };
                *sums.entry(line[..name_end].to_owned()).or_insert(0.0) += value;
            }
            for (k, v) in sums {
                println!("{k}\t{v}");
            }
        }
        Cmd::Median { values } => {
            let v: Vec<f64> = values.iter().filter_map(|s| s.parse().ok()).collect();
            let m = median(&v);
            // Up to 4 decimals, trailing zeros trimmed (CPU % needs them, counts do not).
            let text = if m.is_finite() { format!("{m:.4}") } else { "nan".into() };
            let text =
                if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
            println!("{text}");
        }
    }
    Ok(())
}
