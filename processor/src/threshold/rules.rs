//! `tracker.thresholds`: an ordered list of rules giving matching agents
//! their own threshold (first match wins).
//!
//! Promises: a rule names at least one key; every key is checked when the
//! configuration is read (unknown keys, bad globs and bad CIDRs are
//! deserialization errors, so they carry the line and column of the value);
//! matching never allocates. Keys an agent proves at its first beat
//! (`transport`, `source`) match from then on; keys read by the resolver
//! (`service.name`, …) match once the agent's attributes are resolved —
//! until then a rule naming one does not match, and the next rule (or the
//! default) holds.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use varta_proto::{Source, Transport};

use crate::agent::AgentRef;

/// An agent attribute a rule can name, read by the resolver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeKey {
    ServiceName,
    ServiceNamespace,
    ExecutableName,
    ContainerId,
    PodUid,
}

/// One agent's resolved attributes, as rules read them (implemented by the
/// resolver's attribute store, outside this crate).
pub trait AgentAttributes {
    fn attribute(&self, key: AttributeKey) -> Option<&str>;
    /// Whether these are an agent's resolved attributes (`false` for
    /// [`Unresolved`]: none were read).
    fn resolved(&self) -> bool {
        true
    }
}

/// No attributes: a network agent, or a local one not resolved yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unresolved;

impl AgentAttributes for Unresolved {
    fn attribute(&self, _: AttributeKey) -> Option<&str> {
        None
    }

    fn resolved(&self) -> bool {
        false
    }
}

/// `match:` of one rule. Every key given must match.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(rename = "service.name", default)]
    pub service_name: Option<Glob>,
    #[serde(rename = "service.namespace", default)]
    pub service_namespace: Option<Glob>,
    #[serde(rename = "process.executable.name", default)]
    pub executable_name: Option<Glob>,
    #[serde(rename = "container.id", default)]
    pub container_id: Option<Glob>,
    #[serde(rename = "k8s.pod.uid", default)]
    pub pod_uid: Option<Glob>,
    #[serde(default)]
    pub transport: Option<TransportSet>,
    #[serde(default)]
    pub source: Option<Cidr>,
}

impl Match {
    fn attribute_globs(&self) -> [(AttributeKey, Option<&Glob>); 5] {
        [
            (AttributeKey::ServiceName, self.service_name.as_ref()),
            (AttributeKey::ServiceNamespace, self.service_namespace.as_ref()),
            (AttributeKey::ExecutableName, self.executable_name.as_ref()),
            (AttributeKey::ContainerId, self.container_id.as_ref()),
            (AttributeKey::PodUid, self.pod_uid.as_ref()),
        ]
    }

    pub fn is_empty(&self) -> bool {
        self.transport.is_none()
            && self.source.is_none()
            && self.attribute_globs().iter().all(|(_, g)| g.is_none())
    }

    /// Whether the rule names a resolver attribute (so it can only match
    /// once the agent is resolved).
    pub fn needs_attributes(&self) -> bool {
        self.attribute_globs().iter().any(|(_, g)| g.is_some())
    }

    /// Whether the keys known from an agent's first beat (`transport`,
    /// `source`) match: the rule may apply once its attributes resolve.
    pub fn matches_known(&self, agent: &AgentRef) -> bool {
        self.transport.is_none_or(|t| t.contains(agent.transport))
            && self.source.is_none_or(|c| c.contains(&agent.id.source))
    }

    pub fn matches(&self, agent: &AgentRef, attrs: &dyn AgentAttributes) -> bool {
        self.transport.is_none_or(|t| t.contains(agent.transport))
            && self.source.is_none_or(|c| c.contains(&agent.id.source))
            && self
                .attribute_globs()
                .iter()
                .all(|(key, glob)| glob.is_none_or(|g| attrs.attribute(*key).is_some_and(|v| g.matches(v))))
    }
}

/// One entry of `tracker.thresholds`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdRule {
    #[serde(rename = "match")]
    pub matches: Match,
    #[serde(deserialize_with = "varta_pipeline::config::duration")]
    pub threshold: Duration,
}

/// The first rule matching `agent`, by index.
pub fn first_match(rules: &[ThresholdRule], agent: &AgentRef, attrs: &dyn AgentAttributes) -> Option<usize> {
    rules.iter().position(|r| r.matches.matches(agent, attrs))
}

/// An exact string or a pattern where `*` matches any run of characters
/// and `?` exactly one. Other glob syntax (`[`, `]`, `{`, `}`, `\`) is
/// refused rather than taken literally, so a pattern never means less than
/// its author thought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

/// Longest accepted pattern (attribute values are cut to 256 bytes by default).
const MAX_GLOB_LEN: usize = 1024;

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("an empty pattern matches nothing; leave the key out instead".into());
        }
        if pattern.len() > MAX_GLOB_LEN {
            return Err(format!("a pattern is at most {MAX_GLOB_LEN} bytes (got {})", pattern.len()));
        }
        if let Some(c) = pattern.chars().find(|c| matches!(c, '[' | ']' | '{' | '}' | '\\')) {
            return Err(format!("`{c}` in {pattern:?}: only `*` and `?` are wildcards"));
        }
        Ok(Glob(pattern.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wildcard matching with one backtrack point (the last `*`): linear in
    /// practice, O(pattern × value) at worst, never allocating.
    pub fn matches(&self, value: &str) -> bool {
        let pat = self.0.as_bytes();
        let val = value.as_bytes();
        let (mut pi, mut vi) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while vi < val.len() {
            if pi < pat.len() && pat[pi] == b'*' {
                pi += 1;
                star = Some((pi, vi));
            } else if pi < pat.len() && pat[pi] == b'?' {
                pi += 1;
                vi += utf8_len(val[vi]);
            } else if pi < pat.len() && pat[pi] == val[vi] {
                pi += 1;
                vi += 1;
            } else if let Some((sp, sv)) = star {
                // Let the last `*` swallow one more character and retry.
                let next = sv + utf8_len(val[sv]);
                star = Some((sp, next));
                pi = sp;
                vi = next;
            } else {
                return false;
            }
        }
        pat[pi..].iter().all(|&b| b == b'*')
    }
}

/// Bytes of the UTF-8 character starting with `lead` (1 for a stray
/// continuation byte, which cannot start a `&str` character anyway).
fn utf8_len(lead: u8) -> usize {
    match lead {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Glob, D::Error> {
        let s = String::deserialize(d)?;
        Glob::new(&s).map_err(serde::de::Error::custom)
    }
}

/// `transport:` of a rule: one transport, or `secure_udp` for both secure
/// UDP kinds (as a receiver's `transport: secure_udp` accepts both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportSet(u8);

impl TransportSet {
    pub fn contains(self, t: Transport) -> bool {
        self.0 & (1 << t as u8) != 0
    }

    pub fn parse(s: &str) -> Option<TransportSet> {
        let bit = |t: Transport| 1u8 << t as u8;
        Some(TransportSet(match s {
            "uds" => bit(Transport::Uds),
            "udp" => bit(Transport::Udp),
            "secure_udp" => bit(Transport::SecureShared) | bit(Transport::SecureMaster),
            _ => Transport::ALL.into_iter().find(|t| t.as_str() == s).map(bit)?,
        }))
    }
}

impl<'de> Deserialize<'de> for TransportSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TransportSet, D::Error> {
        let s = String::deserialize(d)?;
        TransportSet::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown transport {s:?}: expected uds, udp, secure_udp, secure_udp_shared_key or \
                 secure_udp_master_key"
            ))
        })
    }
}

/// `source:` of a rule: an address (`10.1.2.3`) or a network
/// (`10.0.0.0/8`, `fd00::/8`). IPv4 agents seen through an IPv6 socket
/// (`::ffff:a.b.c.d`) match IPv4 networks. UDS agents have no address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr =
            addr.parse().map_err(|_| format!("{s:?} is not an address or a network such as 10.0.0.0/8"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= bits)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {bits}"))?,
        };
        let cidr = Cidr { network, prefix };
        if cidr.masked(network) != network {
            return Err(format!(
                "{s:?} has host bits set below /{prefix} (did you mean {}?)",
                cidr.canonical()
            ));
        }
        Ok(cidr)
    }

    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }

    fn canonical(&self) -> String {
        format!("{}/{}", self.masked(self.network), self.prefix)
    }

    pub fn contains(&self, source: &Source) -> bool {
        let Source::Ip(ip) = *source else { return false };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.network.is_ipv4() && self.masked(ip) == self.network
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::AgentId;

    fn glob(p: &str) -> Glob {
        Glob::new(p).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn globs_match_star_and_question_mark() {
        assert!(glob("batch-*").matches("batch-nightly"));
        assert!(glob("batch-*").matches("batch-"));
        assert!(!glob("batch-*").matches("xbatch-1"));
        assert!(glob("nginx").matches("nginx") && !glob("nginx").matches("nginx2"));
        assert!(glob("w?rker").matches("worker") && glob("w?rker").matches("wärker"));
        assert!(!glob("w?rker").matches("wrker"));
        assert!(glob("*a*b*c").matches("xxaxxbxxbxc"));
        assert!(!glob("*a*b*c").matches("xxaxxbxxbx"));
        assert!(glob("*").matches("") && glob("**").matches("anything"));
        for bad in ["", "a[bc]", "{a,b}", "a\\*"] {
            assert!(Glob::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cidrs_match_networks_and_mapped_addresses() {
        let net = Cidr::parse("10.0.0.0/8").unwrap_or_else(|e| panic!("{e}"));
        let ip = |s: &str| Source::Ip(s.parse().unwrap_or_else(|e| panic!("{e}")));
        assert!(net.contains(&ip("10.200.1.1")));
        assert!(!net.contains(&ip("11.0.0.1")));
        assert!(net.contains(&ip("::ffff:10.1.2.3")));
        assert!(!net.contains(&Source::Local));
        let one = Cidr::parse("127.0.0.2").unwrap_or_else(|e| panic!("{e}"));
        assert!(one.contains(&ip("127.0.0.2")) && !one.contains(&ip("127.0.0.1")));
        let v6 = Cidr::parse("fd00::/8").unwrap_or_else(|e| panic!("{e}"));
        assert!(v6.contains(&ip("fd12::1")) && !v6.contains(&ip("10.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").is_ok_and(|c| c.contains(&ip("8.8.8.8"))));
        let e = Cidr::parse("10.1.0.0/8").map(|_| ()).unwrap_err();
        assert!(e.contains("10.0.0.0/8"), "{e}");
        for bad in ["10.0.0.0/33", "10.0.0/8", "host", "::/129", "10.0.0.0/x"] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
    }

    struct Attrs(&'static str);
    impl AgentAttributes for Attrs {
        fn attribute(&self, key: AttributeKey) -> Option<&str> {
            (key == AttributeKey::ServiceName).then_some(self.0)
        }
    }

    #[test]
    fn first_match_wins_and_attribute_rules_wait_for_resolution() -> Result<(), serde_json::Error> {
        let rules: Vec<ThresholdRule> = serde_json::from_str(
            r#"[{"match": {"service.name": "batch-*"}, "threshold": "10m"},
                {"match": {"transport": "uds"}, "threshold": "500ms"},
                {"match": {"source": "10.0.0.0/8", "transport": "secure_udp"}, "threshold": "5s"}]"#,
        )?;
        let agent = |source: Source, transport: Transport| AgentRef {
            id: AgentId { source, pid: 1, start_time: 1 },
            frame_pid: 1,
            host_pid: 1,
            transport,
        };
        let local = agent(Source::Local, Transport::Uds);
        assert_eq!(first_match(&rules, &local, &Unresolved), Some(1));
        assert_eq!(first_match(&rules, &local, &Attrs("batch-eod")), Some(0));
        assert_eq!(first_match(&rules, &local, &Attrs("web")), Some(1));
        let net = Source::Ip("10.9.9.9".parse().unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(first_match(&rules, &agent(net, Transport::SecureMaster), &Unresolved), Some(2));
        assert_eq!(first_match(&rules, &agent(net, Transport::Udp), &Unresolved), None);
        assert!(rules[0].matches.needs_attributes() && !rules[2].matches.needs_attributes());
        Ok(())
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        for bad in [
            r#"{"match": {"service_name": "x"}, "threshold": "1s"}"#,
            r#"{"match": {"transport": "tcp"}, "threshold": "1s"}"#,
            r#"{"match": {"source": "10.0.0.0/99"}, "threshold": "1s"}"#,
            r#"{"match": {"service.name": "a[b]"}, "threshold": "1s"}"#,
            r#"{"match": {"service.name": "a"}, "threshold": "1s", "extra": 1}"#,
        ] {
            assert!(serde_json::from_str::<ThresholdRule>(bad).is_err(), "{bad}");
        }
    }
}
