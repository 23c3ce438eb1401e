//! Small constructors for OTLP attribute values, and the attributes that
//! describe an agent (shared by spans and per-agent metric points).

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_semantic_conventions::resource::{
    CONTAINER_ID, PROCESS_EXECUTABLE_NAME, PROCESS_PID, SERVICE_NAME,
};
use varta_agents::attributes::{AttrValue, AttributesRef};
use varta_processor::AgentRef;

pub fn string(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

/// A string-array attribute.
pub fn strings<'s>(key: &str, values: impl Iterator<Item = &'s str>) -> KeyValue {
    use opentelemetry_proto::tonic::common::v1::ArrayValue;
    let values = values.map(|v| AnyValue { value: Some(Value::StringValue(v.to_owned())) }).collect();
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(Value::ArrayValue(ArrayValue { values })) }),
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

/// `process.pid` (the host pid for local agents), `varta.agent.source`
/// (`local` or the sender's IP), `varta.agent.transport`, and
/// `varta.agent.frame_pid` when the agent writes another pid in its frames
/// (it lives in another pid namespace).
pub fn agent(out: &mut Vec<KeyValue>, agent: &AgentRef) {
    out.push(int(PROCESS_PID, i64::from(agent.id.pid)));
    out.push(string("varta.agent.source", agent.id.source.to_string()));
    out.push(string("varta.agent.transport", agent.transport.as_str()));
    if agent.frame_pid != agent.id.pid {
        out.push(int("varta.agent.frame_pid", i64::from(agent.frame_pid)));
    }
}

/// Every attribute the resolver knows about a local agent
/// (`process.executable.name`, `service.name`, `container.id`, …).
pub fn resolved(out: &mut Vec<KeyValue>, attributes: &AttributesRef<'_>) {
    for (key, value) in attributes.pairs() {
        out.push(match value {
            AttrValue::Str(s) => string(key, s),
            AttrValue::Args(args) => strings(key, args.split('\0')),
            AttrValue::Int(i) => int(key, i),
            AttrValue::UnixNanos(ns) => string(key, rfc3339(ns)),
        });
    }
}

/// The few attributes per-agent metric points carry (kept small: one set
/// per agent per export).
pub fn resolved_brief(out: &mut Vec<KeyValue>, attributes: &AttributesRef<'_>) {
    if let Some(v) = attributes.executable_name() {
        out.push(string(PROCESS_EXECUTABLE_NAME, v));
    }
    if let Some(v) = attributes.service_name() {
        out.push(string(SERVICE_NAME, v));
    }
    if let Some(v) = attributes.container_id() {
        out.push(string(CONTAINER_ID, v));
    }
}

/// Unix nanoseconds as RFC 3339 UTC (`2026-11-28T20:41:23.123456789Z`).
pub fn rfc3339(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let nanos = unix_ns % 1_000_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_answers() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400_000_000_001), "2000-02-29T00:00:00.000000001Z");
        assert_eq!(rfc3339(1_795_898_483_500_000_000), "2026-11-28T20:41:23.500000000Z");
    }
}

#[cfg(test)]
mod command_args_tests {
    use super::*;
    use varta_agents::AttributeStore;
    use varta_agents::attributes::{Host, Resolved};
    use varta_processor::AgentId;
    use varta_proto::Source;

    /// `process.command_args` is a string array (semantic conventions), and
    /// an argument with a space in it stays one element.
    #[test]
    fn command_args_are_a_string_array() {
        let store = AttributeStore::new(Host { clock_ticks: 100, boot_time_s: None });
        let id = AgentId { source: Source::Local, pid: 7, start_time: 7 };
        let r = Resolved { command_args: Some("/bin/app\0--name\0two words".into()), ..Resolved::default() };
        store.insert(id, &r);
        let view = store.read();
        let mut out = Vec::new();
        resolved(&mut out, &view.get(&id).expect("stored"));
        let args = out.iter().find(|kv| kv.key == "process.command_args").expect("the attribute");
        let Some(Value::ArrayValue(array)) = args.value.as_ref().and_then(|v| v.value.clone()) else {
            panic!("not an array: {args:?}")
        };
        let values: Vec<String> = array
            .values
            .into_iter()
            .filter_map(|v| match v.value {
                Some(Value::StringValue(s)) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(values, ["/bin/app", "--name", "two words"]);
    }
}
