//! Trusted recovery selectors from `/proc/<pid>/cgroup`: what the kernel
//! keeps about where a process runs, read the strict way.
//!
//! Promises — a selector has a value only when nobody but the operator's
//! system could have chosen it:
//! * `{unit}`: the systemd `.service` unit whose cgroup *is* the agent's
//!   (cgroup v2, or the v1 `name=systemd` hierarchy), reached from a slice
//!   named in `trusted_slices` through slices only. Never under
//!   `user.slice` (a user's own manager creates units there), and none
//!   when anything lies below the unit — a delegated sub-cgroup or a
//!   container (a pod under `containerd.service` must never yield
//!   `containerd.service`).
//! * `{container}` / `{pod}`: only from layouts a container runtime owns,
//!   and only from the runtime-owned segment (the outermost one: deeper
//!   segments are the container's own to create): docker with either
//!   cgroup driver (`/docker/<id>`, `/system.slice/docker-<id>.scope`),
//!   podman as root (`machine.slice/libpod-<id>.scope`), containerd and
//!   CRI-O under kubepods with either driver, and containerd's
//!   `system.slice/containerd.service/<pod slice>:cri-containerd:<id>`.
//!   Container ids are exactly 64 hex digits, pod uids UUIDs. Rootless
//!   runtimes (under `user.slice`) yield none.
//! * A path seen through a cgroup namespace (relative: `/..` segments)
//!   yields nothing: it does not say where the process really is.
//!
//! This is not the parser of the `container.id` *attribute*
//! ([`crate::attributes::parse_cgroup`]), which labels telemetry and may be
//! lenient; selectors choose what a root command acts on.

/// The trusted selectors of one process (each `None` when its cgroup path
/// gives none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selectors {
    pub unit: Option<String>,
    pub container: Option<String>,
    pub pod: Option<String>,
}

/// The selectors of a `/proc/<pid>/cgroup` text (see the module docs).
pub fn selectors(text: &str, trusted_slices: &[String]) -> Selectors {
    let Some(path) = systemd_path(text) else { return Selectors::default() };
    if !path.starts_with('/') {
        return Selectors::default();
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.iter().any(|s| *s == ".." || *s == ".") {
        return Selectors::default();
    }
    let (container, pod) = runtime(&segments);
    Selectors { unit: unit(&segments, trusted_slices), container, pod }
}

/// The path of the hierarchy systemd manages: the v1 `name=systemd` one
/// when mounted (legacy and hybrid layouts, where systemd tracks units
/// there and mirrors them into the unified one), else the unified one (`0::`).
fn systemd_path(text: &str) -> Option<&str> {
    let mut unified = None;
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if controllers.split(',').any(|c| c == "name=systemd") {
            return Some(path);
        }
        if id == "0" && controllers.is_empty() {
            unified = Some(path);
        }
    }
    unified
}

fn unit(segments: &[&str], trusted_slices: &[String]) -> Option<String> {
    let (first, rest) = segments.split_first()?;
    if *first == "user.slice" || !trusted_slices.iter().any(|s| s == first) {
        return None;
    }
    let at = rest.iter().position(|s| !s.ends_with(".slice"))?;
    match &rest[at..] {
        [unit] if unit.ends_with(".service") && unit_name(unit) => Some((*unit).to_owned()),
        _ => None,
    }
}

/// A systemd unit name: letters, digits and `:_.@-`, not starting with `-`
/// or `.`, and no `\` escapes (kept out of command arguments).
fn unit_name(s: &str) -> bool {
    !s.starts_with(['-', '.'])
        && s.len() <= 255
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b":_.@-".contains(&b))
}

fn runtime(segments: &[&str]) -> (Option<String>, Option<String>) {
    match segments {
        ["docker", id, ..] if hex64(id) => (Some((*id).to_owned()), None),
        ["system.slice", "containerd.service", s, ..] => containerd_systemd(s),
        ["system.slice", scope, ..] => {
            (scoped(scope, &["docker-", "crio-", "cri-containerd-", "libpod-"]), None)
        }
        ["machine.slice", scope, ..] => (scoped(scope, &["libpod-"]), None),
        [root, rest @ ..] if *root == "kubepods" || *root == "kubepods.slice" => kubepods(rest),
        _ => (None, None),
    }
}

/// `kubepods[.slice]/[qos/]pod/container…` with either cgroup driver.
fn kubepods(mut rest: &[&str]) -> (Option<String>, Option<String>) {
    if let Some((qos, after)) = rest.split_first()
        && matches!(
            *qos,
            "besteffort" | "burstable" | "kubepods-besteffort.slice" | "kubepods-burstable.slice"
        )
    {
        rest = after;
    }
    let Some((pod_segment, after)) = rest.split_first() else { return (None, None) };
    let Some(pod) = pod_uid(pod_segment) else { return (None, None) };
    let container = after.first().and_then(|c| {
        hex64(c)
            .then(|| (*c).to_owned())
            .or_else(|| c.strip_prefix("crio-").filter(|id| hex64(id)).map(str::to_owned))
            .or_else(|| scoped(c, &["cri-containerd-", "crio-", "docker-"]))
    });
    (container, Some(pod))
}

/// containerd's systemd-driver layout under its own service:
/// `kubepods-…-pod<uid>.slice:cri-containerd:<id>`.
fn containerd_systemd(segment: &str) -> (Option<String>, Option<String>) {
    let mut parts = segment.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(slice), Some("cri-containerd"), Some(id), None) if hex64(id) => match pod_uid(slice) {
            Some(pod) => (Some(id.to_owned()), Some(pod)),
            None => (None, None),
        },
        _ => (None, None),
    }
}

/// The id of `<prefix><64 hex>.scope`.
fn scoped(segment: &str, prefixes: &[&str]) -> Option<String> {
    let inner = segment.strip_suffix(".scope")?;
    prefixes.iter().find_map(|p| inner.strip_prefix(p)).filter(|id| hex64(id)).map(str::to_owned)
}

fn hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `pod<uuid>` (cgroupfs) or `kubepods[-<qos>]-pod<uuid_underscored>.slice` (systemd).
fn pod_uid(segment: &str) -> Option<String> {
    let raw = match segment.strip_suffix(".slice") {
        Some(slice) => slice.strip_prefix("kubepods-")?.rsplit_once("pod")?.1.replace('_', "-"),
        None => segment.strip_prefix("pod")?.to_owned(),
    };
    let lens: Vec<usize> = raw.split('-').map(str::len).collect();
    let hex = raw.bytes().all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (hex && lens == [8, 4, 4, 4, 12]).then_some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const POD: &str = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901";
    const POD_: &str = "1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901";

    fn of(text: &str) -> Selectors {
        selectors(
            &text.replace("{ID}", ID).replace("{POD}", POD).replace("{POD_}", POD_),
            &["system.slice".to_owned()],
        )
    }

    fn sel(unit: Option<&str>, container: bool, pod: bool) -> Selectors {
        Selectors {
            unit: unit.map(str::to_owned),
            container: container.then(|| ID.to_owned()),
            pod: pod.then(|| POD.to_owned()),
        }
    }

    #[test]
    fn units_only_from_trusted_slices_and_only_when_nothing_lies_below() {
        let cases: &[(&str, Selectors)] = &[
            ("0::/system.slice/checkout.service\n", sel(Some("checkout.service"), false, false)),
            (
                "0::/system.slice/shop.slice/checkout@2.service\n",
                sel(Some("checkout@2.service"), false, false),
            ),
            // cgroup v1: the name=systemd hierarchy decides, not a controller's.
            (
                "12:cpu,cpuacct:/elsewhere.service\n1:name=systemd:/system.slice/checkout.service\n",
                sel(Some("checkout.service"), false, false),
            ),
            // Hybrid: systemd's own v1 hierarchy, whatever the unified one says.
            (
                "1:name=systemd:/system.slice/checkout.service\n0::/\n",
                sel(Some("checkout.service"), false, false),
            ),
            (
                "1:name=systemd:/user.slice/evil.service\n0::/system.slice/x.service\n",
                sel(None, false, false),
            ),
            // A user's own manager creates units under user.slice.
            (
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/sshd.service\n",
                sel(None, false, false),
            ),
            ("0::/user.slice/evil.service\n", sel(None, false, false)),
            // Not a trusted slice (and not a slice at all).
            ("0::/machine.slice/checkout.service\n", sel(None, false, false)),
            ("0::/checkout.service\n", sel(None, false, false)),
            // Delegated sub-cgroups and containers below a unit: never the unit.
            ("0::/system.slice/containerd.service/payload\n", sel(None, false, false)),
            ("0::/system.slice/checkout.service/worker\n", sel(None, false, false)),
            // A scope is not a service.
            ("0::/system.slice/session-3.scope\n", sel(None, false, false)),
            // Seen through a cgroup namespace: relative paths say nothing.
            ("0::/../../system.slice/checkout.service\n", sel(None, false, false)),
            ("0::/..\n", sel(None, false, false)),
            ("0::system.slice/checkout.service\n", sel(None, false, false)),
            ("", sel(None, false, false)),
            ("garbage\n", sel(None, false, false)),
        ];
        for (text, want) in cases {
            assert_eq!(&of(text), want, "{text:?}");
        }
        // trusted_slices widens (and user.slice is never trusted).
        let wide = ["system.slice".to_owned(), "machine.slice".to_owned(), "user.slice".to_owned()];
        assert_eq!(selectors("0::/machine.slice/vm.service\n", &wide).unit.as_deref(), Some("vm.service"));
        assert_eq!(selectors("0::/user.slice/evil.service\n", &wide).unit, None);
    }

    #[test]
    fn containers_and_pods_only_from_runtime_owned_layouts() {
        let cases: &[(&str, Selectors)] = &[
            // docker, cgroupfs and systemd drivers; podman as root.
            ("0::/docker/{ID}\n", sel(None, true, false)),
            ("0::/docker/{ID}/sub\n", sel(None, true, false)),
            ("0::/system.slice/docker-{ID}.scope\n", sel(None, true, false)),
            ("0::/machine.slice/libpod-{ID}.scope\n", sel(None, true, false)),
            ("4:name=systemd:/docker/{ID}\n", sel(None, true, false)),
            // kubepods, cgroupfs driver (containerd, CRI-O).
            ("0::/kubepods/besteffort/pod{POD}/{ID}\n", sel(None, true, true)),
            ("0::/kubepods/pod{POD}/crio-{ID}\n", sel(None, true, true)),
            // kubepods, systemd driver (containerd, CRI-O).
            (
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_}.slice/cri-containerd-{ID}.scope\n",
                sel(None, true, true),
            ),
            ("0::/kubepods.slice/kubepods-pod{POD_}.slice/crio-{ID}.scope\n", sel(None, true, true)),
            (
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice\n",
                sel(None, false, true),
            ),
            // containerd's own service with the systemd driver: the container
            // and pod, never containerd.service as a unit.
            (
                "0::/system.slice/containerd.service/kubepods-besteffort-pod{POD_}.slice:cri-containerd:{ID}\n",
                sel(None, true, true),
            ),
            // A user-owned scope named like docker's: nothing (rootless too).
            (
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{ID}.scope\n",
                sel(None, false, false),
            ),
            ("0::/user.slice/user-1000.slice/docker-{ID}.scope\n", sel(None, false, false)),
            // A container's own sub-cgroup cannot name another container.
            (
                "0::/docker/{ID}/docker/ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff\n",
                sel(None, true, false),
            ),
            // Not exactly 64 lowercase hex digits, or an id glued to other text.
            ("0::/docker/{ID}0\n", sel(None, false, false)),
            ("0::/system.slice/docker-x{ID}.scope\n", sel(None, false, false)),
            ("0::/system.slice/my-docker-{ID}.scope\n", sel(None, false, false)),
            // Relative to a cgroup namespace.
            ("0::/../docker/{ID}\n", sel(None, false, false)),
        ];
        for (text, want) in cases {
            assert_eq!(&of(text), want, "{text:?}");
        }
    }
}
