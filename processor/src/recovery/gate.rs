//! Which target a recovery command may name: the gate between what is
//! known about a stalled agent and the argv that acts on it. Pure (no I/O):
//! the facts are read by the caller, the decision is made here.
//!
//! Promises, per placeholder:
//!
//! | placeholder | value from | who can influence it | network agents |
//! |---|---|---|---|
//! | `{unit}` | the agent's cgroup path, under `trusted_slices` | the operator's system (root) | refused |
//! | `{container}`, `{pod}` | a container runtime's cgroup layout | the runtime | refused |
//! | `{pid}`, `{start_time}` | the kernel (`SO_PEERCRED`, `/proc`) | nobody | refused |
//! | `{frame_pid}` | the frame (checked against the kernel for UDS) | the agent, in its own pid namespace | refused |
//! | `{service}` | the agent's `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` | **the agent** | refused |
//! | `{exe}` | basename of `/proc/<pid>/exe` (else `comm`) | **the agent** (it names its binary) | refused |
//! | `{source}`, `{transport}` | the socket | the sender's address | usable |
//! | `{incident}`, `{cause}` | the collector | nobody | usable |
//!
//! * A network agent's pid is a claim (plain UDP proves nothing; every
//!   master-key agent holds the master key), so every identity placeholder
//!   is refused for it (`unverified_identity`).
//! * What the agent declares (`{service}`, `{exe}`) selects a target only
//!   through `allowed_values`; without a list for it every such run is
//!   refused (`not_allowed`). A list may also narrow a trusted selector.
//! * Every value passes the value rule ([`super::argv::check_value`])
//!   *before* the allow-list, so a listed-out value is a plain word that
//!   may be audited as it is.
//! * A trusted selector with no value for this agent (not in a service
//!   under a trusted slice, not in a runtime's container) refuses the run
//!   (`no_target`): nothing is guessed.

use std::collections::BTreeMap;

use varta_proto::Transport;

use super::argv::{self, UnsafeValue};
use super::{RecoveryConfig, RecoveryRefusal};
use crate::agent::AgentRef;
use crate::inspect::Cause;
use crate::threshold::Glob;

/// A placeholder of an `exec` template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Placeholder {
    Pid,
    FramePid,
    StartTime,
    Incident,
    Source,
    Transport,
    Cause,
    Service,
    Exe,
    Unit,
    Container,
    Pod,
}

impl Placeholder {
    pub const ALL: [Placeholder; 12] = [
        Placeholder::Pid,
        Placeholder::FramePid,
        Placeholder::StartTime,
        Placeholder::Incident,
        Placeholder::Source,
        Placeholder::Transport,
        Placeholder::Cause,
        Placeholder::Service,
        Placeholder::Exe,
        Placeholder::Unit,
        Placeholder::Container,
        Placeholder::Pod,
    ];

    /// `{name}` as written in a template.
    pub const fn token(self) -> &'static str {
        match self {
            Placeholder::Pid => "{pid}",
            Placeholder::FramePid => "{frame_pid}",
            Placeholder::StartTime => "{start_time}",
            Placeholder::Incident => "{incident}",
            Placeholder::Source => "{source}",
            Placeholder::Transport => "{transport}",
            Placeholder::Cause => "{cause}",
            Placeholder::Service => "{service}",
            Placeholder::Exe => "{exe}",
            Placeholder::Unit => "{unit}",
            Placeholder::Container => "{container}",
            Placeholder::Pod => "{pod}",
        }
    }

    /// The name without braces (the key in `allowed_values`).
    pub fn name(self) -> &'static str {
        let t = self.token();
        &t[1..t.len() - 1]
    }

    pub fn parse_token(token: &str) -> Option<Placeholder> {
        Placeholder::ALL.into_iter().find(|p| p.token() == token)
    }

    pub fn parse_name(name: &str) -> Option<Placeholder> {
        Placeholder::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Values the agent itself decides: they select only through an allow-list.
    pub const fn declared_by_agent(self) -> bool {
        matches!(self, Placeholder::Service | Placeholder::Exe)
    }

    /// Values that are only as good as the agent's verified identity.
    pub const fn needs_verified_identity(self) -> bool {
        !matches!(
            self,
            Placeholder::Incident | Placeholder::Source | Placeholder::Transport | Placeholder::Cause
        )
    }

    /// Selectors the kernel or a runtime keeps (`no_target` when absent).
    pub const fn trusted_selector(self) -> bool {
        matches!(self, Placeholder::Unit | Placeholder::Container | Placeholder::Pod)
    }
}

/// What is known about a stalled agent's target, read right before the
/// decision (see [`super::AgentLabels`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetFacts {
    /// Declared by the agent.
    pub service: Option<String>,
    /// Chosen by the agent (the name of its binary).
    pub exe: Option<String>,
    /// Trusted selectors (see `varta_agents::cgroup`).
    pub unit: Option<String>,
    pub container: Option<String>,
    pub pod: Option<String>,
}

/// Why the gate refused a run: a reason plus a detail for the audit record
/// (it names the placeholder; the value only where the value rule passed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub why: RecoveryRefusal,
    pub detail: String,
}

impl Refused {
    fn new(why: RecoveryRefusal, detail: String) -> Refused {
        Refused { why, detail }
    }
}

/// The stall being decided.
#[derive(Debug, Clone, Copy)]
pub struct Stall<'a> {
    pub agent: &'a AgentRef,
    pub incident: u64,
    pub cause: Option<Cause>,
    pub facts: &'a TargetFacts,
}

/// The allow-lists of one recovery processor, compiled once.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    allowed: BTreeMap<Placeholder, Vec<Glob>>,
}

impl Gate {
    /// From a validated config (invalid entries were refused by validation).
    pub fn new(config: &RecoveryConfig) -> Gate {
        let allowed = config
            .allowed_values
            .iter()
            .filter_map(|(name, patterns)| {
                let globs = patterns.iter().filter_map(|p| Glob::new(p).ok()).collect();
                Some((Placeholder::parse_name(name)?, globs))
            })
            .collect();
        Gate { allowed }
    }

    /// The command for `stall`, or why it may not run.
    pub fn argv(&self, exec: &[String], stall: &Stall<'_>) -> Result<Vec<String>, Refused> {
        let mut values: Vec<(&str, String)> = Vec::new();
        for token in exec.iter().flat_map(|arg| argv::placeholders(arg)) {
            if !values.iter().any(|(t, _)| *t == token) {
                let value = self.value(token, stall)?;
                values.push((token, value));
            }
        }
        let lookup =
            |t: &str| values.iter().find(|(k, _)| *k == t).map(|(_, v)| v.clone()).unwrap_or_default();
        argv::build(exec, lookup).map_err(|(t, why)| unsafe_value(t, why))
    }

    fn value(&self, token: &str, stall: &Stall<'_>) -> Result<String, Refused> {
        // Validation refuses unknown placeholders; never pass one on.
        let Some(p) = Placeholder::parse_token(token) else {
            return Err(unsafe_value(token, UnsafeValue::Empty));
        };
        let a = stall.agent;
        if p.needs_verified_identity() && a.transport != Transport::Uds {
            return Err(Refused::new(
                RecoveryRefusal::UnverifiedIdentity,
                format!(
                    "unverified_identity: {token} of a {} agent (its pid is a claim)",
                    a.transport.as_str()
                ),
            ));
        }
        let f = stall.facts;
        let value = match p {
            Placeholder::Pid => Some(a.host_pid.to_string()),
            Placeholder::FramePid => Some(a.frame_pid.to_string()),
            Placeholder::StartTime => Some(a.id.start_time.to_string()),
            Placeholder::Incident => Some(stall.incident.to_string()),
            Placeholder::Source => Some(a.id.source.to_string()),
            Placeholder::Transport => Some(a.transport.as_str().to_owned()),
            Placeholder::Cause => Some(stall.cause.unwrap_or(Cause::Unknown).label().to_owned()),
            Placeholder::Service => f.service.clone(),
            Placeholder::Exe => f.exe.clone(),
            Placeholder::Unit => f.unit.clone(),
            Placeholder::Container => f.container.clone(),
            Placeholder::Pod => f.pod.clone(),
        };
        let value = match value {
            Some(v) => v,
            None if p.trusted_selector() => {
                return Err(Refused::new(
                    RecoveryRefusal::NoTarget,
                    format!("no_target: {token} has no trusted value for this agent"),
                ));
            }
            None => String::new(),
        };
        argv::check_value(&value).map_err(|why| unsafe_value(token, why))?;
        match self.allowed.get(&p) {
            Some(globs) if globs.iter().any(|g| g.matches(&value)) => Ok(value),
            // Passed the value rule: a plain word, safe to audit as it is.
            Some(_) => Err(Refused::new(
                RecoveryRefusal::NotAllowed,
                format!("not_allowed: {token}={value} is not in allowed_values.{}", p.name()),
            )),
            None if p.declared_by_agent() => Err(Refused::new(
                RecoveryRefusal::NotAllowed,
                format!(
                    "not_allowed: {token}={value}: the agent chooses it and allowed_values.{} is not set",
                    p.name()
                ),
            )),
            None => Ok(value),
        }
    }
}

fn unsafe_value(token: &str, why: UnsafeValue) -> Refused {
    // Name the placeholder, never the value: it is the agent's.
    Refused::new(RecoveryRefusal::UnsafeValue, format!("unsafe_value: {token} {}", why.label()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::AgentId;
    use varta_proto::Source;

    fn config(exec: &[&str], allowed: &[(&str, &[&str])]) -> RecoveryConfig {
        let allowed: BTreeMap<String, Vec<String>> = allowed
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
            .collect();
        serde_json::from_value(serde_json::json!({
            "exec": exec,
            "audit_file": "/tmp/audit.tsv",
            "allowed_values": allowed,
        }))
        .expect("config")
    }

    fn agent(transport: Transport) -> AgentRef {
        let source =
            if transport == Transport::Uds { Source::Local } else { Source::Ip([127, 0, 0, 1].into()) };
        AgentRef { id: AgentId { source, pid: 42, start_time: 7 }, frame_pid: 42, host_pid: 42, transport }
    }

    fn facts(service: &str, unit: Option<&str>) -> TargetFacts {
        TargetFacts {
            service: Some(service.to_owned()),
            exe: Some("sshd".to_owned()),
            unit: unit.map(str::to_owned),
            container: None,
            pod: None,
        }
    }

    fn decide(c: &RecoveryConfig, a: &AgentRef, f: &TargetFacts) -> Result<Vec<String>, RecoveryRefusal> {
        let stall = Stall { agent: a, incident: 9, cause: Some(Cause::Waiting), facts: f };
        Gate::new(c).argv(&c.exec, &stall).map_err(|r| r.why)
    }

    #[test]
    fn hostile_targets_are_refused() {
        use RecoveryRefusal::*;
        let restart_service = config(&["/usr/bin/systemctl", "restart", "--", "{service}.service"], &[]);
        let allow_good = config(
            &["/usr/bin/systemctl", "restart", "--", "{service}.service"],
            &[("service", &["good-*"])],
        );
        let by_unit = config(&["/usr/bin/systemctl", "restart", "--", "{unit}"], &[]);
        let narrowed =
            config(&["/usr/bin/systemctl", "restart", "--", "{unit}"], &[("unit", &["checkout.service"])]);
        let by_exe = config(&["/usr/bin/pkill", "-x", "{exe}"], &[]);
        let by_pid = config(&["/bin/kill", "-TERM", "{pid}"], &[]);
        let by_incident = config(&["/usr/local/bin/page", "{incident}", "{source}", "{cause}"], &[]);
        let uds = agent(Transport::Uds);
        let reboot = facts("systemd-reboot", Some("checkout.service"));
        type Case<'a> = (&'a RecoveryConfig, AgentRef, TargetFacts, Result<&'a [&'a str], RecoveryRefusal>);
        let cases: &[Case<'_>] = &[
            // An agent naming itself after a unit chooses nothing without a list.
            (&restart_service, uds, reboot.clone(), Err(NotAllowed)),
            (&allow_good, uds, reboot.clone(), Err(NotAllowed)),
            (
                &allow_good,
                uds,
                facts("good-svc", None),
                Ok(&["/usr/bin/systemctl", "restart", "--", "good-svc.service"]),
            ),
            // A value breaking the value rule is unsafe before it is listed out.
            (&allow_good, uds, facts("good-*;reboot", None), Err(UnsafeValue)),
            // The unit comes from the kernel, whatever the agent calls itself.
            (&by_unit, uds, reboot.clone(), Ok(&["/usr/bin/systemctl", "restart", "--", "checkout.service"])),
            (&by_unit, uds, facts("x", None), Err(NoTarget)),
            (&narrowed, uds, facts("x", Some("payments.service")), Err(NotAllowed)),
            (
                &narrowed,
                uds,
                reboot.clone(),
                Ok(&["/usr/bin/systemctl", "restart", "--", "checkout.service"]),
            ),
            // The binary's name is the agent's choice.
            (&by_exe, uds, reboot.clone(), Err(NotAllowed)),
            // Network agents: every identity placeholder refused, master key included.
            (&by_pid, agent(Transport::SecureMaster), reboot.clone(), Err(UnverifiedIdentity)),
            (&by_pid, agent(Transport::Udp), reboot.clone(), Err(UnverifiedIdentity)),
            (&by_unit, agent(Transport::SecureShared), reboot.clone(), Err(UnverifiedIdentity)),
            (&allow_good, agent(Transport::SecureMaster), facts("good-svc", None), Err(UnverifiedIdentity)),
            (&by_pid, uds, reboot.clone(), Ok(&["/bin/kill", "-TERM", "42"])),
            // What stays usable for them.
            (
                &by_incident,
                agent(Transport::SecureMaster),
                reboot.clone(),
                Ok(&["/usr/local/bin/page", "9", "127.0.0.1", "waiting"]),
            ),
        ];
        for (i, (c, a, f, want)) in cases.iter().enumerate() {
            let got = decide(c, a, f);
            let want = want.map(|argv| argv.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
            assert_eq!(got, want, "case {i}: {:?} for {:?}", c.exec, a.transport);
        }
    }

    #[test]
    fn a_listed_out_value_is_audited_as_the_plain_word_it_is() {
        let c = config(
            &["/usr/bin/systemctl", "restart", "--", "{service}.service"],
            &[("service", &["good-*"])],
        );
        let f = facts("systemd-reboot", None);
        let a = agent(Transport::Uds);
        let stall = Stall { agent: &a, incident: 1, cause: None, facts: &f };
        let r = Gate::new(&c).argv(&c.exec, &stall).expect_err("refused");
        assert_eq!(r.why, RecoveryRefusal::NotAllowed);
        assert!(r.detail.contains("{service}=systemd-reboot"), "{}", r.detail);
        // An unsafe value is never echoed.
        let f = facts("a;reboot", None);
        let stall = Stall { agent: &a, incident: 1, cause: None, facts: &f };
        let r = Gate::new(&c).argv(&c.exec, &stall).expect_err("refused");
        assert!(!r.detail.contains("reboot"), "{}", r.detail);
    }
}
