//! Who the telemetry is about: OTLP resources and the instrumentation scope.
//!
//! * **The observed agent is the resource** of its incident spans and
//!   per-agent metric points ([`agent`]): `service.name` (the agent's own,
//!   else `unknown_service:<process.executable.name>` as the OpenTelemetry
//!   specification prescribes, else `unknown_service`), every attribute the
//!   resolver knows (`service.namespace`, `service.instance.id`,
//!   `deployment.environment.name`, `process.*`, `container.id`,
//!   `k8s.pod.uid`), `process.pid`, how it reached us
//!   (`varta.agent.source`, `varta.agent.transport`) and, for local agents,
//!   `host.name` of this node. So a trace store lists checkout's stalls
//!   under `service.name = checkout`.
//! * **The collector is the scope** ([`scope`]): `varta-collector` and its
//!   version, with `varta.collector.instance.id`, so every span still says
//!   which collector saw it.
//! * **Collector-level telemetry keeps the collector's resource**
//!   ([`collector`]): `service.name = varta-collector` (or
//!   `OTEL_SERVICE_NAME`), `service.version`, `service.instance.id`,
//!   `host.name`, then `OTEL_RESOURCE_ATTRIBUTES`, then the exporter's
//!   `resource:` entries — each later source wins, explicit config last.
//!
//! Agent-controlled values (its environment, command line) are data here:
//! they label telemetry, already length-capped by the resolver.

use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use varta_agents::attributes::AttributesRef;
use varta_proto::Source;

use crate::attrs;
use varta_processor::AgentRef;

use opentelemetry_semantic_conventions::resource::{
    HOST_NAME, K8S_NODE_NAME, SERVICE_INSTANCE_ID, SERVICE_NAME, SERVICE_VERSION,
};

/// The collector's instance id, on the scope of every span and point.
pub const COLLECTOR_INSTANCE_ID: &str = "varta.collector.instance.id";
/// The collector's service name unless configured otherwise.
pub const COLLECTOR_SERVICE_NAME: &str = "varta-collector";

/// The collector's own resource. `env` is the collector's environment
/// (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`).
pub fn collector<'a>(
    configured: impl IntoIterator<Item = (&'a String, &'a String)>,
    instance_id: &str,
    host_name: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Resource {
    let mut entries: Vec<(String, String)> = vec![
        (SERVICE_NAME.into(), COLLECTOR_SERVICE_NAME.into()),
        (SERVICE_VERSION.into(), env!("CARGO_PKG_VERSION").into()),
        (SERVICE_INSTANCE_ID.into(), instance_id.into()),
    ];
    if let Some(host) = host_name {
        entries.push((HOST_NAME.into(), host.into()));
    }
    let mut set = |k: &str, v: &str| match entries.iter_mut().find(|(key, _)| key == k) {
        Some(e) => e.1 = v.to_owned(),
        None => entries.push((k.to_owned(), v.to_owned())),
    };
    if let Some(list) = env("OTEL_RESOURCE_ATTRIBUTES") {
        for (k, v) in parse_resource_attributes(&list) {
            set(&k, &v);
        }
    }
    if let Some(name) = env("OTEL_SERVICE_NAME").filter(|n| !n.is_empty()) {
        set(SERVICE_NAME, &name);
    }
    for (k, v) in configured {
        set(k, v);
    }
    Resource {
        attributes: entries.iter().map(|(k, v)| attrs::string(k, v.as_str())).collect(),
        ..Default::default()
    }
}

/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value` pairs separated by commas,
/// values percent-decoded (W3C Baggage octets); malformed pairs are
/// skipped, as the specification asks.
pub fn parse_resource_attributes(list: &str) -> Vec<(String, String)> {
    list.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            if k.is_empty() {
                return None;
            }
            Some((k.to_owned(), percent_decode(v.trim())?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The resource describing an observed agent. `host_name` is this node's
/// (used for local agents only).
pub fn agent(agent: &AgentRef, resolved: Option<&AttributesRef<'_>>, host_name: Option<&str>) -> Resource {
    let mut a: Vec<KeyValue> = Vec::with_capacity(20);
    a.push(attrs::string(SERVICE_NAME, service_name(resolved)));
    attrs::agent(&mut a, agent);
    if let Some(r) = resolved {
        let start = a.len();
        attrs::resolved(&mut a, r);
        // `service.name` was decided above.
        let mut i = start;
        while i < a.len() {
            if a[i].key == SERVICE_NAME {
                a.remove(i);
            } else {
                i += 1;
            }
        }
    }
    if agent.id.source == Source::Local {
        if let Some(h) = host_name {
            a.push(attrs::string(HOST_NAME, h));
        }
        if let Some(node) = node_name() {
            a.push(attrs::string(K8S_NODE_NAME, node));
        }
    }
    Resource { attributes: a, ..Default::default() }
}

/// `k8s.node.name` of local agents: the `NODE_NAME` variable the shipped
/// DaemonSet sets from `spec.nodeName` (read once; at most 253 bytes, as a
/// Kubernetes name).
fn node_name() -> Option<&'static str> {
    static NODE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    NODE.get_or_init(|| {
        std::env::var("NODE_NAME")
            .ok()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty() && n.len() <= 253)
    })
    .as_deref()
}

/// `service.name` of an agent as the specification prescribes.
pub fn service_name(resolved: Option<&AttributesRef<'_>>) -> String {
    match resolved {
        Some(r) => match (r.service_name(), r.executable_name()) {
            (Some(s), _) if !s.is_empty() => s.to_owned(),
            (_, Some(exe)) if !exe.is_empty() => format!("unknown_service:{exe}"),
            _ => "unknown_service".to_owned(),
        },
        None => "unknown_service".to_owned(),
    }
}

/// The instrumentation scope: the collector, naming its instance.
pub fn scope(instance_id: &str) -> InstrumentationScope {
    InstrumentationScope {
        name: COLLECTOR_SERVICE_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        attributes: vec![attrs::string(COLLECTOR_INSTANCE_ID, instance_id)],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use varta_processor::AgentId;
    use varta_proto::Transport;

    fn get(r: &Resource, k: &str) -> Option<Value> {
        r.attributes.iter().find(|kv| kv.key == k).and_then(|kv| kv.value.clone()?.value)
    }

    fn s(v: &str) -> Option<Value> {
        Some(Value::StringValue(v.into()))
    }

    #[test]
    fn collector_resource_layers_env_then_config() {
        let mut c = std::collections::BTreeMap::<String, String>::new();
        let env = |k: &str| match k {
            "OTEL_RESOURCE_ATTRIBUTES" => Some("deployment.environment.name=prod,team=a%2Cb,bad,=x".into()),
            "OTEL_SERVICE_NAME" => Some("edge-liveness".into()),
            _ => None,
        };
        let r = collector(&c, "id-1", Some("node-1"), env);
        assert_eq!(get(&r, "service.name"), s("edge-liveness"));
        assert_eq!(get(&r, "deployment.environment.name"), s("prod"));
        assert_eq!(get(&r, "team"), s("a,b"));
        assert_eq!(get(&r, "service.instance.id"), s("id-1"));
        assert_eq!(get(&r, "host.name"), s("node-1"));
        assert!(get(&r, "bad").is_none());
        c.insert("service.name".into(), "from-config".into());
        let r = collector(&c, "id-1", None, env);
        assert_eq!(get(&r, "service.name"), s("from-config"), "explicit config wins");
        assert_eq!(r.attributes.iter().filter(|kv| kv.key == "service.name").count(), 1);
        let r = collector(&std::collections::BTreeMap::new(), "id-1", None, |_| None);
        assert_eq!(get(&r, "service.name"), s("varta-collector"));
    }

    #[test]
    fn an_agent_without_attributes_is_an_unknown_service_with_its_identity() {
        let a = AgentRef {
            id: AgentId { source: Source::Local, pid: 42, start_time: 7 },
            frame_pid: 42,
            host_pid: 42,
            transport: Transport::Uds,
        };
        let r = agent(&a, None, Some("node-1"));
        assert_eq!(get(&r, "service.name"), s("unknown_service"));
        assert_eq!(get(&r, "process.pid"), Some(Value::IntValue(42)));
        assert_eq!(get(&r, "host.name"), s("node-1"));
        let udp =
            AgentRef { id: AgentId { source: Source::Ip("10.0.0.9".parse().expect("ip")), ..a.id }, ..a };
        let r = agent(&udp, None, Some("node-1"));
        assert!(get(&r, "host.name").is_none(), "a network agent is not on this node");
        assert_eq!(get(&r, "varta.agent.source"), s("10.0.0.9"));
    }

    #[test]
    fn scope_names_the_collector_instance() {
        let sc = scope("id-9");
        assert_eq!(sc.name, "varta-collector");
        assert_eq!(sc.attributes[0].key, COLLECTOR_INSTANCE_ID);
    }
}
