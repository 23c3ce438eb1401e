//! The attribute store: one writer (the resolver thread), any number of
//! readers (exporters, scrapes), one compact entry of interned strings per
//! tracked local agent, removed when the agent's state is dropped.

use std::hash::BuildHasher;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use hashbrown::{DefaultHashBuilder, HashTable};
use opentelemetry_semantic_conventions::resource::{
    CONTAINER_ID, DEPLOYMENT_ENVIRONMENT_NAME, K8S_POD_UID, PROCESS_COMMAND, PROCESS_COMMAND_ARGS,
    PROCESS_CREATION_TIME, PROCESS_EXECUTABLE_NAME, PROCESS_EXECUTABLE_PATH, PROCESS_OWNER,
    PROCESS_PARENT_PID, SERVICE_INSTANCE_ID, SERVICE_NAME, SERVICE_NAMESPACE,
};
use varta_processor::AgentId;

use super::intern::{Interner, Sym};
use super::resolve::{Host, Resolved, creation_time_ns};

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
    pub(super) fn syms(&self) -> [Sym; 11] {
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

/// Attributes of every tracked local agent. See the module docs.
#[derive(Debug)]
pub struct AttributeStore {
    inner: RwLock<Inner>,
    host: Host,
    /// The last stall evidence captured (see [`crate::evidence`]): what
    /// the resolver found out about its agents' stalls, read by exporters.
    evidence: Arc<crate::evidence::EvidenceBoard>,
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
        if let Some(v) = self.s(a.command_args) {
            out.push((PROCESS_COMMAND_ARGS, AttrValue::Args(v)));
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

/// An attribute value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrValue<'a> {
    Str(&'a str),
    /// A string array, its elements NUL-separated (`process.command_args`).
    Args(&'a str),
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
        AttributeStore { inner: RwLock::default(), host, evidence: Arc::default() }
    }

    /// The last stall evidence captured of these agents.
    pub fn evidence(&self) -> Arc<crate::evidence::EvidenceBoard> {
        Arc::clone(&self.evidence)
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

    /// What the store holds now.
    pub fn usage(&self) -> StoreUsage {
        let view = self.read();
        let i = &*view.inner;
        let bytes = i.entries.capacity() * std::mem::size_of::<Entry>()
            + i.index.allocation_size()
            + i.strings.memory_bytes();
        StoreUsage { agents: i.entries.len(), strings: i.strings.live(), refused: i.strings.refused, bytes }
    }
}

/// What an [`AttributeStore`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUsage {
    /// Agents with attributes.
    pub agents: usize,
    /// Distinct strings kept.
    pub strings: usize,
    /// New strings left out at the bounds, so far.
    pub refused: u64,
    /// Bytes held (entries, index, strings).
    pub bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::super::intern::cut;
    use super::*;
    use crate::attributes::{DEFAULT_VALUE_LIMIT, resolve};
    use varta_proto::Source;

    fn id(pid: u32) -> AgentId {
        AgentId { source: Source::Local, pid, start_time: u64::from(pid) }
    }

    #[test]
    fn strings_are_freed_when_no_agent_refers_to_them_and_values_are_cut() {
        let store = AttributeStore::new(Host { clock_ticks: 100, boot_time_s: None });
        let shared = Resolved { executable_name: Some("worker".into()), ..Resolved::default() };
        store.insert(id(1), &shared);
        let StoreUsage { strings: start_strings, bytes: start_bytes, .. } = store.usage();
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
        let StoreUsage { agents, strings, refused, bytes } = store.usage();
        assert_eq!((agents, strings, refused), (1, start_strings, 0), "back to the start");
        assert!(bytes <= start_bytes + 64 * 1024, "only slot capacity remains: {bytes} vs {start_bytes}");
        assert_eq!(store.truncated(), 10_000);
        // A re-resolved agent gives back what it no longer uses.
        store.insert(id(1), &Resolved { executable_name: Some("renamed".into()), ..Resolved::default() });
        assert_eq!(store.usage().strings, 1);
        assert_eq!(store.read().get(&id(1)).and_then(|a| a.executable_name()), Some("renamed"));
        // Cuts respect character boundaries.
        assert_eq!(cut("ééé", 3), "é");
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
        let StoreUsage { agents, strings, refused, bytes } = store.usage();
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
        assert_eq!(store.usage().agents, 999);
    }
}
