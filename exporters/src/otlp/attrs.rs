//! Small constructors for OTLP attribute values, and the attributes that
//! describe an agent (shared by spans and per-agent metric points).

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use varta_processor::AgentRef;

pub fn string(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

pub fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(Value::IntValue(value)) }),
        ..Default::default()
    }
}

/// A u64 counter value as an OTLP int (saturating at `i64::MAX`).
pub fn uint(key: &str, value: u64) -> KeyValue {
    int(key, i64::try_from(value).unwrap_or(i64::MAX))
}

pub fn boolean(key: &str, value: bool) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(Value::BoolValue(value)) }),
        ..Default::default()
    }
}

/// `process.pid`, `varta.agent.source` (`local` or the sender's IP),
/// `varta.agent.transport`, and `varta.agent.host_pid` when it differs
/// from the pid in the frames (another pid namespace).
pub fn agent(out: &mut Vec<KeyValue>, agent: &AgentRef) {
    out.push(int("process.pid", i64::from(agent.id.pid)));
    out.push(string("varta.agent.source", agent.id.source.to_string()));
    out.push(string("varta.agent.transport", agent.transport.as_str()));
    if agent.host_pid != agent.id.pid {
        out.push(int("varta.agent.host_pid", i64::from(agent.host_pid)));
    }
}
