//! `varta-collector`: an OpenTelemetry-style collector for VLP heartbeats.
//!
//! Exit status: 0 after a clean shutdown (or a valid config with
//! `validate`), 2 for a configuration error, 1 for any other failure.

mod config;
mod counter_dump;
mod health;
mod logging;
#[cfg(test)]
mod metric_docs;
mod notify;
mod pidfile;
mod pipeline;
mod registry;
mod reload;
mod reload_outcome;
mod runtime;
mod signals;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use config::Config;

#[derive(Debug, Parser)]
#[command(name = "varta-collector", version, about = "Process-liveness collector for VLP heartbeats")]
struct Cli {
    /// Configuration file (YAML). Without it the embedded default is used.
    /// Given several times, later files merge over earlier ones (mappings
    /// key by key; lists and scalars replaced whole).
    #[arg(long, global = true)]
    config: Vec<PathBuf>,
    /// Overrides one value after the files: `processors::tracker::threshold=3s`
    /// (or `processors.tracker.threshold=3s`); the value is read as YAML.
    #[arg(long = "set", global = true, value_name = "KEY::PATH=VALUE")]
    set: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the collector (the default).
    Run,
    /// Check a configuration without starting anything.
    Validate,
    /// List the component types this build knows.
    Components,
    /// Print the embedded default configuration.
    DefaultConfig,
    /// Print the configuration the `--config` files and `--set` overrides
    /// merge into (`${env:…}` references unresolved).
    PrintConfig,
    /// Ask a running collector to reload its configuration (SIGHUP).
    Reload {
        /// The collector's pid.
        #[arg(long, conflicts_with = "pid_file")]
        pid: Option<i32>,
        /// A file holding it (`service.pid_file`).
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Recovery audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check audit files (oldest first: audit.tsv.2 audit.tsv.1 audit.tsv):
    /// headers, sequence continuity and the hash chain. Exit 0 intact, 1
    /// broken (the first broken record is named), 2 unreadable.
    Verify {
        /// The `audit_key_file` of a keyed log (then every file must be keyed).
        #[arg(long)]
        key_file: Option<PathBuf>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn audit_verify(files: &[PathBuf], key_file: Option<&std::path::Path>) -> ExitCode {
    use varta_processor::recovery::audit::{Verdict, verify};
    let key = match key_file.map(varta_secrets::load_key_file).transpose() {
        Ok(key) => key,
        Err(e) => {
            eprintln!("varta-collector: {e}");
            return ExitCode::from(2);
        }
    };
    match verify(files, key.as_ref()) {
        Ok(Verdict::Intact { records, torn_tail }) => {
            let note = if torn_tail {
                " (the newest file ends in a torn record, ignored: a crash mid-write)"
            } else {
                ""
            };
            println!("intact: {records} records{note}");
            ExitCode::SUCCESS
        }
        Ok(Verdict::Broken { file, line, seq, reason }) => {
            let seq = seq.map_or_else(|| "?".to_owned(), |s| s.to_string());
            println!("broken: {}:{line} (record {seq}): {reason}", file.display());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("varta-collector: cannot read audit file: {e}");
            ExitCode::from(2)
        }
    }
}

const EXIT_CONFIG: u8 = 2;

fn load(origin: &config::Origin) -> Result<Config, ExitCode> {
    Config::load(origin).map_err(|e| {
        eprintln!("varta-collector: configuration error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let origin = config::Origin { files: cli.config, sets: cli.set };
    match cli.command.unwrap_or(Command::Run) {
        Command::Components => {
            print!("{}", config::components_listing());
            ExitCode::SUCCESS
        }
        Command::Audit { command: AuditCommand::Verify { files, key_file } } => {
            audit_verify(&files, key_file.as_deref())
        }
        Command::Reload { pid, pid_file } => send_reload(pid, pid_file.as_deref()),
        Command::DefaultConfig => {
            print!("{}", config::EMBEDDED_DEFAULT);
            ExitCode::SUCCESS
        }
        Command::PrintConfig => match origin.merged_text() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("varta-collector: configuration error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Validate => match load(&origin) {
            Ok(c) => match c.check_files().and_then(|()| c.check_recovery_targets()) {
                Ok(()) => {
                    for unused in c.unused_components() {
                        println!("note: {unused} is defined but not used by any pipeline");
                    }
                    println!("{}: configuration is valid", c.source());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("varta-collector: configuration error: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            },
            Err(code) => code,
        },
        Command::Run => match load(&origin) {
            Ok(c) => run(c),
            Err(code) => code,
        },
    }
}

/// `varta-collector reload`: SIGHUP to the collector named by `--pid` or
/// `--pid-file`. Exit 0 sent, 1 no such process, 2 usage.
fn send_reload(pid: Option<i32>, pid_file: Option<&std::path::Path>) -> ExitCode {
    let pid = match (pid, pid_file) {
        (Some(p), _) => p,
        (None, Some(f)) => match pidfile::read_live(f) {
            Ok(p) => p,
            Err(pidfile::Stale::Unreadable(why)) => {
                eprintln!("varta-collector: no pid in {}: {why}", f.display());
                return ExitCode::from(EXIT_CONFIG);
            }
            Err(pidfile::Stale::NotTheCollector(pid)) => {
                eprintln!(
                    "varta-collector: {} is stale: pid {pid} is not the collector that wrote it; nothing signalled",
                    f.display()
                );
                return ExitCode::FAILURE;
            }
        },
        (None, None) => {
            eprintln!("varta-collector: reload needs --pid PID or --pid-file FILE");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if pid <= 1 {
        eprintln!("varta-collector: refusing to signal pid {pid}");
        return ExitCode::from(EXIT_CONFIG);
    }
    // SAFETY: kill(2) with a validated pid and a valid signal.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        eprintln!("varta-collector: cannot signal pid {pid}: {}", std::io::Error::last_os_error());
        return ExitCode::FAILURE;
    }
    println!("reload requested from pid {pid}");
    ExitCode::SUCCESS
}

/// Reads and checks the configuration again, from where it came.
fn load_again(current: &Config) -> Result<Config, config::ConfigError> {
    let mut new = Config::load(current.origin())?;
    new.check_files()?;
    fit_connection_caps(&mut new);
    Ok(new)
}

/// Lowers connection caps that do not fit the open-file limit, warning.
fn fit_connection_caps(config: &mut Config) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit with a valid resource and a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    for warning in config.fit_connection_caps(limit.rlim_cur) {
        tracing::warn!("{warning}");
    }
}

/// Raises the soft open-file limit to the hard one: connection caps,
/// sockets and files add up past the common default of 1,024.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid resource and a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max {
            return;
        }
        let before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            tracing::debug!(from = before, to = limit.rlim_max, "open-file limit raised to the hard limit");
        } else {
            tracing::warn!(
                limit = before,
                "cannot raise the open-file limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Writes the pid file (a failure is logged: the collector runs without it).
fn write_pid_file(path: &std::path::Path) {
    if let Err(e) = pidfile::write(path) {
        tracing::warn!(path = %path.display(), "cannot write the pid file: {e}");
    }
}

/// SIGHUP: reads the configuration again and applies it (see [`reload`]).
/// Returns the configuration now running.
fn reload_config(running: &mut pipeline::Running, current: Config, logs: &logging::LogControl) -> Config {
    let began = std::time::Instant::now();
    let outcome = match load_again(&current) {
        Ok(new) => (reload::apply(running, &current, &new, logs), Some(new)),
        Err(e) => {
            tracing::error!("reload: {e}; the running configuration stays");
            (reload::Outcome::Invalid, None)
        }
    };
    running.reloads.count(outcome.0);
    let elapsed_ms = began.elapsed().as_secs_f64() * 1e3;
    tracing::info!(outcome = outcome.0.label(), elapsed_ms, "reload finished");
    match outcome {
        (o, Some(mut new)) if o.applied() => {
            if new.service.pid_file != current.service.pid_file {
                if let Some(old) = &current.service.pid_file {
                    let _ = std::fs::remove_file(old);
                }
                if let Some(path) = &new.service.pid_file {
                    write_pid_file(path);
                }
            }
            // The log format is not changed live: keep describing what runs.
            new.service.telemetry.logs.format = current.service.telemetry.logs.format;
            new
        }
        _ => current,
    }
}

fn run(mut config: Config) -> ExitCode {
    let logs = match logging::init(&config.service.telemetry.logs) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("varta-collector: configuration error: {}: {e}", config.source());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Sockets systemd bound for us (socket activation): taken before any
    // thread runs, matched to UDS receivers by path.
    varta_receiver::activation::adopt_from_env();
    if let Err(e) = config.check_files() {
        eprintln!("varta-collector: configuration error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if let Err(e) = signals::block() {
        eprintln!("varta-collector: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    raise_open_file_limit();
    fit_connection_caps(&mut config);
    for ignored in &config.env_warnings {
        tracing::warn!("environment: {ignored}");
    }
    for unused in config.unused_components() {
        tracing::warn!("{unused} is defined but not used by any pipeline; it is not started");
    }
    let mut running = match pipeline::start(&config) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("startup failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let notifier = notify::Notifier::from_env();
    running.check_health(config.service.progress_timeout);
    if let Some(path) = &config.service.pid_file {
        write_pid_file(path);
    }
    notifier.send("READY=1");
    tracing::info!(config = config.source(), "collector started");

    let tick = notifier.watchdog_interval().unwrap_or(std::time::Duration::from_secs(1));
    // Why the main loop ended: a termination signal, or a pipeline thread died.
    let stop: Result<i32, ()> = loop {
        match signals::wait(tick) {
            Some(signals::Signal::Terminate(sig)) => break Ok(sig),
            Some(signals::Signal::DumpStats) => {
                running.view.refresh_snapshots();
                counter_dump::dump(&running.view, counter_dump::Dump::All)
            }
            Some(signals::Signal::Hangup) => {
                notifier.send("RELOADING=1");
                config = reload_config(&mut running, config, &logs);
                notifier.send("READY=1");
            }
            None => {}
        }
        if let Some(component) = running.thread_died() {
            tracing::error!(component, "a pipeline thread stopped unexpectedly; shutting down");
            break Err(());
        }
        // Liveness is progress: no WATCHDOG=1 while a stage is stuck, so
        // systemd restarts a wedged collector.
        if running.check_health(config.service.progress_timeout) && notifier.watchdog_interval().is_some() {
            notifier.send("WATCHDOG=1");
        }
    };
    notifier.send("STOPPING=1");
    if let Ok(signal) = stop {
        tracing::info!(signal, "shutting down");
    }
    let (clean, view) = running.shutdown(config.service.shutdown_timeout);
    if let Some(path) = &config.service.pid_file {
        let _ = std::fs::remove_file(path);
    }
    counter_dump::dump(&view, counter_dump::Dump::NonZero);
    if clean && stop.is_ok() {
        tracing::info!("shutdown complete");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
