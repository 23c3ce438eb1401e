//! Reading one local agent's attributes from `/proc` (see the module docs
//! of [`super`] for names and sources). Everything an agent controls here
//! — its environment, command line, binary name — is data for labels.

use opentelemetry_semantic_conventions::resource::{
    DEPLOYMENT_ENVIRONMENT_NAME, SERVICE_INSTANCE_ID, SERVICE_NAME, SERVICE_NAMESPACE,
};

use crate::proc;

/// Everything read for one process, before interning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub start_time: u64,
    pub parent_pid: u32,
    pub creation_time_ns: u64,
    pub executable_name: Option<String>,
    pub executable_path: Option<String>,
    pub command: Option<String>,
    pub command_args: Option<String>,
    pub owner: Option<String>,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    pub service_name: Option<String>,
    pub service_namespace: Option<String>,
    pub service_instance_id: Option<String>,
    pub deployment_environment: Option<String>,
}

/// Host facts read once (clock ticks, boot time).
#[derive(Debug, Clone, Copy)]
pub struct Host {
    pub clock_ticks: u64,
    pub boot_time_s: Option<u64>,
}

impl Host {
    pub fn read() -> Host {
        Host { clock_ticks: proc::clock_ticks(), boot_time_s: proc::boot_time() }
    }
}

/// Reads the attributes of host pid `pid`; `None` when it is gone.
pub fn resolve(pid: u32, host: Host, include_args: bool) -> Option<Resolved> {
    resolve_with(pid, host, include_args, |pid| {
        let env = proc::environ(pid, |k| k == "OTEL_SERVICE_NAME" || k == "OTEL_RESOURCE_ATTRIBUTES");
        Some((proc::cmdline(pid), env))
    })
}

/// [`resolve`], with the reads of the process's memory (command line and
/// environment, which can block on its memory lock) done by `memory`
/// (`None`: not read; the other attributes still are — see
/// [`crate::memory_reads`]).
pub fn resolve_with(
    pid: u32,
    host: Host,
    include_args: bool,
    memory: impl FnOnce(u32) -> Option<crate::memory_reads::Read>,
) -> Option<Resolved> {
    let stat = proc::stat(pid)?;
    let mut r = Resolved { start_time: stat.start_time, parent_pid: stat.ppid, ..Resolved::default() };
    r.creation_time_ns = creation_time_ns(stat.start_time, host).unwrap_or(0);
    r.executable_path = proc::exe(pid);
    r.executable_name = r
        .executable_path
        .as_deref()
        .and_then(|p| p.rsplit('/').next())
        .map(|n| n.trim_end_matches(" (deleted)").to_owned())
        .or_else(|| proc::comm(pid));
    let (argv, env) = memory(pid).unwrap_or_default();
    if let Some(argv) = argv {
        r.command = argv.first().cloned();
        if include_args {
            // NUL-separated: exported as a string array (semantic
            // conventions), never re-split on the spaces an argument holds.
            r.command_args = Some(argv.join("\0"));
        }
    }
    r.owner = proc::status(pid).map(|s| proc::user_name(s.uid).unwrap_or_else(|| s.uid.to_string()));
    if let Some(text) = proc::cgroup(pid) {
        let (container, pod) = parse_cgroup(&text);
        r.container_id = container;
        r.pod_uid = pod;
    }
    apply_otel_env(&mut r, &env);
    Some(r)
}

/// `service.*` and `deployment.environment.name` from an agent's
/// `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` (the former wins for
/// `service.name`, as in the OpenTelemetry SDKs).
pub fn apply_otel_env(r: &mut Resolved, env: &[(String, String)]) {
    for (k, v) in env {
        if k != "OTEL_RESOURCE_ATTRIBUTES" {
            continue;
        }
        for pair in v.split(',') {
            let Some((key, value)) = pair.split_once('=') else { continue };
            let value = percent_decode(value.trim());
            if value.is_empty() {
                continue;
            }
            match key.trim() {
                SERVICE_NAME => r.service_name = Some(value),
                SERVICE_NAMESPACE => r.service_namespace = Some(value),
                SERVICE_INSTANCE_ID => r.service_instance_id = Some(value),
                // The deprecated spelling too (its constant is deprecated).
                DEPLOYMENT_ENVIRONMENT_NAME | "deployment.environment" => {
                    r.deployment_environment = Some(value)
                }
                _ => {}
            }
        }
    }
    if let Some((_, name)) = env.iter().find(|(k, v)| k == "OTEL_SERVICE_NAME" && !v.trim().is_empty()) {
        r.service_name = Some(name.trim().to_owned());
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(container.id, k8s.pod.uid)` from `/proc/<pid>/cgroup` text. Container
/// ids are the 64-hex-digit run in the innermost path segment that has one
/// (`/docker/<id>`, `docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `…:cri-containerd:<id>`); pod uids follow `pod` in a
/// segment (`pod<uid>` or systemd's `…-pod<uid_with_underscores>.slice`).
pub fn parse_cgroup(text: &str) -> (Option<String>, Option<String>) {
    let mut container = None;
    let mut pod = None;
    for line in text.lines() {
        // hierarchy-id:controllers:path — the path may itself contain ':'.
        let Some(path) = line.splitn(3, ':').nth(2) else { continue };
        for segment in path.split('/') {
            if let Some(id) = hex64(segment) {
                container = Some(id);
            }
            if let Some(uid) = pod_uid(segment) {
                pod = Some(uid);
            }
        }
    }
    (container, pod)
}

/// The last run of exactly 64 hex digits in `segment`.
fn hex64(segment: &str) -> Option<String> {
    let b = segment.as_bytes();
    let mut found = None;
    let mut i = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_hexdigit() {
            i += 1;
        }
        if i - start == 64 {
            found = Some(segment[start..i].to_ascii_lowercase());
        }
        i += 1;
    }
    found
}

fn pod_uid(segment: &str) -> Option<String> {
    let at = segment.rfind("pod")?;
    let rest = &segment[at + 3..];
    let uid: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || *c == '-' || *c == '_')
        .map(|c| if c == '_' { '-' } else { c })
        .collect();
    // A UUID: 32 hex digits in 5 dash-separated groups.
    let groups: Vec<&str> = uid.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    (lens == [8, 4, 4, 4, 12]).then(|| uid.to_ascii_lowercase())
}

/// Unix time of a process start (`start_time` in clock ticks since boot).
pub fn creation_time_ns(start_time: u64, host: Host) -> Option<u64> {
    let boot = host.boot_time_s?;
    let since_boot_ns = u128::from(start_time) * 1_000_000_000 / u128::from(host.clock_ticks.max(1));
    u64::try_from(u128::from(boot) * 1_000_000_000 + since_boot_ns).ok().filter(|&t| t != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4c1f1b0c2e4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6";

    #[test]
    fn container_ids_in_every_layout() {
        let layouts = [
            format!("0::/system.slice/docker-{ID}.scope"),
            format!("12:pids:/docker/{ID}"),
            format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901.slice/cri-containerd-{ID}.scope"
            ),
            format!("0::/kubepods/burstable/pod1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901/{ID}"),
            format!("0::/machine.slice/crio-{ID}.scope"),
            format!(
                "0::/system.slice/containerd.service/kubepods-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901.slice:cri-containerd:{ID}"
            ),
        ];
        for text in &layouts {
            let (c, _) = parse_cgroup(text);
            assert_eq!(c.as_deref(), Some(ID), "{text}");
        }
        let (_, pod) = parse_cgroup(&layouts[2]);
        assert_eq!(pod.as_deref(), Some("1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901"));
        let (_, pod) = parse_cgroup(&layouts[3]);
        assert_eq!(pod.as_deref(), Some("1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901"));
        assert_eq!(parse_cgroup("0::/user.slice/user-1000.slice/session-2.scope"), (None, None));
        assert_eq!(parse_cgroup("garbage"), (None, None));
    }

    #[test]
    fn otel_env_sets_service_attributes() {
        let mut r = Resolved::default();
        let env = [
            ("OTEL_RESOURCE_ATTRIBUTES".to_owned(), "service.name=from-attrs,service.namespace=shop,deployment.environment=prod,service.instance.id=a%2Cb".to_owned()),
            ("OTEL_SERVICE_NAME".to_owned(), "checkout".to_owned()),
        ];
        apply_otel_env(&mut r, &env);
        assert_eq!(r.service_name.as_deref(), Some("checkout"), "OTEL_SERVICE_NAME wins");
        assert_eq!(r.service_namespace.as_deref(), Some("shop"));
        assert_eq!(r.deployment_environment.as_deref(), Some("prod"));
        assert_eq!(r.service_instance_id.as_deref(), Some("a,b"));
    }
}
