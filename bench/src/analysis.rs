//! Stall-detection latency from a load report and an event file.
//!
//! latency = (time the collector emitted the stall event) − (last beat sent
//! by the stopped agent + threshold). Both sides are CLOCK_MONOTONIC ns on
//! the same machine. The last-beat time is taken just before the `sendmmsg`
//! call that carried the frame, so it can never be later than the
//! collector's receipt (the latency is conservative by the few microseconds
//! a batched send takes).
//!
//! Clock origin: our collector writes absolute CLOCK_MONOTONIC ns;
//! varta-watch 0.2 writes ns since its own start. When the event file has
//! the beat line of a stopped agent's last frame (same pid and nonce), the
//! origin is estimated as `max over those agents (last beat sent − its beat
//! line)`: each term is `origin − transit`, so the maximum is the origin
//! less the smallest transit time (microseconds on an idle loopback). The
//! estimate is applied only when it is larger than one second (i.e. the
//! file is not absolute).

use std::collections::HashMap;
use std::io::BufRead;

/// Summary of the stall latencies of one run, in microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct StallSummary {
    pub stopped: usize,
    pub detected: usize,
    /// Stall events for agents that were never stopped (beats lost or late).
    pub false_stalls: usize,
    pub min_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// The clock origin added to the file's timestamps (0 when absolute).
    pub origin_ns: u64,
    /// Lateness against the collector's own deadline — its stall line
    /// minus (its beat line of the agent's last frame + the threshold) —
    /// the scheduler alone, without the path from sender to processor.
    /// NaN unless the event file has beat lines (`beats: true`).
    pub scheduler_p50_us: f64,
    pub scheduler_p99_us: f64,
}

/// Nearest-rank percentile of sorted values (`q` in 0..=1).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of unsorted values (NaN when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

/// The last frame a stopped agent sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastBeat {
    /// CLOCK_MONOTONIC ns just before it was sent.
    pub sent_ns: u64,
    pub nonce: u64,
}

/// Computes stall latencies. `stopped` maps pid → last beat; `events`
/// is the TSV event file (`observer_ns kind pid …`); only the first stall
/// of each stopped pid after its last beat counts.
pub fn stall_latency(
    stopped: &HashMap<u32, LastBeat>,
    events: impl BufRead,
    threshold_ns: u64,
) -> std::io::Result<StallSummary> {
    // Per stopped pid: the beat line of its last frame, and its stall lines.
    let mut last_beat_line: HashMap<u32, u64> = HashMap::with_capacity(stopped.len());
    // (pid, observer time, the threshold it ran under)
    let mut stalls: Vec<(u32, u64, u64)> = Vec::new();
    let mut false_stalls = 0;
    for line in events.lines() {
        let line = line?;
        let mut cols = line.split('\t');
        let (Some(ts), Some(kind), Some(pid), nonce, _, detail) =
            (cols.next(), cols.next(), cols.next(), cols.next(), cols.next(), cols.next())
        else {
            continue;
        };
        if kind != "stall" && kind != "beat" {
            continue;
        }
        let (Ok(ts), Ok(pid)) = (ts.parse::<u64>(), pid.parse::<u32>()) else { continue };
        match (kind, stopped.get(&pid)) {
            ("beat", Some(last)) if nonce.and_then(|n| n.parse::<u64>().ok()) == Some(last.nonce) => {
                last_beat_line.insert(pid, ts);
            }
            ("stall", Some(_)) => {
                // Per-agent deadlines: the line names its own threshold.
                let own = detail.and_then(|d| {
                    d.split(';').find_map(|kv| kv.strip_prefix("threshold_ns=")?.parse::<u64>().ok())
                });
                stalls.push((pid, ts, own.unwrap_or(threshold_ns)));
            }
            ("stall", None) => false_stalls += 1,
            _ => {}
        }
    }
    let origin = last_beat_line
        .iter()
        .filter_map(|(pid, &obs)| stopped.get(pid)?.sent_ns.checked_sub(obs))
        .max()
        .filter(|&o| o > 1_000_000_000)
        .unwrap_or(0);
    let mut first: HashMap<u32, (u64, u64)> = HashMap::with_capacity(stopped.len());
    for (pid, ts, threshold) in stalls {
        let ts = ts + origin;
        if let Some(last) = stopped.get(&pid)
            && ts >= last.sent_ns
        {
            first.entry(pid).or_insert((ts, threshold));
        }
    }
    let mut lat: Vec<f64> = first
        .iter()
        .filter_map(|(pid, &(ts, threshold))| {
            let last = stopped.get(pid)?.sent_ns;
            Some((ts as f64 - (last + threshold) as f64) / 1e3)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let mut own: Vec<f64> = first
        .iter()
        .filter_map(|(pid, &(ts, threshold))| {
            let beat = last_beat_line.get(pid)? + origin;
            Some((ts as f64 - (beat + threshold) as f64) / 1e3)
        })
        .collect();
    own.sort_by(f64::total_cmp);
    Ok(StallSummary {
        stopped: stopped.len(),
        detected: lat.len(),
        false_stalls,
        min_us: lat.first().copied().unwrap_or(f64::NAN),
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
        max_us: lat.last().copied().unwrap_or(f64::NAN),
        origin_ns: origin,
        scheduler_p50_us: percentile(&own, 0.50),
        scheduler_p99_us: percentile(&own, 0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_median() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn latency_uses_first_stall_after_last_beat() {
        let stopped: HashMap<u32, LastBeat> = [(1000, 5_000_000), (1001, 6_000_000)]
            .into_iter()
            .map(|(p, t)| (p, LastBeat { sent_ns: t, nonce: 9 }))
            .collect();
        let events = "1000\tstall\t1000\t3\tstall\t-\n\
                      6000500\tstall\t1000\t9\tstall\t-\n\
                      7000500\tstall\t1000\t9\tstall\t-\n\
                      6100000\tbeat\t1001\t9\tok\t0\n\
                      6500000\tstall\t2000\t1\tstall\t-\n";
        let s = stall_latency(&stopped, events.as_bytes(), 1_000_000).unwrap();
        assert_eq!((s.stopped, s.detected, s.false_stalls), (2, 1, 1));
        assert_eq!(s.p50_us, 0.5);
        assert_eq!(s.origin_ns, 0);
    }

    #[test]
    fn relative_clock_is_calibrated_from_beat_lines() {
        // The file's clock started at 10 s; beats sent at 15 s and 16 s arrived 2 µs later.
        let stopped: HashMap<u32, LastBeat> = [(1, 15_000_000_000), (2, 16_000_000_000)]
            .into_iter()
            .map(|(p, t)| (p, LastBeat { sent_ns: t, nonce: 4 }))
            .collect();
        // Beat lines of earlier nonces (or lost last beats) must not move the origin.
        let events = "4000000000\tbeat\t1\t3\tok\t0\n\
                      5000002000\tbeat\t1\t4\tok\t0\n\
                      6000005000\tbeat\t2\t4\tok\t0\n\
                      6000300000\tstall\t1\t1\tstall\t-\n\
                      7000305000\tstall\t2\t1\tstall\t-\n";
        let s = stall_latency(&stopped, events.as_bytes(), 1_000_000_000).unwrap();
        assert_eq!(s.origin_ns, 9_999_998_000);
        assert_eq!(s.detected, 2);
        assert_eq!((s.min_us, s.max_us), (298.0, 303.0));
        // Against the collector's own beat lines: agent 1's stall came
        // 298 µs after its deadline, agent 2's 300 µs after.
        assert_eq!((s.scheduler_p50_us, s.scheduler_p99_us), (298.0, 300.0));
    }

    #[test]
    fn without_beat_lines_the_scheduler_lateness_is_unknown() {
        let stopped: HashMap<u32, LastBeat> = [(1, (5_000_000, 9))]
            .into_iter()
            .map(|(p, (t, nonce))| (p, LastBeat { sent_ns: t, nonce }))
            .collect();
        let s = stall_latency(&stopped, "6000500\tstall\t1\t9\tstall\t-\n".as_bytes(), 1_000_000).unwrap();
        assert_eq!(s.detected, 1);
        assert!(s.scheduler_p50_us.is_nan() && s.scheduler_p99_us.is_nan());
    }
}
