//! OpenTelemetry resource attributes of local agents, resolved from `/proc`
//! once per agent incarnation and kept where exporters can read them.
//!
//! Promises: the [`AttributeStore`] has one writer (the resolver thread)
//! and any number of readers (exporters, scrapes); the processor never
//! touches it. Memory is bounded: one compact [`Attributes`] (interned
//! string ids, 48 bytes; ~75 bytes per agent with its key and index) per
//! tracked local agent, removed when the agent's
//! state is dropped, and each distinct string once while an agent refers
//! to it (reference counts: a string no agent uses is freed at once, O(1)),
//! up to [`MAX_STRINGS`] / [`MAX_STRING_BYTES`] (beyond, new values are
//! left out and counted). Every value is cut to the store's value limit
//! (default [`DEFAULT_VALUE_LIMIT`] bytes, at a character boundary;
//! counted), like the OpenTelemetry SDK's attribute value length limit, so
//! an agent's 100 KiB `OTEL_SERVICE_NAME` costs 256 bytes. Command
//! arguments are only kept when configured, because they can hold secrets.
//!
//! Names and sources (semantic conventions): `process.pid`,
//! `process.parent_pid` (stat), `process.executable.name` and
//! `process.executable.path` (`exe` link, else `comm`), `process.command`
//! (argv[0]) and `process.command_args` (opt-in), `process.owner` (real uid
//! → `/etc/passwd`), `process.creation.time` (boot time + start ticks),
//! `container.id` and `k8s.pod.uid` (cgroup paths: docker, containerd,
//! CRI-O, systemd and cgroupfs layouts, v1 and v2), `service.name` (the
//! agent's `OTEL_SERVICE_NAME`, else `service.name` of its
//! `OTEL_RESOURCE_ATTRIBUTES`), `service.namespace`,
//! `service.instance.id`, `deployment.environment.name`.

use std::num::NonZeroU32;
use std::sync::{RwLock, RwLockReadGuard};

use hashbrown::{DefaultHashBuilder, HashTable};
use opentelemetry_semantic_conventions::resource::{
    CONTAINER_ID, DEPLOYMENT_ENVIRONMENT_NAME, K8S_POD_UID, PROCESS_COMMAND, PROCESS_COMMAND_ARGS,
    PROCESS_CREATION_TIME, PROCESS_EXECUTABLE_NAME, PROCESS_EXECUTABLE_PATH, PROCESS_OWNER,
    PROCESS_PARENT_PID, SERVICE_INSTANCE_ID, SERVICE_NAME, SERVICE_NAMESPACE,
};
use std::hash::BuildHasher;
use varta_processor::AgentId;

use crate::proc;

/// Distinct strings kept at most.
pub const MAX_STRINGS: usize = 1 << 20;
/// Bytes of distinct strings kept at most.
pub const MAX_STRING_BYTES: usize = 64 << 20;
/// Bytes an attribute value is cut to unless configured otherwise.
pub const DEFAULT_VALUE_LIMIT: usize = 256;

/// An interned string (an index into the store's strings).
pub type Sym = Option<NonZeroU32>;

/// Each distinct string once, while referred to.
#[derive(Debug)]
struct Interner {
    /// `None`: a freed slot (listed in `free`).
    strings: Vec<Option<Box<str>>>,
    refs: Vec<u32>,
    free: Vec<u32>,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    bytes: usize,
    refused: u64,
    truncated: u64,
    value_limit: usize,
}

impl Default for Interner {
    fn default() -> Self {
        Interner {
            strings: Vec::new(),
            refs: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            bytes: 0,
            refused: 0,
            truncated: 0,
            value_limit: DEFAULT_VALUE_LIMIT,
        }
    }
}

/// `s` cut to at most `limit` bytes at a character boundary.
fn cut(s: &str, limit: usize) -> &str {
    if s.len() <= limit {
        return s;
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Interner {
    /// Takes a reference to `s` (cut to the value limit), storing it if new.
    fn intern(&mut self, s: &str) -> Sym {
        if s.is_empty() {
            return None;
        }
        let short = cut(s, self.value_limit);
        if short.len() < s.len() {
            self.truncated += 1;
        }
        let s = short;
        let hash = self.hasher.hash_one(s);
        let strings = &self.strings;
        if let Some(&i) = self.index.find(hash, |&i| strings[i as usize].as_deref() == Some(s)) {
            self.refs[i as usize] += 1;
            return NonZeroU32::new(i + 1);
        }
        if self.live() >= MAX_STRINGS || self.bytes + s.len() > MAX_STRING_BYTES {
            self.refused += 1;
            return None;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.strings[i as usize] = Some(s.into());
                self.refs[i as usize] = 1;
                i
            }
            None => {
                let i = u32::try_from(self.strings.len()).ok()?;
                self.strings.push(Some(s.into()));
                self.refs.push(1);
                i
            }
        };
        self.bytes += s.len();
        let (strings, hasher) = (&self.strings, &self.hasher);
        self.index.insert_unique(hash, i, |&j| hasher.hash_one(strings[j as usize].as_deref().unwrap_or("")));
        NonZeroU32::new(i + 1)
    }

    /// Gives back a reference; the string is freed when none is left.
    fn release(&mut self, sym: Sym) {
        let Some(i) = sym.map(|s| s.get() as usize - 1) else { return };
        let Some(refs) = self.refs.get_mut(i) else { return };
        *refs = refs.saturating_sub(1);
        if *refs > 0 {
            return;
        }
        let Some(s) = self.strings[i].take() else { return };
        let hash = self.hasher.hash_one(&*s);
        if let Ok(entry) = self.index.find_entry(hash, |&j| j as usize == i) {
            entry.remove();
        }
        self.bytes -= s.len();
        self.free.push(i as u32);
    }

    fn live(&self) -> usize {
        self.strings.len() - self.free.len()
    }

    fn get(&self, sym: Sym) -> Option<&str> {
        sym.and_then(|s| self.strings.get(s.get() as usize - 1)).and_then(|s| s.as_deref())
    }

    fn memory_bytes(&self) -> usize {
        self.bytes
            + self.strings.capacity() * std::mem::size_of::<Option<Box<str>>>()
            + self.refs.capacity() * 4
            + self.free.capacity() * 4
            + self.index.allocation_size()
    }
}

/// The attributes of one local agent (strings interned; 48 bytes). The
/// creation time is derived from the agent's start time when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attributes {
    pub parent_pid: u32,
    pub executable_name: Sym,
    pub executable_path: Sym,
    pub command: Sym,
    pub command_args: Sym,
    pub owner: Sym,
    pub container_id: Sym,
    pub pod_uid: Sym,
    pub service_name: Sym,
    pub service_namespace: Sym,
    pub service_instance_id: Sym,
    pub deployment_environment: Sym,
}

impl Attributes {
    fn syms(&self) -> [Sym; 11] {
        [
            self.executable_name,
            self.executable_path,
            self.command,
            self.command_args,
            self.owner,
            self.container_id,
            self.pod_uid,
            self.service_name,
            self.service_namespace,
            self.service_instance_id,
            self.deployment_environment,
        ]
    }
}

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
    if let Some(argv) = proc::cmdline(pid) {
        r.command = argv.first().cloned();
        if include_args {
            r.command_args = Some(argv.join(" "));
        }
    }
    r.owner = proc::status(pid).map(|s| proc::user_name(s.uid).unwrap_or_else(|| s.uid.to_string()));
    if let Some(text) = proc::cgroup(pid) {
        let (container, pod) = parse_cgroup(&text);
        r.container_id = container;
        r.pod_uid = pod;
    }
    apply_otel_env(
        &mut r,
        &proc::environ(pid, |k| k == "OTEL_SERVICE_NAME" || k == "OTEL_RESOURCE_ATTRIBUTES"),
    );
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

/// Attributes of every tracked local agent. See the module docs.
#[derive(Debug)]
pub struct AttributeStore {
    inner: RwLock<Inner>,
    host: Host,
}

impl Default for AttributeStore {
    fn default() -> Self {
        AttributeStore::new(Host::read())
    }
}

/// One stored agent: its key (host pid, start time) and attributes. All
/// `u32`s, so 60 bytes with no padding.
#[derive(Debug, Clone, Copy)]
struct Entry {
    pid: u32,
    start_time: [u32; 2],
    attrs: Attributes,
}

impl Entry {
    fn start_time(&self) -> u64 {
        u64::from(self.start_time[0]) | (u64::from(self.start_time[1]) << 32)
    }
}

/// A slab of entries and an index of slots (4 bytes per bucket): about
/// 75 bytes per agent, where a map of `AgentId → Attributes` costs ~190.
#[derive(Debug, Default)]
struct Inner {
    entries: Vec<Entry>,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    strings: Interner,
}

impl Inner {
    fn hash(&self, pid: u32, start_time: u64) -> u64 {
        self.hasher.hash_one((pid, start_time))
    }

    fn find(&self, pid: u32, start_time: u64) -> Option<usize> {
        let entries = &self.entries;
        self.index
            .find(self.hash(pid, start_time), |&i| {
                let e = &entries[i as usize];
                e.pid == pid && e.start_time() == start_time
            })
            .map(|&i| i as usize)
    }
}

/// Stored agents are local: the key is (host pid, start time).
fn local_key(id: &AgentId) -> Option<(u32, u64)> {
    (id.source == varta_proto::Source::Local).then_some((id.pid, id.start_time))
}

/// A read view of the store (holds its read lock: keep it short).
#[derive(Debug)]
pub struct StoreView<'a> {
    inner: RwLockReadGuard<'a, Inner>,
    host: Host,
}

/// One agent's attributes with its strings.
#[derive(Debug, Clone, Copy)]
pub struct AttributesRef<'a> {
    attrs: &'a Attributes,
    start_time: u64,
    host: Host,
    strings: &'a Interner,
}

impl<'a> AttributesRef<'a> {
    fn s(&self, sym: Sym) -> Option<&'a str> {
        self.strings.get(sym)
    }
    pub fn executable_name(&self) -> Option<&'a str> {
        self.s(self.attrs.executable_name)
    }
    pub fn service_name(&self) -> Option<&'a str> {
        self.s(self.attrs.service_name)
    }
    pub fn container_id(&self) -> Option<&'a str> {
        self.s(self.attrs.container_id)
    }

    /// `process.creation.time` as Unix nanoseconds, when known.
    pub fn creation_time_ns(&self) -> Option<u64> {
        creation_time_ns(self.start_time, self.host)
    }

    /// Every known attribute as `(semantic-convention name, value)`.
    pub fn pairs(&self) -> Vec<(&'static str, AttrValue<'a>)> {
        let a = self.attrs;
        let mut out = Vec::with_capacity(12);
        if a.parent_pid != 0 {
            out.push((PROCESS_PARENT_PID, AttrValue::Int(i64::from(a.parent_pid))));
        }
        let strings = [
            (PROCESS_EXECUTABLE_NAME, a.executable_name),
            (PROCESS_EXECUTABLE_PATH, a.executable_path),
            (PROCESS_COMMAND, a.command),
            (PROCESS_COMMAND_ARGS, a.command_args),
            (PROCESS_OWNER, a.owner),
            (CONTAINER_ID, a.container_id),
            (K8S_POD_UID, a.pod_uid),
            (SERVICE_NAME, a.service_name),
            (SERVICE_NAMESPACE, a.service_namespace),
            (SERVICE_INSTANCE_ID, a.service_instance_id),
            (DEPLOYMENT_ENVIRONMENT_NAME, a.deployment_environment),
        ];
        for (name, sym) in strings {
            if let Some(v) = self.s(sym) {
                out.push((name, AttrValue::Str(v)));
            }
        }
        if let Some(t) = self.creation_time_ns() {
            out.push((PROCESS_CREATION_TIME, AttrValue::UnixNanos(t)));
        }
        out
    }
}

/// What threshold rules (`tracker.thresholds`) read of an agent.
impl varta_processor::AgentAttributes for AttributesRef<'_> {
    fn attribute(&self, key: varta_processor::AttributeKey) -> Option<&str> {
        use varta_processor::AttributeKey as K;
        let a = self.attrs;
        self.s(match key {
            K::ServiceName => a.service_name,
            K::ServiceNamespace => a.service_namespace,
            K::ExecutableName => a.executable_name,
            K::ContainerId => a.container_id,
            K::PodUid => a.pod_uid,
        })
    }
}

/// Unix time of a process start (`start_time` in clock ticks since boot).
pub fn creation_time_ns(start_time: u64, host: Host) -> Option<u64> {
    let boot = host.boot_time_s?;
    let since_boot_ns = u128::from(start_time) * 1_000_000_000 / u128::from(host.clock_ticks.max(1));
    u64::try_from(u128::from(boot) * 1_000_000_000 + since_boot_ns).ok().filter(|&t| t != 0)
}

/// An attribute value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrValue<'a> {
    Str(&'a str),
    Int(i64),
    /// A point in time (render as RFC 3339 for `process.creation.time`).
    UnixNanos(u64),
}

impl StoreView<'_> {
    pub fn get(&self, id: &AgentId) -> Option<AttributesRef<'_>> {
        let (pid, start_time) = local_key(id)?;
        let i = self.inner.find(pid, start_time)?;
        let e = &self.inner.entries[i];
        Some(AttributesRef { attrs: &e.attrs, start_time, host: self.host, strings: &self.inner.strings })
    }

    pub fn len(&self) -> usize {
        self.inner.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.entries.is_empty()
    }
}

impl AttributeStore {
    pub fn new(host: Host) -> AttributeStore {
        AttributeStore { inner: RwLock::default(), host }
    }

    /// Values are cut to `limit` bytes (at least 1).
    pub fn with_value_limit(self, limit: usize) -> AttributeStore {
        self.inner.write().unwrap_or_else(|p| p.into_inner()).strings.value_limit = limit.max(1);
        self
    }

    pub fn read(&self) -> StoreView<'_> {
        StoreView {
            inner: self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner()),
            host: self.host,
        }
    }

    /// Stores `r` for `id` (resolver thread). Network agents are not stored.
    pub fn insert(&self, id: AgentId, r: &Resolved) {
        let Some((pid, start_time)) = local_key(&id) else { return };
        let mut guard = self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let inner = &mut *guard;
        let s = &mut inner.strings;
        let mut i = |v: &Option<String>| v.as_deref().and_then(|v| s.intern(v));
        let attrs = Attributes {
            parent_pid: r.parent_pid,
            executable_name: i(&r.executable_name),
            executable_path: i(&r.executable_path),
            command: i(&r.command),
            command_args: i(&r.command_args),
            owner: i(&r.owner),
            container_id: i(&r.container_id),
            pod_uid: i(&r.pod_uid),
            service_name: i(&r.service_name),
            service_namespace: i(&r.service_namespace),
            service_instance_id: i(&r.service_instance_id),
            deployment_environment: i(&r.deployment_environment),
        };
        if let Some(at) = inner.find(pid, start_time) {
            let old = std::mem::replace(&mut inner.entries[at].attrs, attrs);
            for sym in old.syms() {
                inner.strings.release(sym);
            }
            return;
        }
        let Ok(slot) = u32::try_from(inner.entries.len()) else { return };
        let entry = Entry { pid, start_time: [start_time as u32, (start_time >> 32) as u32], attrs };
        inner.entries.push(entry);
        let hash = inner.hash(pid, start_time);
        let (entries, hasher) = (&inner.entries, &inner.hasher);
        inner.index.insert_unique(hash, slot, |&j| {
            let e = &entries[j as usize];
            hasher.hash_one((e.pid, e.start_time()))
        });
    }

    /// Forgets `id` (its state was dropped).
    pub fn remove(&self, id: &AgentId) {
        let Some((pid, start_time)) = local_key(id) else { return };
        let mut guard = self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let inner = &mut *guard;
        let Some(at) = inner.find(pid, start_time) else { return };
        let hash = inner.hash(pid, start_time);
        if let Ok(entry) = inner.index.find_entry(hash, |&i| i as usize == at) {
            entry.remove();
        }
        let last = inner.entries.len() - 1;
        let gone = inner.entries.swap_remove(at);
        for sym in gone.attrs.syms() {
            inner.strings.release(sym);
        }
        if at != last {
            // The last entry moved into `at`: repoint its index slot.
            let moved = inner.entries[at];
            let moved_hash = inner.hash(moved.pid, moved.start_time());
            if let Some(slot) = inner.index.find_mut(moved_hash, |&i| i as usize == last) {
                *slot = at as u32;
            }
        }
    }

    /// Values cut to the value limit so far.
    pub fn truncated(&self) -> u64 {
        self.read().inner.strings.truncated
    }

    /// `(agents, distinct strings, strings refused, bytes held)`.
    pub fn usage(&self) -> (usize, usize, u64, usize) {
        let view = self.read();
        let i = &*view.inner;
        let bytes = i.entries.capacity() * std::mem::size_of::<Entry>()
            + i.index.allocation_size()
            + i.strings.memory_bytes();
        (i.entries.len(), i.strings.live(), i.strings.refused, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use varta_proto::Source;

    fn id(pid: u32) -> AgentId {
        AgentId { source: Source::Local, pid, start_time: u64::from(pid) }
    }

    #[test]
    fn strings_are_freed_when_no_agent_refers_to_them_and_values_are_cut() {
        let store = AttributeStore::new(Host { clock_ticks: 100, boot_time_s: None });
        let shared = Resolved { executable_name: Some("worker".into()), ..Resolved::default() };
        store.insert(id(1), &shared);
        let (_, start_strings, _, start_bytes) = store.usage();
        // Churn: 10,000 short-lived agents, each with values of its own
        // (every tenth a 100 KiB service name).
        for pid in 2..10_002u32 {
            let r = Resolved {
                executable_name: Some("worker".into()),
                service_name: Some(format!(
                    "job-{pid}-{}",
                    "x".repeat(if pid % 10 == 0 { 100 << 10 } else { 300 })
                )),
                command: Some(format!("/bin/job --run {pid}")),
                ..Resolved::default()
            };
            store.insert(id(pid), &r);
            let view = store.read();
            let name = view.get(&id(pid)).and_then(|a| a.service_name()).map(str::len);
            assert_eq!(name, Some(DEFAULT_VALUE_LIMIT), "cut to the limit");
            drop(view);
            store.remove(&id(pid));
        }
        let (agents, strings, refused, bytes) = store.usage();
        assert_eq!((agents, strings, refused), (1, start_strings, 0), "back to the start");
        assert!(bytes <= start_bytes + 64 * 1024, "only slot capacity remains: {bytes} vs {start_bytes}");
        assert_eq!(store.truncated(), 10_000);
        // A re-resolved agent gives back what it no longer uses.
        store.insert(id(1), &Resolved { executable_name: Some("renamed".into()), ..Resolved::default() });
        assert_eq!(store.usage().1, 1);
        assert_eq!(store.read().get(&id(1)).and_then(|a| a.executable_name()), Some("renamed"));
        // Cuts respect character boundaries.
        assert_eq!(cut("ééé", 3), "é");
    }

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

    #[test]
    fn removal_keeps_every_other_entry_findable() {
        let store = AttributeStore::default();
        let r = Resolved { executable_name: Some("x".into()), ..Resolved::default() };
        let id = |pid| AgentId { source: Source::Local, pid, start_time: u64::from(pid) << 33 };
        for pid in 1..=100 {
            store.insert(id(pid), &r);
        }
        for pid in (1..=100).step_by(3) {
            store.remove(&id(pid));
        }
        let view = store.read();
        for pid in 1..=100 {
            assert_eq!(view.get(&id(pid)).is_some(), (pid - 1) % 3 != 0, "pid {pid}");
        }
        assert_eq!(view.len(), 66);
        let net = AgentId { source: Source::Ip("10.0.0.1".parse().expect("ip")), pid: 5, start_time: 0 };
        drop(view);
        store.insert(net, &r);
        assert!(store.read().get(&net).is_none(), "network agents are not stored");
    }

    #[test]
    fn own_process_resolves_and_strings_are_shared() {
        let me = std::process::id();
        let r = resolve(me, Host::read(), false).expect("we exist");
        assert!(r.executable_name.is_some() && r.command.is_some() && r.owner.is_some());
        assert_eq!(r.command_args, None, "arguments only when asked");
        assert!(r.creation_time_ns > 1_600_000_000 * 1_000_000_000, "{}", r.creation_time_ns);
        let with_args = resolve(me, Host::read(), true).expect("we exist");
        assert!(with_args.command_args.is_some());

        let store = AttributeStore::default();
        for pid in 2..1002 {
            store.insert(AgentId { source: Source::Local, pid, start_time: 1 }, &r);
        }
        let (agents, strings, refused, bytes) = store.usage();
        assert_eq!(agents, 1000);
        assert!(strings <= 4, "each distinct string once: {strings}");
        assert_eq!(refused, 0);
        assert!(bytes / agents < 120, "{} bytes per agent", bytes / agents);
        let view = store.read();
        let a = view.get(&AgentId { source: Source::Local, pid: 7, start_time: 1 }).expect("stored");
        assert_eq!(a.executable_name(), r.executable_name.as_deref());
        assert!(a.pairs().iter().any(|(k, _)| *k == "process.owner"));
        drop(view);
        store.remove(&AgentId { source: Source::Local, pid: 7, start_time: 1 });
        assert_eq!(store.usage().0, 999);
    }
}
